//! Durable mutations: calls written to the second tier before they run, run one at a time
//! in order, deleted on success, moved to the dead letters when their retries are spent,
//! resumed in order by the next process — including one SIGKILLed mid-queue (this test
//! binary, run again as a child process, against a SQLite file and against Redis).
//!
//! Memory-backed tests run on tokio's paused clock; SQLite, Redis and the child processes
//! use real time with generous bounds.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stackquery::storage::{MemoryStorage, Storage, StorageError};
use stackquery::{DurableMutationOptions, QueryClient};
use tokio::time::Instant;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Job {
    n: u32,
}

/// A shared, ordered log of events.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A job that logs its start and end and takes `n` × 10 ms.
fn logged(name: &str, log: &Log) -> DurableMutationOptions<Job> {
    let log = log.clone();
    DurableMutationOptions::new(name, move |job: Job| {
        let log = log.clone();
        async move {
            log.push(format!("start {}", job.n));
            tokio::time::sleep(Duration::from_millis(u64::from(job.n) * 10)).await;
            log.push(format!("end {}", job.n));
            Ok::<_, String>(())
        }
    })
}

fn client_on(storage: impl Storage) -> QueryClient {
    QueryClient::builder().storage(storage).build()
}

/// Enqueues `jobs` on a client whose runtime then stops with every call unfinished (the
/// job never completes): what a process that died leaves in its storage.
fn enqueue_then_die(storage: Arc<dyn Storage>, name: &'static str, jobs: Vec<u32>) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = client_on(storage);
            let stuck = DurableMutationOptions::new(name, |_: Job| {
                std::future::pending::<Result<(), String>>()
            });
            let queue = client.durable_mutation(stuck).await.unwrap();
            for n in jobs {
                queue.enqueue(Job { n }).await.unwrap();
            }
        });
    })
    .join()
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn calls_run_one_at_a_time_in_order_and_their_records_are_deleted() {
    let storage = Arc::new(MemoryStorage::new());
    let client = client_on(storage.clone());
    let log = Log::default();
    let queue = client.durable_mutation(logged("jobs", &log)).await.unwrap();
    let started = Instant::now();
    for n in [3, 1, 2] {
        queue.enqueue(Job { n }).await.unwrap();
    }
    assert_eq!(queue.pending(), 3);
    queue.wait_idle().await;
    assert_eq!(
        log.lines(),
        ["start 3", "end 3", "start 1", "end 1", "start 2", "end 2"]
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(60),
        "one after another"
    );
    assert_eq!(queue.pending(), 0);
    let left = storage.scan_prefix("stackquery:mutations").await.unwrap();
    assert!(left.is_empty(), "records deleted: {left:?}");
}

#[tokio::test(start_paused = true)]
async fn a_record_is_written_before_its_call_runs() {
    let storage = Arc::new(MemoryStorage::new());
    let client = client_on(storage.clone());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s, st) = (seen.clone(), storage.clone());
    let queue = client
        .durable_mutation(DurableMutationOptions::new("jobs", move |job: Job| {
            let (s, st) = (s.clone(), st.clone());
            async move {
                // What the storage holds while the call runs.
                let rows = st.scan_prefix("stackquery:mutations:jobs:").await.unwrap();
                s.lock().unwrap().push((job.n, rows));
                Ok::<_, String>(())
            }
        }))
        .await
        .unwrap();
    assert_eq!(queue.enqueue(Job { n: 7 }).await.unwrap(), 0);
    queue.wait_idle().await;
    let seen = seen.lock().unwrap();
    let (n, rows) = &seen[0];
    assert_eq!(*n, 7);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "stackquery:mutations:jobs:00000000000000000000");
    let json: serde_json::Value = serde_json::from_slice(&rows[0].1).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"v": 1, "vars": {"n": 7}, "failures": 0})
    );
}

#[tokio::test(start_paused = true)]
async fn calls_left_by_a_dead_process_resume_first_in_order() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    enqueue_then_die(storage.clone(), "jobs", vec![5, 6, 7]);
    assert_eq!(
        storage
            .scan_prefix("stackquery:mutations:jobs:")
            .await
            .unwrap()
            .len(),
        3
    );

    let client = client_on(storage.clone());
    let log = Log::default();
    let queue = client.durable_mutation(logged("jobs", &log)).await.unwrap();
    assert_eq!(queue.pending(), 3, "resumed on registration");
    // A new call gets a number past the resumed ones and runs after them.
    assert_eq!(queue.enqueue(Job { n: 1 }).await.unwrap(), 3);
    queue.wait_idle().await;
    let starts: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("start"))
        .collect();
    assert_eq!(starts, ["start 5", "start 6", "start 7", "start 1"]);
    assert!(storage
        .scan_prefix("stackquery:mutations")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_retries_are_spent_moves_to_the_dead_letters_and_the_queue_goes_on() {
    let storage = Arc::new(MemoryStorage::new());
    let client = client_on(storage.clone());
    let log = Log::default();
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (l, f) = (log.clone(), fixed.clone());
    let queue = client
        .durable_mutation(
            DurableMutationOptions::new("jobs", move |job: Job| {
                let (l, f) = (l.clone(), f.clone());
                async move {
                    l.push(format!("try {}", job.n));
                    if job.n == 13 && !f.load(std::sync::atomic::Ordering::SeqCst) {
                        return Err(format!("job {} refused", job.n));
                    }
                    Ok(())
                }
            })
            .retry(2)
            .retry_delay(|_| Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let started = Instant::now();
    for n in [1, 13, 2] {
        queue.enqueue(Job { n }).await.unwrap();
    }
    queue.wait_idle().await;
    assert_eq!(
        log.lines(),
        ["try 1", "try 13", "try 13", "try 13", "try 2"],
        "3 attempts, then the next call"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2), "two retry waits");
    let dead = queue.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].seq, &dead[0].vars, dead[0].failures),
        (1, &Job { n: 13 }, 3)
    );
    assert!(
        dead[0].error.contains("job 13 refused"),
        "{}",
        dead[0].error
    );
    assert!(storage
        .scan_prefix("stackquery:mutations:jobs:")
        .await
        .unwrap()
        .is_empty());

    // Fixed: the dead letter goes back to the queue, runs, and is gone.
    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(queue.requeue_dead_letters().await.unwrap(), 1);
    queue.wait_idle().await;
    assert_eq!(log.lines().last().unwrap(), "try 13");
    assert!(queue.dead_letters().await.unwrap().is_empty());
    assert!(storage
        .scan_prefix("stackquery:mutations")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(start_paused = true)]
async fn dead_letters_survive_a_restart_and_numbers_are_not_reused() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    {
        let client = client_on(storage.clone());
        let failing = DurableMutationOptions::new("jobs", |_: Job| async { Err::<(), _>("no") });
        let queue = client.durable_mutation(failing).await.unwrap();
        queue.enqueue(Job { n: 1 }).await.unwrap();
        queue.wait_idle().await;
    }
    let client = client_on(storage.clone());
    let log = Log::default();
    let queue = client.durable_mutation(logged("jobs", &log)).await.unwrap();
    assert_eq!(queue.pending(), 0, "a dead letter is not resumed");
    assert_eq!(queue.dead_letters().await.unwrap()[0].vars, Job { n: 1 });
    assert_eq!(
        queue.enqueue(Job { n: 2 }).await.unwrap(),
        1,
        "past the dead letter"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_call_is_a_failure_not_a_crash() {
    let storage = Arc::new(MemoryStorage::new());
    let client = client_on(storage);
    let queue = client
        .durable_mutation(DurableMutationOptions::new("jobs", |job: Job| async move {
            assert!(job.n != 0, "job zero panics");
            Ok::<_, String>(())
        }))
        .await
        .unwrap();
    queue.enqueue(Job { n: 0 }).await.unwrap();
    queue.enqueue(Job { n: 1 }).await.unwrap();
    queue.wait_idle().await;
    let dead = queue.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].vars, Job { n: 0 });
}

/// A storage that cannot list keys (the trait's default `scan_prefix`).
struct NoScan(MemoryStorage);

#[stackquery::storage::async_trait]
impl Storage for NoScan {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.0.get(key).await
    }
    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StorageError> {
        self.0.set(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.0.delete(key).await
    }
}

#[tokio::test(start_paused = true)]
async fn bad_registrations_are_error_values() {
    let unsupported = |r: Result<_, StorageError>| matches!(r, Err(StorageError::Unsupported(_)));
    let opts =
        |name: &str| DurableMutationOptions::new(name, |_: Job| async { Ok::<_, String>(()) });

    let bare = QueryClient::new();
    assert!(
        unsupported(bare.durable_mutation(opts("jobs")).await),
        "no storage"
    );
    let own = bare
        .durable_mutation(opts("jobs").storage(MemoryStorage::new()))
        .await;
    assert!(own.is_ok(), "a storage of its own");

    let client = client_on(MemoryStorage::new());
    assert!(unsupported(client.durable_mutation(opts("")).await));
    assert!(unsupported(client.durable_mutation(opts("a:b")).await));
    let first = client.durable_mutation(opts("jobs")).await.unwrap();
    assert!(
        unsupported(client.durable_mutation(opts("jobs")).await),
        "one handle per name"
    );
    assert!(client.durable_mutation(opts("other")).await.is_ok());
    drop(first);
    assert!(
        client.durable_mutation(opts("jobs")).await.is_ok(),
        "free again"
    );

    let no_scan = client_on(NoScan(MemoryStorage::new()));
    assert!(unsupported(no_scan.durable_mutation(opts("jobs")).await));
    // A failed registration does not hold the name.
    let no_scan_own = opts("jobs").storage(MemoryStorage::new());
    assert!(no_scan.durable_mutation(no_scan_own).await.is_ok());
}

/// `scan_prefix` on one backend: sorted, prefix-exact, expired entries left out.
async fn scan_prefix_contract(store: &dyn Storage) {
    for key in ["q:b", "q:a", "q:c", "qq:a", "p:a"] {
        store.set(key, key.as_bytes().to_vec(), None).await.unwrap();
    }
    store
        .set("q:expired", b"x".to_vec(), Some(Duration::ZERO))
        .await
        .unwrap();
    store
        .set("q:short", b"x".to_vec(), Some(Duration::from_millis(50)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let rows = store.scan_prefix("q:").await.unwrap();
    let keys: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["q:a", "q:b", "q:c"]);
    assert_eq!(rows[1].1, b"q:b");
    assert!(store.scan_prefix("z").await.unwrap().is_empty());
}

#[tokio::test]
async fn scan_prefix_on_memory_and_sqlite() {
    scan_prefix_contract(&MemoryStorage::new()).await;
    let sqlite = stackquery::storage::SqliteStorage::open_in_memory().unwrap();
    scan_prefix_contract(&sqlite).await;
}

#[tokio::test]
async fn resume_from_a_sqlite_file_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite");
    let open = || -> Arc<dyn Storage> {
        Arc::new(stackquery::storage::SqliteStorage::open(&path).unwrap())
    };
    enqueue_then_die(open(), "jobs", vec![3, 1, 2]);
    let client = client_on(open());
    let log = Log::default();
    let queue = client.durable_mutation(logged("jobs", &log)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), queue.wait_idle())
        .await
        .expect("resumed calls finish");
    let starts: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("start"))
        .collect();
    assert_eq!(starts, ["start 3", "start 1", "start 2"]);
    assert!(open()
        .scan_prefix("stackquery:mutations")
        .await
        .unwrap()
        .is_empty());
}

// ---------------------------------------------------------------------------------------
// The kill test: this binary, run again as a child, enqueues N calls and runs them; the
// parent SIGKILLs it mid-queue, then resumes the queue from the same storage.

/// Set by the parent for the child: `sqlite:<path>` or `redis:<url>`, and the log file.
const CHILD_STORE: &str = "STACKQUERY_DURABLE_CHILD_STORE";
const CHILD_LOG: &str = "STACKQUERY_DURABLE_CHILD_LOG";
const N: u32 = 20;

async fn open_store(spec: &str) -> Arc<dyn Storage> {
    if let Some(path) = spec.strip_prefix("sqlite:") {
        return Arc::new(stackquery::storage::SqliteStorage::open(path).unwrap());
    }
    #[cfg(feature = "redis")]
    if let Some(url) = spec.strip_prefix("redis:") {
        return Arc::new(
            stackquery::storage::RedisStorage::builder(url)
                .namespace("durable")
                .timeout(Duration::from_secs(5))
                .connect()
                .await
                .unwrap(),
        );
    }
    panic!("unknown store {spec}")
}

/// The job both processes run: waits 30 ms (the kill may land there: the call did not
/// happen), then appends its number to the log file and says so on stdout (the kill may
/// land after this: the call happened but its record is still queued).
fn appending(log: PathBuf) -> DurableMutationOptions<Job> {
    DurableMutationOptions::new("jobs", move |job: Job| {
        let log = log.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)?;
            writeln!(f, "{}", job.n)?;
            f.sync_data()?;
            println!("ran {}", job.n);
            Ok::<_, std::io::Error>(())
        }
    })
}

/// The child side (does nothing when run normally).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn z_child_enqueues_and_runs_durable_mutations() {
    let (Some(store), Some(log)) = (std::env::var_os(CHILD_STORE), std::env::var_os(CHILD_LOG))
    else {
        return;
    };
    let client = client_on(open_store(store.to_str().unwrap()).await);
    let queue = client
        .durable_mutation(appending(log.into()))
        .await
        .unwrap();
    for n in 0..N {
        queue.enqueue(Job { n }).await.unwrap();
    }
    println!("enqueued all");
    queue.wait_idle().await;
    println!("child finished (should have been killed)");
}

/// Runs the child against `store`, kills it (SIGKILL) once every call is enqueued and at
/// least 5 have run, resumes the queue here, and checks the log: every call ran, in order,
/// and at most one — the one in flight at the kill — ran twice.
async fn kill_mid_queue_then_resume(store: &str, log: &Path) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "z_child_enqueues_and_runs_durable_mutations",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_STORE, store)
        .env(CHILD_LOG, log)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run this test binary as a child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut enqueued, mut ran) = (false, 0);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            enqueued |= line.contains("enqueued all");
            ran += usize::from(line.contains("ran "));
            if enqueued && ran >= 5 {
                let _ = tx.send(ran);
                return;
            }
        }
    });
    let ran_before_kill =
        tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
            .expect("the child enqueued everything and ran 5 calls");
    child.kill().expect("SIGKILL the child");
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not finished: {status:?}");
    let after_kill: Vec<u32> = read_log(log);
    assert!(
        after_kill.len() >= ran_before_kill && after_kill.len() < N as usize,
        "killed mid-queue: {after_kill:?}"
    );

    let client = client_on(open_store(store).await);
    let queue = client
        .durable_mutation(appending(log.to_owned()))
        .await
        .unwrap();
    assert!(queue.pending() > 0, "calls were left to resume");
    tokio::time::timeout(Duration::from_secs(30), queue.wait_idle())
        .await
        .expect("the resumed calls finish");

    let all = read_log(log);
    let mut deduped = all.clone();
    deduped.dedup();
    assert_eq!(
        deduped,
        (0..N).collect::<Vec<_>>(),
        "every call, in order: {all:?}"
    );
    assert!(
        all.len() <= N as usize + 1,
        "at most one call ran twice: {all:?}"
    );
    if all.len() == N as usize + 1 {
        // The duplicate is the call in flight at the kill: the last one the child logged.
        assert_eq!(
            all[after_kill.len()],
            *after_kill.last().unwrap(),
            "{all:?}"
        );
    }
    assert!(open_store(store)
        .await
        .scan_prefix("stackquery:mutations")
        .await
        .unwrap()
        .is_empty());
    println!(
        "[{}] killed after {} calls; {} calls in all (N = {N})",
        store.split(':').next().unwrap(),
        after_kill.len(),
        all.len()
    );
}

fn read_log(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_queue_then_resume_from_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("queue.sqlite").display());
    kill_mid_queue_then_resume(&store, &dir.path().join("ran.log")).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_queue_then_resume_from_redis() {
    let Some(server) = common::redis_server::RedisServer::start("durable_sigkill") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = format!("redis:{}", server.url());
    kill_mid_queue_then_resume(&store, &dir.path().join("ran.log")).await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_prefix_and_resume_on_redis() {
    let Some(server) = common::redis_server::RedisServer::start("durable_scan_resume") else {
        return;
    };
    let store = open_store(&format!("redis:{}", server.url())).await;
    scan_prefix_contract(&*store).await;
    enqueue_then_die(store.clone(), "jobs", vec![3, 1, 2]);
    let client = client_on(store.clone());
    let log = Log::default();
    let queue = client.durable_mutation(logged("jobs", &log)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), queue.wait_idle())
        .await
        .expect("resumed calls finish");
    let starts: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("start"))
        .collect();
    assert_eq!(starts, ["start 3", "start 1", "start 2"]);
    assert!(store
        .scan_prefix("stackquery:mutations")
        .await
        .unwrap()
        .is_empty());
}
