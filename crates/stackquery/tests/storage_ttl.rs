//! Second-tier ttls: a query's own ttl (`QueryOptions::storage_ttl`), per-prefix ttls
//! (`QueryClientBuilder::storage_ttl_prefix`), and the jitter that keeps keys written
//! together from expiring together (`QueryClientBuilder::storage_ttl_jitter`).
//!
//! First what the client asks of the store (a recording store, the in-memory store on
//! tokio's paused clock), then what the real backends do with it: SQLite (a temporary
//! file) and Redis (a `redis-server` of the test's own; skipped loudly without the
//! binary). The real-backend tests run on real time with short sleeps and generous bounds.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stackquery::storage::{async_trait, MemoryStorage, Storage, StorageError};
use stackquery::{key, QueryClient, QueryClientBuilder, QueryKey, QueryOptions};

const HOUR: Duration = Duration::from_secs(3_600);

/// The key and ttl of each `set`, in order.
type Sets = Arc<Mutex<Vec<(String, Option<Duration>)>>>;

/// A store that records the ttl of every `set` (and stores it in memory).
#[derive(Clone, Default)]
struct Recording {
    inner: MemoryStorage,
    sets: Sets,
}

impl Recording {
    /// The ttl of the last `set` of `key` (`None` inside: no ttl). Panics if none.
    fn ttl_of(&self, key: &QueryKey) -> Option<Duration> {
        let text = key.to_string();
        self.sets
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(k, _)| *k == text)
            .unwrap_or_else(|| panic!("no set of {text}"))
            .1
    }

    /// The ttls of every `set`, in order.
    fn ttls(&self) -> Vec<Option<Duration>> {
        self.sets.lock().unwrap().iter().map(|(_, t)| *t).collect()
    }
}

#[async_trait]
impl Storage for Recording {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(key).await
    }
    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        self.sets.lock().unwrap().push((key.to_owned(), ttl));
        self.inner.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        self.inner.delete_prefix(prefix).await
    }
}

/// A persisted query of `key` whose data is `value`.
fn persisted(key: QueryKey, value: u32) -> QueryOptions<u32> {
    QueryOptions::new(key, move || async move { Ok::<_, String>(value) }).persist()
}

/// Writes `n` keys `["item", i]` at once (manual writes under a `persist_prefix` rule)
/// and waits until the store has them.
async fn write_items(client: &QueryClient, n: u32) {
    for i in 0..n {
        client.set_query_data(key!["item", i], i).unwrap();
    }
    client.flush_storage().await;
}

/// A client on `store` that persists `["item", ..]` keys as `u32`.
fn items_client(
    store: impl Storage,
    configure: impl FnOnce(QueryClientBuilder) -> QueryClientBuilder,
) -> QueryClient {
    configure(
        QueryClient::builder()
            .storage(store)
            .persist_prefix::<u32>(key!["item"]),
    )
    .build()
}

/// Checks that `ttls` (of keys written together, ttl `ttl`, jitter `fraction`) are all
/// within `(ttl · (1 − fraction), ttl]` — never above the configured ttl — and spread over
/// that window: nearly all distinct, reaching into both its lower and its upper quarter,
/// and spanning more than half of it. With 100 uniform draws the chance that a correct
/// jitter fails any of these is below 1e-12.
fn assert_spread(ttls: &[Duration], ttl: Duration, fraction: f64, slack: Duration) {
    let window = ttl.mul_f64(fraction);
    let floor = ttl - window;
    for t in ttls {
        assert!(*t <= ttl, "{t:?} is above the configured ttl {ttl:?}");
        assert!(
            *t + slack > floor,
            "{t:?} is below the window ({floor:?}, {ttl:?}]"
        );
    }
    let distinct: HashSet<_> = ttls.iter().collect();
    assert!(
        distinct.len() * 10 >= ttls.len() * 9,
        "only {} distinct ttls among {}",
        distinct.len(),
        ttls.len()
    );
    let (min, max) = (ttls.iter().min().unwrap(), ttls.iter().max().unwrap());
    assert!(
        *min < floor + window / 4 + slack,
        "min {min:?}: nothing in the lower quarter"
    );
    assert!(
        *max + slack > ttl - window / 4,
        "max {max:?}: nothing in the upper quarter"
    );
    assert!(
        *max - *min + slack * 2 > window / 2,
        "{min:?}..{max:?} spans less than half the window {window:?}"
    );
}

/// Protects the per-query ttl end to end: a query's `storage_ttl` is the ttl the store's
/// `set` receives, over the client's `storage_ttl`; a query without one gets the client's;
/// changing the query's ttl changes the next write's.
#[tokio::test(start_paused = true)]
async fn a_querys_own_ttl_reaches_the_backend() {
    let store = Recording::default();
    let client = QueryClient::builder()
        .storage(store.clone())
        .storage_ttl(HOUR)
        .build();
    let own = persisted(key!["price", 1], 1).storage_ttl(Duration::from_secs(60));
    let plain = persisted(key!["user", 1], 2);
    client.fetch_query(&own).await.unwrap();
    client.fetch_query(&plain).await.unwrap();
    client.flush_storage().await;
    assert_eq!(store.ttl_of(own.key()), Some(Duration::from_secs(60)));
    assert_eq!(store.ttl_of(plain.key()), Some(HOUR));

    let changed = own.clone().storage_ttl(Duration::from_millis(1_500));
    client.refetch_query(&changed).await.unwrap();
    client.flush_storage().await;
    assert_eq!(store.ttl_of(own.key()), Some(Duration::from_millis(1_500)));
}

/// Protects the order of the ttl settings: the query's own, then the first prefix rule
/// covering the key, then the client's ttl, then (without one) the entry's gc time;
/// `Duration::MAX` stores without expiry. A prefix rule also covers manual writes of keys
/// no query has used.
#[tokio::test(start_paused = true)]
async fn the_querys_ttl_then_a_prefix_rule_then_the_clients_then_the_gc_time() {
    let store = Recording::default();
    let client = QueryClient::builder()
        .storage(store.clone())
        .storage_ttl(HOUR)
        .storage_ttl_prefix(key!["session", "admin"], Duration::from_secs(30))
        .storage_ttl_prefix(key!["session"], Duration::from_secs(900))
        .storage_ttl_prefix(key!["archive"], Duration::MAX)
        .persist_prefix::<u32>(key!["session"])
        .build();
    let own = persisted(key!["session", 1], 1).storage_ttl(Duration::from_secs(5));
    let ruled = persisted(key!["session", 2], 2);
    let archived = persisted(key!["archive", 1], 3);
    let other = persisted(key!["user", 1], 4);
    for q in [&own, &ruled, &archived, &other] {
        client.fetch_query(q).await.unwrap();
    }
    client
        .set_query_data(key!["session", "admin", 7], 7_u32)
        .unwrap();
    client.flush_storage().await;
    assert_eq!(store.ttl_of(own.key()), Some(Duration::from_secs(5)));
    assert_eq!(store.ttl_of(ruled.key()), Some(Duration::from_secs(900)));
    assert_eq!(
        store.ttl_of(archived.key()),
        None,
        "Duration::MAX: no expiry"
    );
    assert_eq!(store.ttl_of(other.key()), Some(HOUR));
    assert_eq!(
        store.ttl_of(&key!["session", "admin", 7]),
        Some(Duration::from_secs(30)),
        "the first rule that covers the key, for a manual write too"
    );

    // No client ttl: the gc time, the query's own gc time included.
    let store = Recording::default();
    let client = QueryClient::builder()
        .storage(store.clone())
        .gc_time(Duration::from_secs(120))
        .build();
    let plain = persisted(key!["a"], 1);
    let long_gc = persisted(key!["b"], 2).gc_time(Duration::from_secs(600));
    client.fetch_query(&plain).await.unwrap();
    client.fetch_query(&long_gc).await.unwrap();
    client.flush_storage().await;
    assert_eq!(store.ttl_of(plain.key()), Some(Duration::from_secs(120)));
    assert_eq!(store.ttl_of(long_gc.key()), Some(Duration::from_secs(600)));
}

/// Protects the jitter's promise: 100 keys written in the same instant get ttls spread
/// over `(ttl · 0.8, ttl]` (see `assert_spread`), none above the configured ttl; it applies
/// to a query's own ttl and to the gc-time fallback alike.
#[tokio::test(start_paused = true)]
async fn jitter_spreads_keys_written_together_over_the_window() {
    let ttl = Duration::from_secs(100);
    let store = Recording::default();
    let client = items_client(store.clone(), |b| {
        b.storage_ttl(ttl).storage_ttl_jitter(0.2)
    });
    write_items(&client, 100).await;
    let ttls: Vec<Duration> = store.ttls().into_iter().map(Option::unwrap).collect();
    assert_eq!(ttls.len(), 100);
    assert_spread(&ttls, ttl, 0.2, Duration::ZERO);

    // A query's own ttl, and the gc time when there is no client ttl, are jittered too.
    let store = Recording::default();
    let client = QueryClient::builder()
        .storage(store.clone())
        .gc_time(Duration::from_secs(50))
        .storage_ttl_jitter(0.5)
        .build();
    for i in 0..100 {
        let own = persisted(key!["own", i], i).storage_ttl(Duration::from_secs(10));
        client.fetch_query(&own).await.unwrap();
        client
            .fetch_query(&persisted(key!["gc", i], i))
            .await
            .unwrap();
    }
    client.flush_storage().await;
    let of = |prefix: &str| -> Vec<Duration> {
        (0..100)
            .map(|i| store.ttl_of(&key![prefix, i]).unwrap())
            .collect()
    };
    assert_spread(&of("own"), Duration::from_secs(10), 0.5, Duration::ZERO);
    assert_spread(&of("gc"), Duration::from_secs(50), 0.5, Duration::ZERO);
}

/// Protects the default and bad input: without `storage_ttl_jitter` (or with 0, NaN or a
/// negative fraction, which are clamped to 0) every key gets exactly the configured ttl;
/// a fraction past 1 is clamped to 1 (ttls anywhere in `(0, ttl]`), never a panic.
#[tokio::test(start_paused = true)]
async fn no_jitter_by_default_and_bad_fractions_are_clamped() {
    let ttl = Duration::from_secs(100);
    let exact: [Option<f64>; 4] = [None, Some(0.0), Some(f64::NAN), Some(-0.5)];
    for jitter in exact {
        let store = Recording::default();
        let client = items_client(store.clone(), |b| {
            let b = b.storage_ttl(ttl);
            match jitter {
                Some(j) => b.storage_ttl_jitter(j),
                None => b,
            }
        });
        write_items(&client, 20).await;
        assert_eq!(store.ttls(), vec![Some(ttl); 20], "jitter {jitter:?}");
    }
    for big in [1.0, 7.5, f64::INFINITY] {
        let store = Recording::default();
        let client = items_client(store.clone(), |b| {
            b.storage_ttl(ttl).storage_ttl_jitter(big)
        });
        write_items(&client, 100).await;
        let ttls: Vec<Duration> = store.ttls().into_iter().map(Option::unwrap).collect();
        assert_spread(&ttls, ttl, 1.0, Duration::ZERO);
    }
}

/// Protects what the jitter is for, on tokio's paused clock and the in-memory store: 100
/// keys written in one instant (ttl 100 s, jitter 0.5) all outlive 50 s, are all gone at
/// 100 s, and in between expire over many different seconds, not in one burst. A key that
/// has expired reads as a miss through a client, one still stored reads back.
#[tokio::test(start_paused = true)]
async fn entries_written_together_expire_at_different_instants() {
    let store = MemoryStorage::new();
    let client = items_client(store.clone(), |b| {
        b.storage_ttl(Duration::from_secs(100))
            .storage_ttl_jitter(0.5)
    });
    write_items(&client, 100).await;
    assert_eq!(store.len(), 100);

    tokio::time::advance(Duration::from_secs(50)).await;
    assert_eq!(store.len(), 100, "nothing expires before ttl · (1 − 0.5)");
    let mut left = store.len();
    let mut instants = 0;
    let mut biggest_burst = 0;
    let reader = items_client(store.clone(), |b| b);
    let mut checked_a_miss = false;
    for _ in 50..100 {
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = store.len();
        if now < left {
            instants += 1;
            biggest_burst = biggest_burst.max(left - now);
        }
        left = now;
        if !checked_a_miss && now > 0 && now < 100 {
            // Mid-window: some keys are gone, others are still stored.
            let live: HashSet<String> = store.keys().into_iter().collect();
            let (gone, kept): (Vec<u32>, Vec<u32>) =
                (0..100).partition(|i| !live.contains(&key!["item", *i].to_string()));
            let (gone, kept) = (key!["item", gone[0]], key!["item", kept[0]]);
            assert_eq!(reader.get_query_data_or_stored::<u32>(&gone).await, None);
            assert!(reader
                .get_query_data_or_stored::<u32>(&kept)
                .await
                .is_some());
            checked_a_miss = true;
        }
    }
    assert!(checked_a_miss);
    assert_eq!(store.len(), 0, "every key is gone by its configured ttl");
    // 100 keys over 50 one-second steps: about 43 distinct steps are expected.
    assert!(
        instants >= 20,
        "the keys expired over only {instants} instants"
    );
    assert!(
        biggest_burst <= 15,
        "{biggest_burst} keys expired in one second"
    );

    // The same without jitter: every key expires in the same instant.
    let store = MemoryStorage::new();
    let client = items_client(store.clone(), |b| b.storage_ttl(Duration::from_secs(100)));
    write_items(&client, 100).await;
    tokio::time::advance(Duration::from_millis(99_999)).await;
    assert_eq!(store.len(), 100);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(store.len(), 0);
}

/// Against a real SQLite file: the `expires_at` each row gets (read from the file, in ms
/// since the epoch) is the query's own ttl for a query that has one, and spread over the
/// jitter window for keys written together; a row past its ttl reads as a miss once real
/// time has passed, while the others still read back.
#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_honours_per_entry_and_jittered_ttls() {
    use stackquery::SqliteStorage;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ttl.sqlite");
    let ttl = Duration::from_secs(60);
    let client = items_client(SqliteStorage::open(&path).unwrap(), |b| {
        b.storage_ttl(ttl).storage_ttl_jitter(0.5)
    });
    let short = persisted(key!["short"], 1).storage_ttl(Duration::from_millis(800));
    let before = now_ms();
    client.fetch_query(&short).await.unwrap();
    write_items(&client, 100).await;
    let after = now_ms();

    let rows = sqlite_expiries(&path);
    // Jittered too, but only ever shortened: at most 800 ms after the write.
    let short_expiry = rows[&short.key().to_string()];
    assert!(
        short_expiry <= after + 800 && short_expiry > before + 400,
        "{short_expiry} not in ({}, {}]",
        before + 400,
        after + 800
    );
    let ttls: Vec<Duration> = (0..100)
        .map(|i| {
            let at = rows[&key!["item", i].to_string()];
            assert!(at <= after + 60_000, "row {i} expires past its ttl");
            Duration::from_millis(u64::try_from(at - before).unwrap())
        })
        .collect();
    // Measured from before the writes: the slack covers the time the writes took.
    let slack = Duration::from_millis(u64::try_from(after - before).unwrap() + 1);
    for t in &ttls {
        assert!(*t <= ttl + slack);
    }
    let capped: Vec<Duration> = ttls.iter().map(|t| (*t).min(ttl)).collect();
    assert_spread(&capped, ttl, 0.5, slack);

    // Real time passes: the short row is a miss, the others read back.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let store = SqliteStorage::open(&path).unwrap();
    assert_eq!(store.get(&short.key().to_string()).await.unwrap(), None);
    let reader = items_client(SqliteStorage::open(&path).unwrap(), |b| b);
    assert_eq!(
        reader
            .get_query_data_or_stored::<u32>(&key!["item", 3])
            .await
            .as_deref(),
        Some(&3)
    );
    client.shutdown(Duration::from_secs(1)).await;
}

#[cfg(feature = "sqlite")]
fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// Every row's `expires_at`, read from the file (the documented schema).
#[cfg(feature = "sqlite")]
fn sqlite_expiries(path: &std::path::Path) -> std::collections::HashMap<String, i64> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT key, expires_at FROM stackquery_cache")
        .unwrap();
    stmt.query_map((), |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Against a real `redis-server`: the `PTTL` of each key (read over a raw connection) is
/// the query's own ttl for a query that has one, and differs between keys written
/// together, all at most the configured ttl; the short key reads as a miss once real time
/// has passed it, through the store and through a client.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_honours_per_entry_and_jittered_ttls() {
    use common::redis_server::RedisServer;
    use stackquery::RedisStorage;

    let Some(server) = RedisServer::start("redis_honours_per_entry_and_jittered_ttls") else {
        return;
    };
    let store = RedisStorage::builder(server.url())
        .namespace("ttl")
        .connect()
        .await
        .expect("connect to the test server");
    let ttl = Duration::from_secs(60);
    let client = items_client(store.clone(), |b| {
        b.storage_ttl(ttl).storage_ttl_jitter(0.5)
    });
    let raw = redis::Client::open(server.url()).unwrap();
    let mut raw = raw.get_multiplexed_async_connection().await.unwrap();
    // Jittered into (750, 1500] ms; read at once, well within its shortest life.
    let short = persisted(key!["short"], 1).storage_ttl(Duration::from_millis(1_500));
    client.fetch_query(&short).await.unwrap();
    client.flush_storage().await;
    let short_pttl = pttl(&mut raw, &store, short.key()).await;
    assert!(
        (1..=1_500).contains(&short_pttl),
        "PTTL {short_pttl} of a 1,500 ms ttl"
    );
    let started = std::time::Instant::now();
    write_items(&client, 100).await;
    let mut ttls = Vec::new();
    for i in 0..100 {
        let ms = pttl(&mut raw, &store, &key!["item", i]).await;
        assert!(ms > 0 && ms <= 60_000, "PTTL {ms} of key {i}");
        ttls.push(Duration::from_millis(u64::try_from(ms).unwrap()));
    }
    // PTTL counts down while we read: the slack covers the time since the writes began.
    let slack = started.elapsed() + Duration::from_millis(1);
    assert_spread(&ttls, ttl, 0.5, slack);

    // Real time passes: the short key is a miss, the others read back.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert_eq!(store.get(&short.key().to_string()).await.unwrap(), None);
    let reader = items_client(store.clone(), |b| b);
    assert_eq!(
        reader
            .get_query_data_or_stored::<u32>(&key!["item", 3])
            .await
            .as_deref(),
        Some(&3)
    );
    let (short_again, calls) = common::scripted(key!["short"], |n| async move { Ok(100 + n) });
    let short_again = short_again.persist();
    assert_eq!(
        *reader.fetch_query(&short_again).await.unwrap(),
        101,
        "fetched, not read back"
    );
    assert_eq!(calls.get(), 1);
    client.shutdown(Duration::from_secs(1)).await;
}

/// The `PTTL` of `key`'s entry, over a raw connection (not through the store under test).
#[cfg(feature = "redis")]
async fn pttl(
    raw: &mut redis::aio::MultiplexedConnection,
    store: &stackquery::RedisStorage,
    key: &QueryKey,
) -> i64 {
    redis::cmd("PTTL")
        .arg(store.redis_key(&key.to_string()))
        .query_async(raw)
        .await
        .unwrap()
}
