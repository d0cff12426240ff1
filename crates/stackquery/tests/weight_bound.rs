//! The weight bound (`QueryClientBuilder::max_weight`): entries weighed by their query's
//! weigher (or their serialised size), the total kept in `CacheStats::total_weight`, and
//! eviction by the same CLOCK policy as `max_queries` when the total exceeds the bound.
//! All on tokio's paused clock.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{on_a_fresh_runtime, scripted, settle};
use stackquery::{key, MemoryStorage, QueryClient, QueryKey, QueryOptions};

const SEC: Duration = Duration::from_secs(1);

/// A query of `key` whose data is `len` bytes, fresh forever, weighed by its length.
fn sized(key: QueryKey, len: usize) -> QueryOptions<Vec<u8>> {
    QueryOptions::new(key, move || async move { Ok::<_, String>(vec![0_u8; len]) })
        .stale_time(Duration::MAX)
        .weigher(|v: &Vec<u8>| v.len() as u32)
}

/// [`sized`], taking `delay` to fetch.
fn slow_sized(key: QueryKey, len: usize, delay: Duration) -> QueryOptions<Vec<u8>> {
    QueryOptions::new(key, move || async move {
        tokio::time::sleep(delay).await;
        Ok::<_, String>(vec![0_u8; len])
    })
    .stale_time(Duration::MAX)
    .weigher(|v: &Vec<u8>| v.len() as u32)
}

/// Whether the key holds data, read without counting as a use (`get_query_data` would
/// give the entry a second chance and change what the next eviction picks).
fn cached(client: &QueryClient, name: &str) -> bool {
    client
        .get_query_state::<Vec<u8>>(&key![name])
        .is_some_and(|s| s.data.is_some())
}

/// Guards the core promise: when a heavy entry pushes the total over the bound, the least
/// recently used light entries make room (CLOCK: used entries get a second chance), and
/// exactly as many as needed go.
#[tokio::test(start_paused = true)]
async fn heavy_entries_push_out_the_least_recently_used_light_ones() {
    let client = QueryClient::builder().max_weight(10).build();
    for k in ["a", "b", "c", "d"] {
        client.fetch_query(&sized(key![k], 2)).await.unwrap();
    }
    assert_eq!(client.stats().total_weight, 8);
    // a and b are used again (fresh hits).
    client.fetch_query(&sized(key!["a"], 2)).await.unwrap();
    client.fetch_query(&sized(key!["b"], 2)).await.unwrap();

    client.fetch_query(&sized(key!["h"], 6)).await.unwrap();
    let stats = client.stats();
    assert_eq!(stats.total_weight, 10, "8 + 6 - two light entries of 2");
    assert_eq!((stats.entries, stats.evictions), (3, 2));
    for k in ["a", "b", "h"] {
        assert!(cached(&client, k), "{k} kept");
    }
    for k in ["c", "d"] {
        assert!(!cached(&client, k), "{k} was the least recently used");
    }
}

/// Guards `weigh_serialized`: the weight is the length of the data's compact JSON, and a
/// manual write to the key is weighed the same way (the key's last query's weigher).
#[tokio::test(start_paused = true)]
async fn serialized_weight_is_the_compact_json_length() {
    let client = QueryClient::builder().max_weight(10_000).build();
    let first = vec!["Ada".to_string(), "Grace \"G\" H.".to_string()];
    let data = first.clone();
    let opts = QueryOptions::new(key!["names"], move || {
        let data = data.clone();
        async move { Ok::<_, String>(data) }
    })
    .weigh_serialized();
    client.fetch_query(&opts).await.unwrap();
    let json = serde_json::to_vec(&first).unwrap();
    assert_eq!(json, br#"["Ada","Grace \"G\" H."]"#);
    assert_eq!(client.stats().total_weight, json.len() as u64);

    let second = vec!["Édouard".to_string(); 3];
    client
        .set_query_data(key!["names"], second.clone())
        .unwrap();
    let json = serde_json::to_vec(&second).unwrap();
    assert_eq!(client.stats().total_weight, json.len() as u64);
}

/// Guards the two bounds together: the count bound makes room at insertion, the weight
/// bound trims after data lands, and both hold afterwards.
#[tokio::test(start_paused = true)]
async fn count_and_weight_bounds_are_both_kept() {
    let client = QueryClient::builder().max_queries(3).max_weight(10).build();
    for k in ["a", "b", "c", "d"] {
        client.fetch_query(&sized(key![k], 1)).await.unwrap();
    }
    // The count bound: a went when d came.
    assert!(!cached(&client, "a"));
    assert_eq!(
        (client.stats().entries, client.stats().total_weight),
        (3, 3)
    );
    // h: b goes for the count at h's insertion, then c for the weight (1 + 1 + 9 > 10).
    client.fetch_query(&sized(key!["h"], 9)).await.unwrap();
    let stats = client.stats();
    assert_eq!((stats.entries, stats.total_weight), (2, 10));
    assert_eq!(stats.evictions, 3);
    assert!(cached(&client, "d") && cached(&client, "h"));
    assert!(!cached(&client, "b") && !cached(&client, "c"));
}

/// Guards pinning: an observed entry and an entry with a fetch in flight are never
/// evicted for the weight; unpinned entries go instead, and the fetched entry counts once
/// its data lands.
#[tokio::test(start_paused = true)]
async fn observed_and_fetching_entries_are_not_evicted() {
    let client = QueryClient::builder().max_weight(10).build();
    let observer = client.watch(&sized(key!["o"], 6));
    let _sub = observer.subscribe(|_| {});
    settle().await;
    client.fetch_query(&sized(key!["l"], 3)).await.unwrap();
    assert_eq!(client.stats().total_weight, 9);

    let fetching = tokio::spawn({
        let c = client.clone();
        async move { c.fetch_query(&slow_sized(key!["f"], 4, 10 * SEC)).await }
    });
    settle().await;
    // In flight, f weighs nothing yet; w pushes the total over: o is observed, f is
    // fetching, so the unpinned l goes.
    client.fetch_query(&sized(key!["w"], 3)).await.unwrap();
    assert!(!cached(&client, "l"));
    assert!(cached(&client, "o") && cached(&client, "w"));
    assert_eq!(client.is_fetching(key!["f"]), 1);
    assert_eq!(client.stats().total_weight, 9);

    // f lands (6 + 3 + 4 > 10): it is spared as the newcomer, w (unused) goes, o stays.
    assert_eq!(fetching.await.unwrap().unwrap().len(), 4);
    assert!(cached(&client, "o") && cached(&client, "f"));
    assert!(!cached(&client, "w"));
    assert_eq!(client.stats().total_weight, 10);
}

/// Guards the documented overflow: pinned entries alone may weigh more than the bound
/// (nothing observed is dropped), and the cache trims back as soon as one is released.
#[tokio::test(start_paused = true)]
async fn pinned_entries_alone_may_exceed_the_bound_until_released() {
    let client = QueryClient::builder().max_weight(10).build();
    let o1 = client.watch(&sized(key!["o1"], 6));
    let o2 = client.watch(&sized(key!["o2"], 6));
    let sub1 = o1.subscribe(|_| {});
    let _sub2 = o2.subscribe(|_| {});
    settle().await;
    let stats = client.stats();
    assert_eq!(
        (stats.entries, stats.total_weight),
        (2, 12),
        "over the bound"
    );
    assert_eq!(stats.evictions, 0);

    drop(sub1);
    let stats = client.stats();
    assert_eq!((stats.entries, stats.total_weight), (1, 6));
    assert!(!cached(&client, "o1") && cached(&client, "o2"));
}

/// Guards re-weighing: every new value of an entry replaces its weight in the total —
/// a refetch, a manual write, an update, up and down.
#[tokio::test(start_paused = true)]
async fn new_data_reweighs_the_entry() {
    let client = QueryClient::builder().max_weight(1_000).build();
    // Call n fetches 10 * n bytes.
    let (opts, _) = scripted(
        key!["k"],
        |n| async move { Ok(vec![0_u8; 10 * n as usize]) },
    );
    let opts = opts.weigher(|v: &Vec<u8>| v.len() as u32);
    client.fetch_query(&sized(key!["other"], 5)).await.unwrap();
    client.fetch_query(&opts).await.unwrap();
    assert_eq!(client.stats().total_weight, 5 + 10);
    client.refetch_query(&opts).await.unwrap();
    assert_eq!(client.stats().total_weight, 5 + 20, "up");
    client.set_query_data(key!["k"], vec![0_u8; 3]).unwrap();
    assert_eq!(client.stats().total_weight, 5 + 3, "down");
    client
        .update_query_data(key!["k"], |old: Option<&Vec<u8>>| {
            old.map(|v| vec![1_u8; v.len() + 40])
        })
        .unwrap();
    assert_eq!(client.stats().total_weight, 5 + 43);
    assert_eq!(client.stats().entries, 2);
}

/// Guards the subtraction: removal, reset (no data left), gc and clear each take the
/// entries' weight off the total, back to exactly 0.
#[tokio::test(start_paused = true)]
async fn removal_reset_gc_and_clear_subtract_the_weight() {
    let client = QueryClient::builder()
        .max_weight(1_000)
        .gc_time(Duration::from_secs(60))
        .build();
    client.fetch_query(&sized(key!["a"], 5)).await.unwrap();
    client.fetch_query(&sized(key!["b"], 7)).await.unwrap();
    let short_gc = sized(key!["c"], 11).gc_time(5 * SEC);
    client.fetch_query(&short_gc).await.unwrap();
    client.fetch_query(&sized(key!["d"], 13)).await.unwrap();
    assert_eq!(client.stats().total_weight, 36);

    assert_eq!(client.remove_queries(key!["a"]), 1);
    assert_eq!(client.stats().total_weight, 31);
    assert_eq!(client.reset_queries(key!["b"]), 1);
    assert_eq!(
        client.stats().total_weight,
        24,
        "a reset entry holds no data"
    );
    assert_eq!(client.stats().entries, 3);

    tokio::time::sleep(6 * SEC).await;
    assert_eq!(client.stats().gc_collections, 1);
    assert_eq!(client.stats().total_weight, 13, "c collected");

    client.clear();
    let stats = client.stats();
    assert_eq!((stats.entries, stats.total_weight), (0, 0));
}

/// Guards the panic policy for weighers: a panicking weigher fails nothing and poisons
/// nothing: the data is stored and served, weighed at the default weight, and the entry
/// and the client go on working (a later value is weighed by the same weigher again).
#[tokio::test(start_paused = true)]
async fn a_panicking_weigher_weighs_the_default_and_breaks_nothing() {
    let client = QueryClient::builder()
        .max_weight(1_000)
        .default_weight(7)
        .build();
    let opts = QueryOptions::new(key!["k"], || async { Ok::<_, String>(vec![0_u8; 3]) }).weigher(
        |v: &Vec<u8>| {
            assert_ne!(v.len(), 3, "weigher refuses 3 bytes");
            v.len() as u32
        },
    );
    let data = client.fetch_query(&opts).await.unwrap();
    assert_eq!(data.len(), 3, "the caller gets the data");
    assert_eq!(client.stats().total_weight, 7, "the default weight");
    assert_eq!(
        client.get_query_data::<Vec<u8>>(&key!["k"]).unwrap().len(),
        3
    );

    client.set_query_data(key!["k"], vec![0_u8; 20]).unwrap();
    assert_eq!(client.stats().total_weight, 20, "weighed again");
    client.set_query_data(key!["k"], vec![0_u8; 3]).unwrap();
    assert_eq!(client.stats().total_weight, 7);
    client.fetch_query(&sized(key!["other"], 4)).await.unwrap();
    assert_eq!(client.stats().total_weight, 11);
}

/// Guards "not cached when heavier than the whole bound" (as in moka): the caller gets
/// the data, the entry leaves at once — first, without pushing out the entries that fit —
/// and an observed one stays only while it is observed (pinned, it leaves the rest of the
/// bound to nothing: the other entries go, as documented for pinned overflow).
#[tokio::test(start_paused = true)]
async fn an_entry_heavier_than_the_bound_is_served_but_not_kept() {
    let client = QueryClient::builder().max_weight(10).build();
    client.fetch_query(&sized(key!["a"], 4)).await.unwrap();
    client.fetch_query(&sized(key!["b"], 4)).await.unwrap();
    let huge = client.fetch_query(&sized(key!["huge"], 50)).await.unwrap();
    assert_eq!(huge.len(), 50);
    assert!(!cached(&client, "huge"));
    assert!(
        cached(&client, "a") && cached(&client, "b"),
        "nothing else went"
    );
    let stats = client.stats();
    assert_eq!((stats.total_weight, stats.evictions), (8, 1));

    let observer = client.watch(&sized(key!["seen"], 50));
    let sub = observer.subscribe(|_| {});
    settle().await;
    assert_eq!(observer.state().data.map(|d| d.len()), Some(50));
    assert!(cached(&client, "seen"), "kept while observed");
    assert!(!cached(&client, "a") && !cached(&client, "b"));
    assert_eq!(client.stats().total_weight, 50);
    drop(sub);
    assert!(!cached(&client, "seen"), "released: not kept");
    let stats = client.stats();
    assert_eq!((stats.entries, stats.total_weight), (0, 0));
    assert_eq!(stats.evictions, 4);
}

/// Guards the lock rule for weighers: a weigher may call back into the client, on the
/// very key it weighs, without deadlocking (it runs with no lock held). Run on a thread
/// of its own with a real-time limit, so a deadlock fails the test instead of hanging it.
#[test]
fn a_weigher_may_call_the_client() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        on_a_fresh_runtime(async move {
            let client = QueryClient::builder().max_weight(100).build();
            let seen = Arc::new(AtomicU32::new(0));
            // (The weigher holds the client: a cycle that leaks this test's client.)
            let (c, s) = (client.clone(), seen.clone());
            let opts = sized(key!["k"], 5).weigher(move |v: &Vec<u8>| {
                // The entry's own state and the client's counters, mid-store.
                let state = c.get_query_state::<Vec<u8>>(&key!["k"]);
                s.store(c.stats().entries as u32, Ordering::SeqCst);
                assert!(state.is_some());
                v.len() as u32
            });
            client.fetch_query(&opts).await.unwrap();
            client.set_query_data(key!["k"], vec![0_u8; 9]).unwrap();
            tx.send((client.stats().total_weight, seen.load(Ordering::SeqCst)))
                .unwrap();
        });
    });
    let (total, entries_seen) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a weigher calling the client deadlocked");
    assert_eq!((total, entries_seen), (9, 1));
}

/// Guards the cost of the feature when unused: without a weight bound no weigher runs
/// and nothing is weighed.
#[tokio::test(start_paused = true)]
async fn without_a_weight_bound_no_weigher_runs() {
    let client = QueryClient::builder().max_queries(10).build();
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let opts = sized(key!["k"], 5).weigher(move |v: &Vec<u8>| {
        r.fetch_add(1, Ordering::SeqCst);
        v.len() as u32
    });
    client.fetch_query(&opts).await.unwrap();
    client.set_query_data(key!["k"], vec![0_u8; 8]).unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(client.stats().total_weight, 0);
}

/// Guards hydration: data read from the second tier is weighed like fetched data (and
/// trimmed to the bound), without the fetch function running.
#[tokio::test(start_paused = true)]
async fn data_read_from_the_second_tier_is_weighed() {
    let storage = MemoryStorage::new();
    let (opts, calls) = scripted(key!["doc"], |_| async { Ok("x".repeat(30)) });
    let opts = opts.persist().weigh_serialized();
    let writer = QueryClient::builder().storage(storage.clone()).build();
    writer.fetch_query(&opts).await.unwrap();
    writer.flush_storage().await;
    assert_eq!(calls.get(), 1);

    let reader = QueryClient::builder()
        .storage(storage)
        .max_weight(100)
        .build();
    reader.fetch_query(&sized(key!["small"], 80)).await.unwrap();
    let doc = reader.fetch_query(&opts).await.unwrap();
    assert_eq!(doc.len(), 30);
    assert_eq!(calls.get(), 1, "hydrated, not fetched");
    // 32 bytes of JSON (the string and its quotes): 80 + 32 > 100, so the older,
    // unused entry made room.
    assert!(reader.get_query_data::<Vec<u8>>(&key!["small"]).is_none());
    assert_eq!(reader.stats().total_weight, 32);
}

/// Guards snapshots: a restored item that replaces an entry's data is weighed by the
/// entry's weigher, and the total follows it.
#[tokio::test(start_paused = true)]
async fn a_restored_snapshot_is_weighed() {
    let opts = |text: &'static str| {
        QueryOptions::new(key!["doc"], move || async move {
            Ok::<_, String>(text.to_string())
        })
        .persist()
        .weigh_serialized()
    };
    let source = QueryClient::new();
    source.fetch_query(&opts("a longer text")).await.unwrap();
    let mut snapshot = source.dehydrate();
    assert_eq!(snapshot.queries.len(), 1);
    // Newer than anything the other client holds (newer data wins a restore).
    snapshot.queries[0].data_updated_at_ms += 3_600_000;

    let client = QueryClient::builder().max_weight(1_000).build();
    client.fetch_query(&opts("short")).await.unwrap();
    assert_eq!(client.stats().total_weight, r#""short""#.len() as u64);
    assert_eq!(client.hydrate(snapshot).unwrap(), 1);
    let data = client.get_query_data::<String>(&key!["doc"]).unwrap();
    assert_eq!(data.as_str(), "a longer text");
    assert_eq!(
        client.stats().total_weight,
        r#""a longer text""#.len() as u64
    );
}
