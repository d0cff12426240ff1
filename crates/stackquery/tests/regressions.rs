//! Races and edge cases with a story. Each test names the interleaving it guards.

mod common;

use std::time::Duration;

use common::{settle, slow_counter};
use stackquery::{key, QueryClient};

/// `set_query_data` lands while a fetch that started earlier is in flight. The manual
/// write is newer than anything that fetch read, so when the fetch's older response
/// arrives it must not overwrite the manual data, and `data_updated_at` must not go back.
/// The fetch's own callers still get what they asked for.
#[tokio::test(start_paused = true)]
async fn set_query_data_during_a_fetch_wins_over_the_older_response() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], Duration::from_secs(10));
    let c = client.clone();
    let o = opts.clone();
    let t = tokio::spawn(async move { c.fetch_query(&o).await });
    settle().await;
    tokio::time::advance(Duration::from_secs(5)).await;
    client.set_query_data(key!["k"], 99_u32).unwrap();
    let manual_at = client
        .get_query_state::<u32>(&key!["k"])
        .unwrap()
        .data_updated_at;
    assert!(client
        .get_query_state::<u32>(&key!["k"])
        .unwrap()
        .is_fetching());
    assert_eq!(*t.await.unwrap().unwrap(), 1);
    let s = client.get_query_state::<u32>(&key!["k"]).unwrap();
    assert_eq!(s.data.as_deref(), Some(&99));
    assert!(s.data_updated_at >= manual_at);
    assert!(!s.is_fetching());
}

/// Two callers of one key use different stale times. The entry remembers the last
/// caller's settings for filters, but each call decides freshness with its own options.
#[tokio::test(start_paused = true)]
async fn a_later_caller_with_a_longer_stale_time_does_not_change_an_earlier_decision() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["k"], Duration::from_secs(1));
    let short = opts.clone().stale_time(Duration::from_secs(2));
    let long = opts.stale_time(Duration::from_secs(100));
    client.fetch_query(&long).await.unwrap();
    tokio::time::advance(Duration::from_secs(3)).await;
    client.fetch_query(&long).await.unwrap();
    client.fetch_query(&short).await.unwrap();
    settle().await;
    assert_eq!(calls.get(), 2, "stale for the short caller only");
}

/// Found by the model test (`tests/model.rs`). An observer has a listener `A`; its entry is
/// removed, so `A` is told the initial state and the observer detaches. The key is then
/// fetched again (a new entry, fetching) and a second listener `B` subscribes, which
/// re-attaches the observer. `B` was told the new entry's state at once, but `A` — still
/// subscribed to the same, now attached, observer — kept the removal state until the
/// entry changed again (forever, if it never did): a lost final state. Re-activation must
/// deliver to every listener.
#[tokio::test(start_paused = true)]
async fn reattaching_an_observer_after_removal_tells_every_listener() {
    use std::sync::{Arc, Mutex};

    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], Duration::from_secs(10));
    // Fresh data: re-attaching starts no fetch, so no entry change would tell `A`.
    let observer = client.watch(&opts.stale_time(Duration::from_secs(60)));
    let seen_a: Arc<Mutex<Vec<stackquery::QueryState<u32>>>> = Arc::default();
    let a = seen_a.clone();
    let _sub_a = observer.subscribe(move |s| a.lock().unwrap().push(s.clone()));
    client.remove_queries(key!["k"]);
    assert_eq!(
        seen_a.lock().unwrap().last().unwrap().status,
        stackquery::QueryStatus::Idle
    );
    client.set_query_data(key!["k"], 7_u32).unwrap();
    let _sub_b = observer.subscribe(|_| {});
    settle().await;
    let last = seen_a.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        last.data.as_deref(),
        Some(&7),
        "A sees the re-attached entry"
    );
    assert_eq!(observer.state().data.as_deref(), Some(&7));
}

/// Found by the model test (`tests/model.rs`); fixed in `state.rs` (`Action::Revert` undoes
/// only what the fetch changed). Data `D1` is fetched at t=0 and goes stale at t=3. At t=5 a
/// caller starts a background refetch; at t=6 `set_query_data(D2)` lands (the manual write
/// "wins over any fetch that started before it"); at t=7 `cancel_queries` stops the fetch.
/// The cancel reverts the entry to its state before the fetch: the manual write `D2` is
/// lost, and `D1` comes back *fresh* (until t=9) because the monotonic freshness stamp of
/// the manual write is not reverted with it — old data served as fresh. A cancel must only
/// stop the fetch when a manual write landed after it began.
#[tokio::test(start_paused = true)]
async fn cancel_after_a_manual_write_keeps_the_manual_write() {
    let client = QueryClient::new();
    let (opts, _) = slow_counter(key!["k"], Duration::from_secs(10));
    let opts = opts.stale_time(Duration::from_secs(3));
    client.set_query_data(key!["k"], 0_u32).unwrap(); // D1 (any data: stale at t=3)
    tokio::time::advance(Duration::from_secs(5)).await;
    client.fetch_query(&opts).await.unwrap(); // stale: background refetch starts
    settle().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    client.set_query_data(key!["k"], 2_u32).unwrap(); // D2
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(client.cancel_queries(key!["k"]).await, 1);
    let s = client.get_query_state::<u32>(&key!["k"]).unwrap();
    assert!(!s.is_fetching());
    assert!(
        s.data.as_deref() != Some(&0) || s.is_stale(),
        "old data must not come back fresh"
    );
    assert_eq!(s.data.as_deref(), Some(&2), "the manual write stands");
}

/// Found while writing the model test; fixed in `client.rs` (a no-op update arms the gc of
/// an entry it created). `update_query_data` on a key with no entry creates the entry before
/// calling the updater; when the updater returns `None` nothing is written, and the empty
/// entry is left with no gc deadline (it is unused but was never "released"), so it stays
/// in memory until it is evicted or removed. With no `max_queries`, every such call on a
/// new key leaks one entry.
#[tokio::test(start_paused = true)]
async fn a_no_op_update_on_a_missing_key_leaves_nothing_behind() {
    let client = QueryClient::builder()
        .gc_time(Duration::from_secs(10))
        .build();
    for i in 0..100_u32 {
        let r = client.update_query_data(key!["k", i], |old: Option<&u32>| old.map(|v| v + 1));
        assert!(r.unwrap().is_none());
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    settle().await;
    assert_eq!(client.stats().entries, 0);
}

/// Found by the stress test (`tests/stress.rs`): after every task had finished and dropped
/// its subscriptions, hundreds of entries were still "active" (observed), so they were
/// never evicted or collected and the cache stayed far over `max_queries`. The tasks had
/// written `client.watch(&opts).subscribe(..)`: the `QueryObserver` handle is a temporary,
/// and the `Subscription` only held a weak reference to the observer. So the observer
/// died right after `subscribe` returned, still attached to its entry (observer count +1,
/// listener registered), the listener never heard of another change, and dropping the
/// subscription later found no observer to detach. A subscription must keep its observer
/// alive, and the entry must be released when it is dropped. Fixed in `observer.rs`.
#[tokio::test(start_paused = true)]
async fn a_subscription_outliving_its_observer_handle_still_works_and_releases_the_entry() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    let client = QueryClient::builder()
        .gc_time(Duration::from_secs(10))
        .build();
    let (opts, _) = slow_counter(key!["k"], Duration::from_secs(1));
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let sub = client.watch(&opts).subscribe(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
    });
    let before = calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await; // the fetch settles
    settle().await;
    assert!(
        calls.load(Ordering::SeqCst) > before,
        "the listener hears of the fetch's result"
    );
    drop(sub);
    tokio::time::sleep(Duration::from_secs(11)).await;
    settle().await;
    assert!(
        client.get_query_state::<u32>(&key!["k"]).is_none(),
        "unobserved after the subscription is dropped: collected"
    );
}

/// Found while writing the stress test (`tests/stress.rs`). With `max_queries(1)`, a slow
/// fetch of `a` pins its entry, so writing `b` has to exceed the bound (pinned entries are
/// never evicted). The bound is restored when a pin is released — after a fetch settles
/// and when an observer leaves — but `cancel_queries` released the pin without trimming
/// (the aborted fetch task never reaches its own trim), so the cache stayed over
/// `max_queries` until some unrelated insert or settle came along.
#[tokio::test(start_paused = true)]
async fn cancelling_the_pinning_fetch_trims_the_cache_back_to_its_bound() {
    let client = QueryClient::builder().max_queries(1).build();
    let (a, _) = slow_counter(key!["a"], Duration::from_secs(10));
    let c = client.clone();
    let t = tokio::spawn(async move { c.fetch_query(&a).await });
    settle().await;
    client.set_query_data(key!["b"], 1_u32).unwrap();
    assert_eq!(
        client.stats().entries,
        2,
        "over the bound while `a` is pinned"
    );
    assert_eq!(client.cancel_queries(key!["a"]).await, 1);
    assert!(t.await.unwrap().unwrap_err().is_cancelled());
    settle().await;
    assert_eq!(client.stats().entries, 1, "back within max_queries");
}

/// Found while writing the key fuzz target (`fuzz/fuzz_targets/key_roundtrip.rs`). The
/// `From` conversions store every integer that fits in an `i64` as `KeyPart::Int`, but the
/// enum is public, so `KeyPart::UInt(5)` can be built directly. That key is *not equal* to
/// `key![5_u64]`, yet both display as `[5]` — the name of the entry in persistent storage —
/// and `[5]` parses back as the `Int` form: two in-memory entries share one persisted entry,
/// and the `Display`/`FromStr` round trip is broken for it. Building a key must normalise
/// small `UInt` parts. Fixed in `key.rs` (`QueryKey::new` normalises them).
#[test]
fn a_small_uint_part_built_directly_is_the_same_key_as_its_int_form() {
    use stackquery::{KeyPart, QueryKey};

    let direct = QueryKey::new([KeyPart::from("a"), KeyPart::UInt(5)]);
    assert_eq!(direct.to_string(), key!["a", 5_u64].to_string());
    assert_eq!(direct, key!["a", 5_u64]);
    assert_eq!(direct.to_string().parse::<QueryKey>().unwrap(), direct);
}

/// Found by the deep run of the envelope property (`tests/fuzz_props.rs`): an envelope
/// whose data is a large number decoded, re-encoded and decoded again gave a *different*
/// number. serde_json's default float parser is fast but not correctly rounded (it can be
/// one ulp off), so an `f64` persisted with the JSON codec can come back changed, and
/// drift by another ulp on every dehydrate/hydrate or write-behind cycle. Persisted data
/// must read back bit for bit: fixed by enabling serde_json's `float_roundtrip` feature
/// (exact parsing) in stackquery's dependency.
#[test]
fn a_persisted_f64_reads_back_bit_for_bit() {
    use stackquery::storage::{decode, encode, Codec, Envelope};

    let at = std::time::SystemTime::UNIX_EPOCH;
    for bits in [
        0x4414_0007_349b_8fd7_u64,
        0x4414_0007_349b_8fd8,
        0x3fb9_9999_9999_999a,
    ] {
        let x = f64::from_bits(bits);
        let bytes = encode(&Envelope::new(x, at, false), Codec::Json).unwrap();
        let back: Envelope<f64> = decode(&bytes).unwrap();
        assert_eq!(
            back.data.to_bits(),
            bits,
            "{x:e} came back as {:e}",
            back.data
        );
    }
}

/// Found by the panic-safety test (`tests/panic_safety.rs`), which failed about one run
/// in three with 88 or 89 instead of 90: `update_query_data` checked that nobody had
/// written since it read the old value, released the entry lock, and only then wrote.
/// Two updaters on two threads could both pass the check before either wrote, and one
/// increment was lost. The check and the write now happen under one lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_never_lose_an_increment() {
    let client = QueryClient::new();
    client.set_query_data(key!["n"], 0_u32).unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = client.clone();
            tokio::task::spawn_blocking(move || {
                for _ in 0..20_000 {
                    c.update_query_data(key!["n"], |old: Option<&u32>| old.map(|v| v + 1))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*client.get_query_data::<u32>(&key!["n"]).unwrap(), 160_000);
}
