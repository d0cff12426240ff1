//! Regression tests for issue 10: bad input from the user must never take the engine down.
//!
//! * K — one panic policy: every piece of user code (fetch function, `retry_if`, retry
//!   delay, filter predicate, `update_query_data` updater, mutation function and callbacks,
//!   mutation listeners) is contained by the same helper, with the same rule on a thread
//!   that is already unwinding: the user code is not run, and the site's fallback applies
//!   exactly as for a panic.
//! * L — every user-given duration saturates: `Duration::MAX` means "never", it does not
//!   panic nor make a deadline fire at once.
//! * M — key hashes are seeded per process, so keys built from request input cannot be
//!   crafted to collide.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stackquery::{key, MutationOptions, QueryClient, QueryError, QueryFilter, QueryOptions};

// ---------------------------------------------------------------------------------------
// K. One panic policy
// ---------------------------------------------------------------------------------------

/// The message of a `QueryError::Panicked` for user code skipped on an unwinding thread.
const SKIPPED: &str = "skipped: the thread is already panicking";

/// Runs `f` from a `Drop` while the thread unwinds from another panic (what happens when a
/// guard in user code calls into the client during a panic), and returns its result.
fn while_unwinding<R>(f: impl FnOnce() -> R) -> R {
    struct CallOnDrop<'a>(Option<Box<dyn FnOnce() + 'a>>);
    impl Drop for CallOnDrop<'_> {
        fn drop(&mut self) {
            assert!(
                std::thread::panicking(),
                "the test must run this while unwinding"
            );
            (self.0.take().unwrap())();
        }
    }
    let mut out = None;
    let slot = &mut out;
    let outer = catch_unwind(AssertUnwindSafe(move || {
        let _guard = CallOnDrop(Some(Box::new(move || *slot = Some(f()))));
        panic!("outer panic (expected by the test)");
    }));
    assert!(outer.is_err());
    out.expect("the drop guard ran")
}

/// A closure that records whether it ran.
#[derive(Clone, Default)]
struct Ran(Arc<AtomicBool>);

impl Ran {
    fn mark(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

// The `retry_if` and retry-delay tests of K moved to the unit tests of `src/retry.rs`
// when `RetryPolicy` and `RetryDelay` became private (no public setter takes them).

/// A filter predicate: a panic excludes the entry, and so does a call on an unwinding
/// thread (a `remove_queries` from a drop guard), where the predicate is not run — it used
/// to run, and a panic in it then aborted the process.
#[test]
fn k_filter_predicate_panics_exclude_and_are_skipped_while_unwinding() {
    let client = QueryClient::new();
    client.set_query_data(key!["a", 1], 1_u32).unwrap();
    client.set_query_data(key!["a", 2], 2_u32).unwrap();

    let panicking = QueryFilter::all().predicate(|k| {
        if k == &key!["a", 1] {
            panic!("predicate boom");
        }
        true
    });
    assert_eq!(client.remove_queries(panicking), 1);
    assert!(client.get_query_data::<u32>(&key!["a", 1]).is_some());
    assert!(client.get_query_data::<u32>(&key!["a", 2]).is_none());

    let ran = Ran::default();
    let r = ran.clone();
    let every = QueryFilter::all().predicate(move |_| {
        r.mark();
        true
    });
    let removed = while_unwinding(|| client.remove_queries(every));
    assert_eq!(removed, 0, "on an unwinding thread every entry is excluded");
    assert!(
        !ran.get(),
        "the predicate must not run on an unwinding thread"
    );
    assert!(client.get_query_data::<u32>(&key!["a", 1]).is_some());
}

/// `update_query_data`: a panicking updater is `Err(Panicked)` and writes nothing; on an
/// unwinding thread the updater is not run (it used to be) and the call is the same
/// `Err(Panicked)` with the policy's "skipped" message, nothing written.
#[test]
fn k_update_query_data_panics_write_nothing_and_are_skipped_while_unwinding() {
    let client = QueryClient::new();
    let k = key!["counter"];
    client.set_query_data(k.clone(), 1_u32).unwrap();

    let err = client
        .update_query_data::<u32, _>(k.clone(), |_| panic!("updater boom"))
        .unwrap_err();
    assert!(
        matches!(err, QueryError::Panicked(ref m) if &**m == "updater boom"),
        "{err:?}"
    );
    assert_eq!(*client.get_query_data::<u32>(&k).unwrap(), 1);

    let ran = Ran::default();
    let err = while_unwinding(|| {
        client.update_query_data::<u32, _>(k.clone(), |old| {
            ran.mark();
            old.map(|n| n + 1)
        })
    })
    .unwrap_err();
    assert!(
        matches!(err, QueryError::Panicked(ref m) if &**m == SKIPPED),
        "{err:?}"
    );
    assert!(
        !ran.get(),
        "the updater must not run on an unwinding thread"
    );
    assert_eq!(*client.get_query_data::<u32>(&k).unwrap(), 1);
}

/// The fetch function goes through the same helper: a panic (while building the future or
/// while polling it) is `Err(Panicked)` with the panic's message and is never retried,
/// whatever the retry policy says.
#[tokio::test(start_paused = true)]
async fn k_fetch_function_panics_are_contained_and_not_retried() {
    let client = QueryClient::new();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let opts = QueryOptions::<u32>::new(key!["boom"], move || {
        c.fetch_add(1, Ordering::SeqCst);
        async {
            if true {
                panic!("fetch boom");
            }
            Ok::<u32, String>(0)
        }
    })
    .retry(3);
    let err = client.fetch_query(&opts).await.unwrap_err();
    assert!(
        matches!(err, QueryError::Panicked(ref m) if &**m == "fetch boom"),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let early = QueryOptions::<u32>::new(
        key!["early"],
        || -> futures::future::Ready<Result<u32, String>> { panic!("early boom") },
    );
    let err = client.fetch_query(&early).await.unwrap_err();
    assert!(
        matches!(err, QueryError::Panicked(ref m) if &**m == "early boom"),
        "{err:?}"
    );
}

/// Mutations, through the shared helper too: a panicking `on_mutate` fails the call with
/// `Panicked` (and `on_error` still runs), a panicking mutation function is not retried, a
/// panicking `on_success` leaves the success alone, and a panicking listener stays
/// subscribed.
#[tokio::test(start_paused = true)]
async fn k_mutation_user_code_panics_are_contained() {
    let client = QueryClient::new();
    let errors = Arc::new(AtomicU32::new(0));
    let e = errors.clone();
    let m = client.mutation(
        MutationOptions::new(|v: u32| async move { Ok::<_, String>(v) })
            .on_mutate(|_: &u32| -> u8 { panic!("on_mutate boom") })
            .on_error(move |_, _, _| {
                e.fetch_add(1, Ordering::SeqCst);
            }),
    );
    let err = m.mutate(1).await.unwrap_err();
    assert!(
        matches!(err, QueryError::Panicked(ref m) if &**m == "on_mutate boom"),
        "{err:?}"
    );
    assert_eq!(errors.load(Ordering::SeqCst), 1);

    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let m = client.mutation(
        MutationOptions::new(move |_: u32| {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                if true {
                    panic!("mutation boom");
                }
                Ok::<u32, String>(0)
            }
        })
        .retry(3),
    );
    let err = m.mutate(1).await.unwrap_err();
    assert!(
        matches!(err, QueryError::Panicked(ref m) if &**m == "mutation boom"),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let heard = Arc::new(AtomicU32::new(0));
    let h = heard.clone();
    let m = client.mutation(
        MutationOptions::new(|v: u32| async move { Ok::<_, String>(v) })
            .on_success(|_, _, _| panic!("on_success boom")),
    );
    let _sub = m.subscribe(move |_| {
        h.fetch_add(1, Ordering::SeqCst);
        panic!("listener boom");
    });
    assert_eq!(*m.mutate(7).await.unwrap(), 7);
    assert!(m.state().is_success());
    let after_first = heard.load(Ordering::SeqCst);
    assert!(after_first >= 1);
    assert_eq!(*m.mutate(8).await.unwrap(), 8);
    assert!(
        heard.load(Ordering::SeqCst) > after_first,
        "the listener stays subscribed"
    );
}

// ---------------------------------------------------------------------------------------
// L. Every user-given duration saturates
// ---------------------------------------------------------------------------------------

/// A store whose reads take 30 ms of *real* time (answered from another OS thread), so a
/// paused tokio clock has nothing to wait for but the storage's own deadline.
#[derive(Clone, Debug, Default)]
struct RealTimeStore(stackquery::MemoryStorage);

#[stackquery::storage::async_trait]
impl stackquery::Storage for RealTimeStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, stackquery::StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            let _ = tx.send(());
        });
        rx.await.unwrap();
        self.0.get(key).await
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

/// A storage timeout of `Duration::MAX` must mean "never": no overflow panic when the
/// deadline is computed, and no firing even on a paused clock that auto-advances while the
/// call waits on real I/O (tokio's `timeout` saturates to its "far future"). This pins the
/// audit's finding that `TimeoutStorage` (and the client's `storage_timeout`) already
/// saturate; a finite deadline still fires.
#[tokio::test(start_paused = true)]
async fn l_storage_timeout_duration_max_never_fires() {
    use stackquery::storage::TimeoutStorage;
    use stackquery::Storage;

    let inner = RealTimeStore::default();
    inner.set("k", b"v".to_vec(), None).await.unwrap();
    let never = TimeoutStorage::new(inner.clone(), Duration::MAX);
    assert_eq!(never.get("k").await.unwrap(), Some(b"v".to_vec()));

    let short = TimeoutStorage::new(inner.clone(), Duration::from_secs(1));
    assert!(short.get("k").await.unwrap_err().is_timeout());

    let client = QueryClient::builder()
        .storage(inner)
        .storage_timeout(Duration::MAX)
        .build();
    let opts = QueryOptions::new(key!["k2"], || async { Ok::<_, String>(5_u32) }).persist();
    assert_eq!(*client.fetch_query(&opts).await.unwrap(), 5);
    client.flush_storage().await;
}

/// `SqliteStorage::builder(..).busy_timeout(Duration::MAX).open()` used to panic inside
/// rusqlite ("too big": SQLite takes `i32` milliseconds) although `open` promises never to
/// panic. The timeout is now clamped to SQLite's maximum.
#[cfg(feature = "sqlite")]
#[test]
fn l_sqlite_busy_timeout_duration_max_opens() {
    let dir = tempfile::tempdir().unwrap();
    let store = stackquery::SqliteStorage::builder(dir.path().join("cache.db"))
        .busy_timeout(Duration::MAX)
        .purge_interval(Some(Duration::MAX))
        .open()
        .expect("opens with the longest busy timeout");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use stackquery::Storage;
        store
            .set("k", b"v".to_vec(), Some(Duration::MAX))
            .await
            .unwrap();
        assert_eq!(store.get("k").await.unwrap(), Some(b"v".to_vec()));
    });
}

#[cfg(feature = "redis")]
mod redis_durations {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::common::redis_server::RedisServer;
    use stackquery::bus::{BusEvent, BusMessageKind, RedisBus, RedisLeases};
    use stackquery::storage::RedisStorage;
    use stackquery::{key, KeyScope, QueryClient, QueryOptions};

    macro_rules! server_or_skip {
        ($name:expr) => {
            match RedisServer::start($name) {
                Some(server) => server,
                None => return,
            }
        };
    }

    /// One instance with cluster dedup whose lease ttl and max wait are both
    /// `Duration::MAX` ("never"), and a bus that never pings.
    async fn instance(server: &RedisServer, ns: &str) -> QueryClient {
        let storage = RedisStorage::builder(server.url())
            .namespace(ns)
            .connect()
            .await
            .expect("storage");
        let bus = RedisBus::builder(server.url())
            .namespace(ns)
            .ping_interval(Duration::MAX)
            .connect()
            .await
            .expect("bus");
        let client = QueryClient::builder()
            .storage(storage.clone())
            .bus(bus)
            .cluster_dedup(RedisLeases::new(&storage), Duration::MAX, Duration::MAX)
            .build();
        client.set_query_data(key!["__warmup"], 0_u8).unwrap();
        client
    }

    fn counted(calls: Arc<AtomicU32>, delay: Duration) -> QueryOptions<String> {
        QueryOptions::new(key!["report", "cold"], move || {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(delay).await;
                Ok::<_, String>(format!("v{n}"))
            }
        })
        .persist()
        .stale_time(Duration::from_secs(3600))
    }

    /// `cluster_dedup(max_wait = Duration::MAX)` computed `Instant::now() + max_wait`, which
    /// panicked inside the fetch task: every cold persisted key ended `Cancelled`. Now
    /// `Duration::MAX` means "wait for the holder however long": the holder fetches and
    /// returns `Ok`, and a second instance asking at the same time waits for it and is
    /// served its result (one fetch across the cluster).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn l_cluster_dedup_max_wait_duration_max_fetches_a_cold_key() {
        let server = server_or_skip!("l_cluster_dedup_max_wait_duration_max");
        let a = instance(&server, "lmax").await;
        let b = instance(&server, "lmax").await;
        let calls = Arc::new(AtomicU32::new(0));
        let opts = counted(calls.clone(), Duration::from_millis(300));
        let (ra, rb) = tokio::join!(a.fetch_query(&opts), b.fetch_query(&opts));
        assert_eq!(ra.expect("cold key on A").as_str(), "v1");
        assert_eq!(rb.expect("cold key on B").as_str(), "v1");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one fetch across the cluster"
        );
    }

    /// `RedisBus::ping_interval(Duration::MAX)` made the listener task compute
    /// `Instant::now() + interval` and panic as it started: the bus looked connected but
    /// delivered nothing, so no invalidation ever reached the other instances. Now it
    /// means "never ping", and messages flow.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn l_bus_ping_interval_duration_max_still_delivers_invalidations() {
        let server = server_or_skip!("l_bus_ping_interval_duration_max");
        let connect = || {
            RedisBus::builder(server.url())
                .namespace("lping")
                .ping_interval(Duration::MAX)
                .max_backoff(Duration::MAX)
                .connect()
        };
        let (a, b) = (connect().await.unwrap(), connect().await.unwrap());
        let mut at_b = b.subscribe();
        a.publish(BusMessageKind::Invalidate {
            scope: KeyScope::Prefix(key!["user"]),
        })
        .await
        .unwrap();
        let event = tokio::time::timeout(Duration::from_secs(5), at_b.recv())
            .await
            .expect("the message arrives");
        assert!(
            matches!(event, Some(BusEvent::Message(ref m)) if matches!(m.kind, BusMessageKind::Invalidate { .. })),
            "{event:?}"
        );

        // And through clients: an invalidation on one instance reaches the other.
        let ca = instance(&server, "lping2").await;
        let cb = instance(&server, "lping2").await;
        cb.set_query_data(key!["user", 1], 1_u32).unwrap();
        ca.invalidate_queries(key!["user"]).await;
        let start = Instant::now();
        while !cb
            .get_query_state::<u32>(&key!["user", 1])
            .is_some_and(|s| s.is_invalidated)
        {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "invalidation lost"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// M. Hash flooding
// ---------------------------------------------------------------------------------------

/// Keys such as would be built from request input.
fn request_keys() -> Vec<stackquery::QueryKey> {
    (0..64)
        .map(|i| key!["user", format!("{}", 100_000 + i * 7919)])
        .chain((0..64).map(|i| key!["search", i, i % 2 == 0]))
        .collect()
}

/// Key hashes used to be SipHash under the *fixed* default seed (`DefaultHasher::new()`),
/// which anyone can reproduce offline: a client could precompute keys that all collide and
/// flood the cache's maps, which trust the hash. The seed is now random per process, so
/// no key's hash is the fixed-seed one (by chance: 128 in 2^64).
#[test]
fn m_key_hash_is_not_the_fixed_seed_siphash() {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let fixed = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
    let keys = request_keys();
    let same: Vec<_> = keys
        .iter()
        .filter(|k| k.precomputed_hash() == fixed.hash_one(k.parts()))
        .collect();
    assert!(same.is_empty(), "fixed-seed hashes: {same:?}");
}

/// Set by the parent of [`m_key_hash_seed_differs_between_processes`] for its child.
const PRINT_HASHES: &str = "STACKQUERY_BAD_INPUT_PRINT_HASHES";

/// The child side: prints the hashes of [`request_keys`] (does nothing when run normally).
#[test]
fn m_child_prints_key_hashes() {
    if std::env::var_os(PRINT_HASHES).is_none() {
        return;
    }
    for k in request_keys() {
        println!("hash={}", k.precomputed_hash());
    }
}

/// The seed is drawn per process, not fixed at build time: this test binary, run again as
/// a child process, hashes the same keys differently. (Within a process the hash is stable:
/// it is computed twice here and compared.)
#[test]
fn m_key_hash_seed_differs_between_processes() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "m_child_prints_key_hashes",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PRINT_HASHES, "1")
        .output()
        .expect("run this test binary as a child");
    assert!(out.status.success(), "{out:?}");
    let child: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        // The harness may print "test … ... " before the first line on the same line.
        .filter_map(|l| l.rsplit_once("hash=").map(|(_, h)| h.trim()))
        .map(|h| h.parse().unwrap())
        .collect();
    let ours: Vec<u64> = request_keys()
        .iter()
        .map(|k| k.precomputed_hash())
        .collect();
    assert_eq!(child.len(), ours.len(), "the child printed every hash");
    let again: Vec<u64> = request_keys()
        .iter()
        .map(|k| k.precomputed_hash())
        .collect();
    assert_eq!(ours, again, "stable within a process");
    let shared = ours.iter().zip(&child).filter(|(a, b)| a == b).count();
    assert_eq!(shared, 0, "a child process must hash every key differently");
}

/// The random seed changes nothing for equality: keys that are equal (however they were
/// built: integer widths, parsed back from their storage text) hash equal, and every cache
/// lookup finds its entry.
#[tokio::test]
async fn m_equal_keys_hash_equal_and_lookups_work() {
    let a = key!["user", 1_u8];
    let b = key!["user", 1_i64];
    let c: stackquery::QueryKey = a.to_string().parse().unwrap();
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a.precomputed_hash(), b.precomputed_hash());
    assert_eq!(a.precomputed_hash(), c.precomputed_hash());

    let client = QueryClient::new();
    let keys = request_keys();
    for (i, k) in keys.iter().enumerate() {
        client.set_query_data(k.clone(), i).unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        let rebuilt: stackquery::QueryKey = k.to_string().parse().unwrap();
        assert_eq!(
            client.get_query_data::<usize>(&rebuilt).as_deref(),
            Some(&i)
        );
    }
    let opts = QueryOptions::new(b.clone(), || async { Ok::<_, String>(7_usize) });
    client.set_query_data(a.clone(), 3_usize).unwrap();
    let got = client
        .fetch_query(&opts.stale_time(Duration::from_secs(60)))
        .await;
    assert_eq!(*got.unwrap(), 3, "a fresh hit through an equal key");
}

// ---------------------------------------------------------------------------------------
// K (continued). Serialize / Deserialize impls are user code too
// ---------------------------------------------------------------------------------------

/// Data whose `Serialize` panics for 13 (a user bug), and whose `Deserialize` panics when
/// it reads 99.
#[derive(Debug, PartialEq)]
struct Grenade(u32);

impl serde::Serialize for Grenade {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        assert_ne!(self.0, 13, "serialize boom");
        s.serialize_u32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Grenade {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = <u32 as serde::Deserialize>::deserialize(d)?;
        assert_ne!(n, 99, "deserialize boom");
        Ok(Grenade(n))
    }
}

fn grenade(k: stackquery::QueryKey, n: u32) -> QueryOptions<Grenade> {
    QueryOptions::new(k, move || async move { Ok::<_, String>(Grenade(n)) }).persist()
}

/// A panicking `Serialize` used to unwind through the second tier's write-behind task and
/// kill it: no entry was ever written again and `flush_storage` hung forever. Encoding now
/// runs under the panic policy: that one write fails (logged), the others go on.
#[tokio::test(start_paused = true)]
async fn k_panicking_serialize_fails_one_write_not_the_tier() {
    use stackquery::Storage;
    let store = stackquery::MemoryStorage::new();
    let client = QueryClient::builder().storage(store.clone()).build();
    assert_eq!(
        client
            .fetch_query(&grenade(key!["g", 13], 13))
            .await
            .unwrap()
            .0,
        13
    );
    tokio::time::timeout(Duration::from_secs(5), client.flush_storage())
        .await
        .expect("flush_storage returns");
    assert_eq!(
        client
            .fetch_query(&grenade(key!["g", 1], 1))
            .await
            .unwrap()
            .0,
        1
    );
    tokio::time::timeout(Duration::from_secs(5), client.flush_storage())
        .await
        .expect("flush_storage returns after a panicking write");
    assert!(store
        .get(&key!["g", 1].to_string())
        .await
        .unwrap()
        .is_some());
    assert!(store
        .get(&key!["g", 13].to_string())
        .await
        .unwrap()
        .is_none());
}

/// A panicking `Deserialize` while reading the second tier used to kill the fetch task:
/// the query ended `Cancelled`. Decoding now runs under the panic policy: the stored entry
/// counts as unreadable (a miss) and the query fetches.
#[tokio::test(start_paused = true)]
async fn k_panicking_deserialize_is_a_miss_not_a_cancelled_query() {
    let store = stackquery::MemoryStorage::new();
    let writer = QueryClient::builder().storage(store.clone()).build();
    writer
        .fetch_query(&grenade(key!["g", 99], 99))
        .await
        .unwrap();
    writer.flush_storage().await;

    let reader = QueryClient::builder().storage(store).build();
    let fetched = reader.fetch_query(&grenade(key!["g", 99], 7)).await;
    assert_eq!(fetched.expect("a miss, then a fetch").0, 7);
}
