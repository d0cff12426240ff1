//! Read-your-writes after an invalidation: `invalidate_queries_with` and its
//! `RefetchType` (which invalidated entries refetch), and `fetch_query_fresh` (a read that
//! refuses stale data and never returns data from before an invalidation).
//!
//! Paused clock for one client; real time (generous bounds) for instances sharing a
//! SQLite file or a `redis-server` (sockets and blocking file I/O cannot run on the
//! paused clock).

mod common;

use std::time::Duration;

use common::{scripted, settle, slow_counter, Calls};
use futures::future::join_all;
use stackquery::storage::MemoryStorage;
use stackquery::{key, QueryClient, QueryKey, QueryOptions, RefetchType, Subscription};
use tokio::time::Instant;

const SEC: Duration = Duration::from_secs(1);

/// A query of `["t", kind]` whose fetch takes a second and returns its call number.
fn slow(kind: &'static str) -> (QueryOptions<u32>, Calls) {
    let (opts, calls) = slow_counter(key!["t", kind], SEC);
    (opts.stale_time(Duration::MAX), calls)
}

/// One entry of each kind under `["t"]`, each fetched once (but the hand-set one):
/// `active` (an enabled observer), `inactive` (nobody observes it: a server's cache),
/// `disabled` (observed only by a disabled query) and `manual` (only ever written by
/// hand: no fetch function is known for it).
struct Kinds {
    active: Calls,
    inactive: Calls,
    disabled: Calls,
    _observers: [Subscription; 2],
}

impl Kinds {
    async fn on(client: &QueryClient) -> Kinds {
        let (active, active_calls) = slow("active");
        let a = client.watch(&active).subscribe(|_| {});
        let (inactive, inactive_calls) = slow("inactive");
        client.fetch_query(&inactive).await.unwrap();
        let (disabled, disabled_calls) = slow("disabled");
        client.fetch_query(&disabled).await.unwrap();
        let d = client.watch(&disabled.enabled(false)).subscribe(|_| {});
        client.set_query_data(key!["t", "manual"], 0_u32).unwrap();
        tokio::time::sleep(2 * SEC).await; // the observer's first fetch
        let kinds = Kinds {
            active: active_calls,
            inactive: inactive_calls,
            disabled: disabled_calls,
            _observers: [a, d],
        };
        assert_eq!(kinds.calls(), [1, 1, 1]);
        kinds
    }

    /// Fetch calls of (active, inactive, disabled).
    fn calls(&self) -> [u32; 3] {
        [self.active.get(), self.inactive.get(), self.disabled.get()]
    }
}

fn invalidated(client: &QueryClient, kind: &'static str) -> bool {
    client
        .get_query_state::<u32>(&key!["t", kind])
        .unwrap()
        .is_invalidated
}

/// Protects the meaning of each refetch type: which entries an invalidation refetches,
/// counted in fetch calls per kind of entry, and that the call waits for exactly those
/// refetches. Every entry is marked stale whatever the type; a disabled query and an
/// entry written only by hand are refetched by none. `invalidate_queries` keeps its
/// behaviour: it is `Active`.
#[tokio::test(start_paused = true)]
async fn each_refetch_type_refetches_exactly_its_entries() {
    // (type, refetched: active, inactive)
    let cases = [
        (Some(RefetchType::Active), [true, false]),
        (None, [true, false]), // plain `invalidate_queries`
        (Some(RefetchType::Inactive), [false, true]),
        (Some(RefetchType::All), [true, true]),
        (Some(RefetchType::None), [false, false]),
    ];
    for (refetch, [active, inactive]) in cases {
        let client = QueryClient::new();
        let kinds = Kinds::on(&client).await;
        let start = Instant::now();
        let n = match refetch {
            Some(refetch) => client.invalidate_queries_with(key!["t"], refetch).await,
            None => client.invalidate_queries(key!["t"]).await,
        };
        assert_eq!(n, 4, "{refetch:?}: every matching entry is invalidated");
        let expected = [1 + u32::from(active), 1 + u32::from(inactive), 1];
        assert_eq!(kinds.calls(), expected, "{refetch:?}: fetch calls");
        let waited = if active || inactive {
            SEC
        } else {
            Duration::ZERO
        };
        assert_eq!(
            start.elapsed(),
            waited,
            "{refetch:?}: waits for its refetches"
        );
        assert_eq!(invalidated(&client, "active"), !active, "{refetch:?}");
        assert_eq!(invalidated(&client, "inactive"), !inactive, "{refetch:?}");
        assert!(
            invalidated(&client, "disabled"),
            "{refetch:?}: only marked stale"
        );
        assert!(
            invalidated(&client, "manual"),
            "{refetch:?}: only marked stale"
        );
        assert_eq!(
            *client.get_query_data::<u32>(&key!["t", "manual"]).unwrap(),
            0,
            "{refetch:?}: hand-set data stays"
        );
        // Nothing else starts later.
        tokio::time::sleep(5 * SEC).await;
        assert_eq!(kinds.calls(), expected, "{refetch:?}: no late fetch");
    }
}

/// Protects the two reads' contract after an invalidation that refetches nothing:
/// `fetch_query` serves the invalidated value at once (stale-while-revalidate, one
/// background refresh), while `fetch_query_fresh` waits for a fetch that began after the
/// invalidation — here it joins that refresh, so the two reads cost one fetch.
#[tokio::test(start_paused = true)]
async fn after_refetch_none_fetch_query_serves_stale_and_fetch_query_fresh_waits() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["profile"], SEC);
    let opts = opts.stale_time(Duration::MAX);
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 1);

    let start = Instant::now();
    let n = client
        .invalidate_queries_with(key!["profile"], RefetchType::None)
        .await;
    assert_eq!((n, calls.get(), start.elapsed()), (1, 1, Duration::ZERO));
    let state = client.get_query_state::<u32>(&key!["profile"]).unwrap();
    assert!(state.is_invalidated && !state.is_fetching(), "{state:?}");

    assert_eq!(
        *client.fetch_query(&opts).await.unwrap(),
        1,
        "stale, at once"
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(*client.fetch_query_fresh(&opts).await.unwrap(), 2, "waited");
    assert_eq!(start.elapsed(), SEC, "the fetch's whole second");
    assert_eq!(
        calls.get(),
        2,
        "the fresh read joined the background refresh"
    );

    // Fresh now: both reads are hits.
    let hits = client.stats().hits;
    assert_eq!(*client.fetch_query_fresh(&opts).await.unwrap(), 2);
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 2);
    assert_eq!((calls.get(), client.stats().hits), (2, hits + 2));
}

/// Protects deduplication of fresh reads: after an invalidation that refetches nothing,
/// many concurrent `fetch_query_fresh` calls share one fetch, and the value they return
/// is then fresh for everyone (a later `fetch_query` fetches nothing).
#[tokio::test(start_paused = true)]
async fn concurrent_fresh_reads_after_an_invalidation_share_one_fetch() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["feed"], SEC);
    let opts = opts.stale_time(Duration::MAX);
    client.fetch_query(&opts).await.unwrap();
    client
        .invalidate_queries_with(key!["feed"], RefetchType::None)
        .await;
    let reads = join_all((0..20).map(|_| client.fetch_query_fresh(&opts))).await;
    assert!(
        reads.iter().all(|r| matches!(r.as_deref(), Ok(2))),
        "{reads:?}"
    );
    assert_eq!(calls.get(), 2);
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 2);
    assert_eq!(calls.get(), 2);
}

/// Protects deduplication across the two reads on a cold key of a client with no second
/// tier: the first fetch can only deliver fetched data, so a fresh read joins it — one
/// fetch, one value for both.
#[tokio::test(start_paused = true)]
async fn a_fresh_read_joins_the_first_fetch_of_a_cold_key() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["cold"], SEC);
    let opts = opts.stale_time(Duration::MAX);
    let (plain, fresh) = tokio::join!(client.fetch_query(&opts), client.fetch_query_fresh(&opts));
    assert_eq!((*plain.unwrap(), *fresh.unwrap()), (1, 1));
    assert_eq!(calls.get(), 1);
    assert_eq!(client.stats().dedup_joins, 1);
}

/// Protects the server case the feature is for: nothing observes the queries, the server
/// invalidates with `All` after a write, and reads that race the invalidation or follow
/// it get the refetched data — one fetch per entry, however many readers.
#[tokio::test(start_paused = true)]
async fn a_server_with_no_observers_reads_fresh_data_after_invalidate_all_with_one_fetch() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["orders", 7], SEC);
    let opts = opts.stale_time(Duration::MAX);
    client.fetch_query(&opts).await.unwrap();

    let start = Instant::now();
    let (n, reads) = tokio::join!(
        client.invalidate_queries_with(key!["orders"], RefetchType::All),
        join_all((0..10).map(|_| client.fetch_query_fresh(&opts))),
    );
    assert_eq!(n, 1);
    assert!(
        reads.iter().all(|r| matches!(r.as_deref(), Ok(2))),
        "{reads:?}"
    );
    assert_eq!(
        calls.get(),
        2,
        "the readers joined the invalidation's refetch"
    );
    assert_eq!(start.elapsed(), SEC);

    // Read after the invalidation returned: a hit.
    let start = Instant::now();
    assert_eq!(*client.fetch_query_fresh(&opts).await.unwrap(), 2);
    assert_eq!((calls.get(), start.elapsed()), (2, Duration::ZERO));
}

/// Protects read-your-writes against a fetch that was already running: it began before
/// the invalidation, so it may have read the data the invalidation says changed. A fresh
/// read made after the invalidation does not join it (it starts its own fetch); the early
/// caller still gets the early fetch's value, which the cache does not keep.
#[tokio::test(start_paused = true)]
async fn a_fetch_in_flight_before_the_invalidation_does_not_satisfy_a_fresh_read() {
    for refetch in [RefetchType::None, RefetchType::Active] {
        let client = QueryClient::new();
        let (opts, calls) = slow_counter(key!["doc"], SEC);
        let opts = opts.stale_time(Duration::MAX);
        let start = Instant::now();
        let early = tokio::spawn({
            let (client, opts) = (client.clone(), opts.clone());
            async move { client.fetch_query(&opts).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(calls.get(), 1, "the early fetch runs");
        client.invalidate_queries_with(key!["doc"], refetch).await;
        let fresh = client.fetch_query_fresh(&opts).await.unwrap();
        assert_eq!(
            *fresh, 2,
            "{refetch:?}: a fetch begun after the invalidation"
        );
        assert_eq!(start.elapsed(), Duration::from_millis(1300), "{refetch:?}");
        assert_eq!(
            *early.await.unwrap().unwrap(),
            1,
            "the early caller's own value"
        );
        let state = client.get_query_state::<u32>(&key!["doc"]).unwrap();
        assert_eq!(state.data.as_deref(), Some(&2), "{refetch:?}");
        assert!(!state.is_invalidated && !state.is_fetching(), "{state:?}");
        assert_eq!(calls.get(), 2, "{refetch:?}");
    }
}

/// Protects the same rule for a refetch the cache itself had running (a stale-while-
/// revalidate refresh that began before the invalidation): with `All`, the invalidation
/// replaces it with a refetch of its own, waits for that one, and the next fresh read is
/// a hit on its data.
#[tokio::test(start_paused = true)]
async fn an_invalidation_replaces_a_refresh_that_began_before_it() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["stock"], SEC);
    let opts = opts.stale_time(Duration::from_secs(10));
    client.fetch_query(&opts).await.unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        *client.fetch_query(&opts).await.unwrap(),
        1,
        "stale: a refresh starts"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    client
        .invalidate_queries_with(key!["stock"], RefetchType::All)
        .await;
    assert_eq!(start.elapsed(), SEC, "waited for its own refetch");
    assert_eq!(calls.get(), 3);
    assert_eq!(*client.fetch_query_fresh(&opts).await.unwrap(), 3);
    assert_eq!(start.elapsed(), SEC, "a hit");
    tokio::time::sleep(SEC).await;
    assert_eq!(
        *client.get_query_data::<u32>(&key!["stock"]).unwrap(),
        3,
        "the replaced refresh, which ended meanwhile, did not overwrite it"
    );
}

/// Protects "fresh" as the stale time says, not only after invalidations: fresh data is a
/// hit, data past its stale time is fetched and waited for (where `fetch_query` would
/// serve it), and with a zero stale time every read fetches — concurrent ones once.
#[tokio::test(start_paused = true)]
async fn fresh_reads_follow_the_stale_time() {
    let client = QueryClient::new();
    let (opts, calls) = slow_counter(key!["quote"], SEC);
    let opts = opts.stale_time(Duration::from_secs(10));
    assert_eq!(*client.fetch_query_fresh(&opts).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let start = Instant::now();
    assert_eq!(*client.fetch_query_fresh(&opts).await.unwrap(), 1);
    assert_eq!((calls.get(), start.elapsed()), (1, Duration::ZERO), "a hit");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(*client.fetch_query_fresh(&opts).await.unwrap(), 2);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(7),
        "waited past the stale time"
    );

    let (zero, zero_calls) = slow_counter(key!["now"], SEC);
    let zero = zero.stale_time(Duration::ZERO);
    assert_eq!(*client.fetch_query_fresh(&zero).await.unwrap(), 1);
    assert_eq!(*client.fetch_query_fresh(&zero).await.unwrap(), 2);
    let reads = join_all((0..5).map(|_| client.fetch_query_fresh(&zero))).await;
    assert!(
        reads.iter().all(|r| matches!(r.as_deref(), Ok(3))),
        "{reads:?}"
    );
    assert_eq!(zero_calls.get(), 3);
}

/// Protects the hand-set case: a fresh read of a key only ever written by hand after an
/// invalidation runs the caller's fetch function (the entry had none to refetch with),
/// and a manual write after an invalidation counts as fresh data.
#[tokio::test(start_paused = true)]
async fn hand_set_entries_are_fetched_by_the_next_fresh_read_and_writes_are_fresh() {
    let client = QueryClient::new();
    client.set_query_data(key!["cfg"], 1_u32).unwrap();
    let n = client
        .invalidate_queries_with(key!["cfg"], RefetchType::All)
        .await;
    assert_eq!(n, 1);
    let (opts, calls) = scripted(key!["cfg"], |n| async move { Ok(10 + n) });
    let opts = opts.stale_time(Duration::MAX);
    assert_eq!(
        calls.get(),
        0,
        "no fetch function was known: nothing refetched"
    );
    assert_eq!(*client.fetch_query_fresh(&opts).await.unwrap(), 11);
    client
        .invalidate_queries_with(key!["cfg"], RefetchType::None)
        .await;
    client.set_query_data(key!["cfg"], 42_u32).unwrap();
    assert_eq!(*client.fetch_query_fresh(&opts).await.unwrap(), 42);
    assert_eq!(calls.get(), 1);
}

/// A persisted query named `key` that returns `"<who>-v<call>"` after `delay`, fresh for
/// an hour.
fn named(key: QueryKey, who: &'static str, delay: Duration) -> (QueryOptions<String>, Calls) {
    let (opts, calls) = scripted(key, move |n| async move {
        tokio::time::sleep(delay).await;
        Ok(format!("{who}-v{n}"))
    });
    (opts.persist().stale_time(Duration::from_secs(3600)), calls)
}

/// Protects the second tier's side on the paused clock (a shared in-memory storage, so a
/// client made on it is a new instance): a fresh read never takes a stored copy another
/// instance invalidated — it fetches — while `fetch_query` serves that copy at once; a
/// stored copy that is fresh is taken with no fetch, and one past the reader's stale time
/// is not.
#[tokio::test(start_paused = true)]
async fn a_fresh_read_takes_only_a_fresh_stored_copy() {
    let store = MemoryStorage::new();
    let on_store = || QueryClient::builder().storage(store.clone()).build();
    let a = on_store();
    let (qa, _) = named(key!["item", 1], "A", Duration::ZERO);
    a.fetch_query(&qa).await.unwrap();
    a.flush_storage().await;

    // Not invalidated: a fresh copy is taken, with no fetch.
    let b = on_store();
    let (qb, calls_b) = named(key!["item", 1], "B", Duration::ZERO);
    assert_eq!(*b.fetch_query_fresh(&qb).await.unwrap(), "A-v1");
    assert_eq!(calls_b.get(), 0);
    // Past the reader's stale time (zero: always): fetched.
    let c = on_store();
    let (qc, calls_c) = named(key!["item", 1], "C", Duration::ZERO);
    let qc = qc.stale_time(Duration::ZERO);
    assert_eq!(*c.fetch_query_fresh(&qc).await.unwrap(), "C-v1");
    assert_eq!(calls_c.get(), 1);
    c.flush_storage().await; // C's copy lands before A's invalidation

    // A invalidates (nothing observes it: nothing refetches), and the flag lands.
    a.invalidate_queries_with(key!["item"], RefetchType::None)
        .await;
    a.flush_storage().await;
    let d = on_store();
    let (qd, calls_d) = named(key!["item", 1], "D", SEC);
    assert_eq!(
        *d.fetch_query(&qd).await.unwrap(),
        "A-v1",
        "fetch_query: the invalidated copy, at once"
    );
    let e = on_store();
    let (qe, calls_e) = named(key!["item", 1], "E", SEC);
    assert_eq!(*e.fetch_query_fresh(&qe).await.unwrap(), "E-v1");
    assert_eq!(calls_e.get(), 1);
    settle().await;
    assert_eq!(
        calls_d.get(),
        1,
        "D refreshes the invalidated copy in the background"
    );
}

/// A shared in-memory store whose reads are answered half a second after the value was
/// read (within the client's storage timeout; writes are immediate).
#[derive(Clone, Default)]
struct SlowReads(MemoryStorage);

#[stackquery::storage::async_trait]
impl stackquery::Storage for SlowReads {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, stackquery::StorageError> {
        let read = self.0.get(key).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        read
    }
    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), stackquery::StorageError> {
        self.0.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<(), stackquery::StorageError> {
        self.0.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, stackquery::StorageError> {
        self.0.delete_prefix(prefix).await
    }
}

/// Protects the in-flight rule for a read of the second tier: a cold read that was
/// reading the stored copy when the invalidation came settles after it with data from
/// before it. That data is kept as invalidated (stale), like a fetch's, so a fresh read
/// made once it has settled does not take it as fresh: it fetches.
#[tokio::test(start_paused = true)]
async fn a_stored_copy_read_before_an_invalidation_is_kept_as_invalidated() {
    let store = SlowReads::default();
    let writer = QueryClient::builder().storage(store.clone()).build();
    let (stored, _) = named(key!["acct"], "W", Duration::ZERO);
    writer.fetch_query(&stored).await.unwrap();
    writer.flush_storage().await;

    let client = QueryClient::builder().storage(store.clone()).build();
    let (opts, calls) = named(key!["acct"], "B", SEC);
    let cold = tokio::spawn({
        let (client, opts) = (client.clone(), opts.clone());
        async move { client.fetch_query(&opts).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await; // reading the store
    client
        .invalidate_queries_with(key!["acct"], RefetchType::None)
        .await;
    assert_eq!(
        cold.await.unwrap().unwrap().as_str(),
        "W-v1",
        "its own caller"
    );
    let state = client.get_query_state::<String>(&key!["acct"]).unwrap();
    assert!(state.is_invalidated, "kept as invalidated: {state:?}");
    assert_eq!(
        client.fetch_query_fresh(&opts).await.unwrap().as_str(),
        "B-v1"
    );
    assert_eq!(calls.get(), 1);
}

/// Instances sharing one SQLite file, no bus (real time: blocking file I/O).
#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use stackquery::SqliteStorage;

    /// Protects read-your-writes across instances that share a SQLite file, for every
    /// refetch type: once A's invalidation has landed in the file, an instance reading the
    /// key there with `fetch_query_fresh` never gets the data A invalidated. It gets A's
    /// refetched data if A refetched (`All`, `Inactive`: A holds the key and nothing
    /// observes it), else fetches itself. (An instance that already held the key in memory
    /// is not told without a bus: see `fetch_query_fresh`'s docs.)
    #[tokio::test]
    async fn an_instance_never_reads_data_another_invalidated_in_the_shared_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.db");
        let on_file = || {
            QueryClient::builder()
                .storage(SqliteStorage::open(&path).unwrap())
                .build()
        };
        let cases = [
            (RefetchType::Active, false),
            (RefetchType::Inactive, true),
            (RefetchType::All, true),
            (RefetchType::None, false),
        ];
        for (i, (refetch, a_refetches)) in cases.into_iter().enumerate() {
            let k = key!["sq", i as u64];
            let a = on_file();
            let (qa, calls_a) = named(k.clone(), "A", Duration::ZERO);
            assert_eq!(*a.fetch_query(&qa).await.unwrap(), "A-v1");
            a.flush_storage().await;
            // B reads A's copy: the file is shared.
            let b = on_file();
            let (qb, calls_b) = named(k.clone(), "B", Duration::ZERO);
            assert_eq!(*b.fetch_query_fresh(&qb).await.unwrap(), "A-v1");
            assert_eq!(calls_b.get(), 0);

            a.invalidate_queries_with(key!["sq"], refetch).await;
            a.flush_storage().await;
            assert_eq!(calls_a.get(), 1 + u32::from(a_refetches), "{refetch:?}");
            // The plain read on a new instance: what the file holds, at once (its
            // background refresh takes longer than the rest of this round).
            let d = on_file();
            let (qd, _) = named(k.clone(), "D", Duration::from_secs(30));
            let plain = d.fetch_query(&qd).await.unwrap();
            let held = if a_refetches { "A-v2" } else { "A-v1" };
            assert_eq!(plain.as_str(), held, "{refetch:?}");
            // The fresh read on a new instance: never the invalidated copy.
            let c = on_file();
            let (qc, calls_c) = named(k.clone(), "C", Duration::ZERO);
            let got = c.fetch_query_fresh(&qc).await.unwrap();
            if a_refetches {
                assert_eq!((got.as_str(), calls_c.get()), ("A-v2", 0), "{refetch:?}");
            } else {
                assert_eq!((got.as_str(), calls_c.get()), ("C-v1", 1), "{refetch:?}");
            }
        }
    }
}

/// Instances on one `redis-server`: shared tier and bus (real time: sockets).
#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use common::redis_server::RedisServer;
    use stackquery::bus::{RedisBus, RedisLeases};
    use stackquery::storage::RedisStorage;

    macro_rules! server_or_skip {
        ($name:expr) => {
            match RedisServer::start($name) {
                Some(server) => server,
                None => return,
            }
        };
    }

    /// One instance: its own storage connection and bus (as in `redis_cluster.rs`).
    async fn instance(server: &RedisServer, ns: &str) -> QueryClient {
        instance_with(server, ns, false).await
    }

    /// An instance, with cluster-wide deduplication when `dedup`.
    async fn instance_with(server: &RedisServer, ns: &str, dedup: bool) -> QueryClient {
        let storage = RedisStorage::builder(server.url())
            .namespace(ns)
            .connect()
            .await
            .expect("storage");
        let bus = RedisBus::builder(server.url())
            .namespace(ns)
            .connect()
            .await
            .expect("bus");
        let mut builder = QueryClient::builder().storage(storage.clone()).bus(bus);
        if dedup {
            builder = builder.cluster_dedup(
                RedisLeases::new(&storage),
                Duration::from_millis(1500),
                Duration::from_secs(10),
            );
        }
        let client = builder.build();
        // Start the bus listener (it starts with the first use of the client).
        client.set_query_data(key!["__warmup"], 0_u8).unwrap();
        client
    }

    async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
        let start = std::time::Instant::now();
        while !check() {
            assert!(start.elapsed() < within, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn heard(client: &QueryClient, k: &QueryKey) -> bool {
        client
            .get_query_state::<String>(k)
            .is_some_and(|s| s.is_invalidated)
    }

    /// Protects read-your-writes across instances over the bus, for every refetch type
    /// (which stays on the instance that invalidates): once B has heard A's invalidation,
    /// B's `fetch_query_fresh` never returns the data A invalidated — B held it in memory
    /// and `fetch_query` still serves it, stale — but waits for a fetch of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_an_invalidation_elsewhere_a_fresh_read_waits_for_new_data() {
        let server = server_or_skip!("after_an_invalidation_elsewhere_a_fresh_read_waits");
        let a = instance(&server, "ryw").await;
        let b = instance(&server, "ryw").await;
        let types = [
            RefetchType::Active,
            RefetchType::Inactive,
            RefetchType::All,
            RefetchType::None,
        ];
        for (i, refetch) in types.into_iter().enumerate() {
            let k = key!["ryw", i as u64];
            let (qa, _) = named(k.clone(), "A", Duration::ZERO);
            let (qb, calls_b) = named(k.clone(), "B", Duration::from_millis(200));
            assert_eq!(*a.fetch_query(&qa).await.unwrap(), "A-v1");
            a.flush_storage().await;
            assert_eq!(
                *b.fetch_query(&qb).await.unwrap(),
                "A-v1",
                "from the shared tier"
            );
            assert_eq!(calls_b.get(), 0);

            a.invalidate_queries_with(k.clone(), refetch).await;
            eventually("B to hear the invalidation", Duration::from_secs(5), || {
                heard(&b, &k)
            })
            .await;
            assert_eq!(
                *b.fetch_query(&qb).await.unwrap(),
                "A-v1",
                "{refetch:?}: stale"
            );
            let fresh = b.fetch_query_fresh(&qb).await.unwrap();
            assert_eq!(fresh.as_str(), "B-v1", "{refetch:?}");
            assert_eq!(calls_b.get(), 1, "{refetch:?}: joined B's own refresh");
        }
    }

    /// Protects the shared tier's side over Redis: a new instance's fresh read never
    /// takes the copy another instance invalidated (it fetches), while a plain read serves
    /// that copy at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_instance_never_takes_a_copy_invalidated_elsewhere() {
        let server = server_or_skip!("a_new_instance_never_takes_a_copy_invalidated_elsewhere");
        let a = instance(&server, "ryw-new").await;
        let k = key!["new", 1];
        let (qa, _) = named(k.clone(), "A", Duration::ZERO);
        a.fetch_query(&qa).await.unwrap();
        a.invalidate_queries_with(k.clone(), RefetchType::None)
            .await;
        a.flush_storage().await;

        // The plain read first (its background refresh outlasts the test): C's fetch
        // will write its own copy.
        let d = instance(&server, "ryw-new").await;
        let (qd, _) = named(k.clone(), "D", Duration::from_secs(30));
        assert_eq!(
            *d.fetch_query(&qd).await.unwrap(),
            "A-v1",
            "plain: stale, at once"
        );
        let c = instance(&server, "ryw-new").await;
        let (qc, calls_c) = named(k.clone(), "C", Duration::ZERO);
        assert_eq!(*c.fetch_query_fresh(&qc).await.unwrap(), "C-v1");
        assert_eq!(calls_c.get(), 1);
    }

    /// Protects the fresh rule on the cluster-dedup path: a cold fresh read under
    /// cluster-wide deduplication reads the shared tier for another holder's result, and
    /// must not take a copy past the reader's stale time there either (a plain read
    /// would); it takes the lease and fetches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fresh_read_under_cluster_dedup_fetches_past_a_stale_stored_copy() {
        let server = server_or_skip!("a_fresh_read_under_cluster_dedup_fetches_past_a_stale");
        let a = instance_with(&server, "ryw-dedup", true).await;
        let k = key!["dedup", 1];
        let (qa, _) = named(k.clone(), "A", Duration::ZERO);
        a.fetch_query(&qa).await.unwrap();
        a.flush_storage().await;
        tokio::time::sleep(Duration::from_millis(50)).await;

        // A stale time shorter than the stored copy's age.
        let stale = Duration::from_millis(20);
        let d = instance_with(&server, "ryw-dedup", true).await;
        let (qd, _) = named(k.clone(), "D", Duration::from_secs(30));
        let plain = d.fetch_query(&qd.stale_time(stale)).await.unwrap();
        assert_eq!(plain.as_str(), "A-v1", "plain: the stale copy, at once");
        let c = instance_with(&server, "ryw-dedup", true).await;
        let (qc, calls_c) = named(k.clone(), "C", Duration::ZERO);
        let fresh = c.fetch_query_fresh(&qc.stale_time(stale)).await.unwrap();
        assert_eq!((fresh.as_str(), calls_c.get()), ("C-v1", 1));
    }

    /// Protects the in-flight rule across instances: a fetch B began before A's
    /// invalidation reached it may have read the old data, so B's fresh read made after
    /// B heard of it does not join that fetch; it waits for one of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fetch_in_flight_when_the_invalidation_arrives_does_not_satisfy_a_fresh_read() {
        let server = server_or_skip!("a_fetch_in_flight_when_the_invalidation_arrives");
        let a = instance(&server, "ryw-flight").await;
        let b = instance(&server, "ryw-flight").await;
        let k = key!["flight", 1];
        // Not persisted: B's fetches go to its fetch function.
        let (qb, calls_b) = scripted(k.clone(), |n| async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(format!("B-v{n}"))
        });
        let qb = qb.stale_time(Duration::from_secs(3600));
        let early = tokio::spawn({
            let (b, qb) = (b.clone(), qb.clone());
            async move { b.fetch_query(&qb).await }
        });
        eventually("B's first fetch to start", Duration::from_secs(5), || {
            calls_b.get() == 1
        })
        .await;
        a.invalidate_queries_with(k.clone(), RefetchType::All).await;
        eventually("B to hear the invalidation", Duration::from_secs(5), || {
            heard(&b, &k)
        })
        .await;
        assert!(
            !early.is_finished(),
            "the invalidation arrived during B's fetch"
        );
        let fresh = b.fetch_query_fresh(&qb).await.unwrap();
        assert_eq!(fresh.as_str(), "B-v2");
        assert_eq!(
            *early.await.unwrap().unwrap(),
            "B-v1",
            "the early caller's value"
        );
        assert_eq!(
            b.get_query_data::<String>(&k)
                .as_deref()
                .map(String::as_str),
            Some("B-v2")
        );
    }
}
