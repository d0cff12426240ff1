//! Model-based property test: random sequences of operations run against a real
//! [`QueryClient`] and against a small reference model written here, on a paused clock.
//!
//! After every step the two must agree on each key's data, status, fetch status, error,
//! invalidation, failure count and staleness; on which entries exist; on how many times the
//! fetch function ran and how many fetches started; on what every pending caller got (and
//! when); on what `invalidate_queries` returned (and when); and on the last state every
//! observer's listeners were told (no lost final state).
//!
//! The model is deliberately naive: one struct per entry, one per fetch, time in whole
//! seconds. It is the specification the engine is checked against; where it had to learn
//! a documented quirk of the engine, the quirk is named in a comment.
//!
//! Fast by default (64 cases); `STACKQUERY_DEEP=1` runs 2,000 cases of longer sequences.
//! `PROPTEST_CASES=N` overrides the count. Shrunk failures are kept in
//! `proptest-regressions/model.txt` and replayed first on every run.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use stackquery::{
    FetchStatus, KeyPart, QueryClient, QueryError, QueryFilter, QueryKey, QueryObserver,
    QueryOptions, QueryState, QueryStatus, Subscription,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// Stale time, gc time, retry delay (seconds); one retry per fetch.
const STALE: u64 = 3;
const GC: u64 = 10;
const RETRY_DELAY: u64 = 1;
const RETRIES: u32 = 1;

/// The keys operations touch, and the prefixes bulk operations use (as plain parts, so the
/// model's prefix matching does not rely on `QueryKey::starts_with`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    S(&'static str),
    I(i64),
}
const KEYS: &[&[Part]] = &[
    &[Part::S("a"), Part::I(1)],
    &[Part::S("a"), Part::I(2)],
    &[Part::S("b"), Part::I(1)],
];
const PREFIXES: &[&[Part]] = &[
    &[],
    &[Part::S("a")],
    &[Part::S("a"), Part::I(1)],
    &[Part::S("a"), Part::I(2)],
    &[Part::S("b")],
    &[Part::S("b"), Part::I(1)],
    &[Part::S("c")],
];

fn query_key(parts: &[Part]) -> QueryKey {
    QueryKey::new(parts.iter().map(|p| match p {
        Part::S(s) => KeyPart::from(*s),
        Part::I(i) => KeyPart::from(*i),
    }))
}

fn under(key: usize, prefix: usize) -> bool {
    KEYS[key].starts_with(PREFIXES[prefix])
}

/// Figures of a run, printed at the end (`--nocapture`) for RELIABILITY.md.
static CASES: AtomicU64 = AtomicU64::new(0);
static STEPS: AtomicU64 = AtomicU64::new(0);
static CALLERS: AtomicU64 = AtomicU64::new(0);
static FETCHES: AtomicU64 = AtomicU64::new(0);
static CANCELLED: AtomicU64 = AtomicU64::new(0);
static LISTENER_CHECKS: AtomicU64 = AtomicU64::new(0);

fn deep() -> bool {
    std::env::var("STACKQUERY_DEEP").is_ok_and(|v| v != "0" && !v.is_empty())
}

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

/// One step of a test case.
#[derive(Clone, Debug)]
enum Op {
    /// `fetch_query` (spawned: a slow fetch must not move the paused clock). Sets what the
    /// key's fetch function does from now on: succeed or fail after `delay` seconds.
    Fetch { key: usize, ok: bool, delay: u64 },
    /// `ensure_query_data` (spawned): any cached data, else the fetch.
    Ensure { key: usize },
    /// `refetch_query` (spawned): always fetch, joining a fetch in flight.
    Refetch { key: usize },
    /// `set_query_data`.
    Set { key: usize },
    /// `update_query_data(|old| old + 1)` (no data: the updater returns `None`).
    Update { key: usize },
    /// `invalidate_queries(prefix)` (spawned: it waits for the refetches it starts).
    Invalidate { prefix: usize },
    /// `remove_queries(prefix)`.
    Remove { prefix: usize },
    /// `reset_queries(prefix)`.
    Reset { prefix: usize },
    /// `cancel_queries(prefix)`.
    Cancel { prefix: usize },
    /// A new listener on the key's observer.
    Subscribe { key: usize },
    /// Drops the key's newest listener.
    Unsubscribe { key: usize },
    /// Moves the paused clock, one second at a time.
    Advance { secs: u64 },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    let prefix = 0..PREFIXES.len();
    prop_oneof![
        8 => (key.clone(), any::<bool>(), 0_u64..=3)
            .prop_map(|(key, ok, delay)| Op::Fetch { key, ok, delay }),
        1 => key.clone().prop_map(|key| Op::Ensure { key }),
        1 => key.clone().prop_map(|key| Op::Refetch { key }),
        2 => key.clone().prop_map(|key| Op::Set { key }),
        1 => key.clone().prop_map(|key| Op::Update { key }),
        2 => prefix.clone().prop_map(|prefix| Op::Invalidate { prefix }),
        1 => prefix.clone().prop_map(|prefix| Op::Remove { prefix }),
        1 => prefix.clone().prop_map(|prefix| Op::Reset { prefix }),
        2 => prefix.prop_map(|prefix| Op::Cancel { prefix }),
        2 => key.clone().prop_map(|key| Op::Subscribe { key }),
        2 => key.prop_map(|key| Op::Unsubscribe { key }),
        5 => (1_u64..=4).prop_map(|secs| Op::Advance { secs }),
    ]
}

// ---------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Idle,
    Pending,
    Success,
    Error,
}

/// What a caller of `fetch_query` gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Data(u64),
    Failed,
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct MState {
    status: Status,
    fetching: bool,
    data: Option<u64>,
    error: bool,
    invalidated: bool,
    failure_count: u32,
}

impl MState {
    fn initial() -> Self {
        MState {
            status: Status::Idle,
            fetching: false,
            data: None,
            error: false,
            invalidated: false,
            failure_count: 0,
        }
    }
}

struct MEntry {
    state: MState,
    /// Monotonic time of the last data write (seconds).
    updated_at: Option<u64>,
    data_gen: u64,
    inval_gen: u64,
    flight: Option<usize>,
    observers: usize,
    /// The entry has seen the query's options (a typed call ran on it).
    has_options: bool,
    gc_deadline: Option<u64>,
}

impl MEntry {
    fn new() -> Self {
        MEntry {
            state: MState::initial(),
            updated_at: None,
            data_gen: 0,
            inval_gen: 0,
            flight: None,
            observers: 0,
            has_options: false,
            gc_deadline: None,
        }
    }

    fn fresh(&self, now: u64) -> bool {
        self.state.data.is_some()
            && !self.state.invalidated
            && self.updated_at.is_some_and(|at| now < at + STALE)
    }

    fn arm_gc_if_unused(&mut self, now: u64) {
        if self.observers == 0 && self.flight.is_none() {
            self.gc_deadline = Some(now + GC);
        }
    }

    /// A write of data: a fetch's success or a manual write.
    fn success(&mut self, data: u64, invalidated: bool, now: u64) {
        let s = &mut self.state;
        s.status = Status::Success;
        s.fetching = false;
        s.data = Some(data);
        s.error = false;
        s.failure_count = 0;
        s.invalidated = invalidated;
        self.updated_at = Some(now);
    }
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// The fetch function is running; it returns `ok`/`value` at `until`.
    Attempt {
        until: u64,
        ok: bool,
        value: u64,
    },
    /// Waiting to retry at `until`.
    Sleep {
        until: u64,
    },
    Done,
}

struct MFlight {
    key: usize,
    previous: MState,
    data_gen: u64,
    inval_gen: u64,
    failures: u32,
    phase: Phase,
    result: Option<Outcome>,
}

/// What the key's fetch function does when it is called.
#[derive(Clone, Copy, Debug)]
struct Script {
    ok: bool,
    delay: u64,
    token: u64,
}

/// The value a fetch attempt returns: which script made it, and when it started. Two
/// attempts of one key starting in the same second read the same script, so they return
/// the same value whatever order they run in.
fn fetch_value(token: u64, now: u64) -> u64 {
    token * 1_000 + now
}

#[derive(Default)]
struct MObserver {
    /// Live listeners.
    subs: usize,
    attached: bool,
}

#[derive(Clone, Copy, Debug)]
enum MCaller {
    Waiting(usize),
    Done(Outcome),
}

struct MInvalidate {
    count: usize,
    waits: Vec<usize>,
}

struct Model {
    now: u64,
    entries: BTreeMap<usize, MEntry>,
    flights: Vec<MFlight>,
    scripts: Vec<Script>,
    calls: Vec<u32>,
    fetches: u64,
    observers: Vec<MObserver>,
    callers: Vec<MCaller>,
    invalidations: Vec<MInvalidate>,
}

impl Model {
    fn new() -> Self {
        Model {
            now: 0,
            entries: BTreeMap::new(),
            flights: Vec::new(),
            scripts: vec![
                Script {
                    ok: true,
                    delay: 0,
                    token: 0
                };
                KEYS.len()
            ],
            calls: vec![0; KEYS.len()],
            fetches: 0,
            observers: (0..KEYS.len()).map(|_| MObserver::default()).collect(),
            callers: Vec::new(),
            invalidations: Vec::new(),
        }
    }

    fn entry(&mut self, key: usize) -> &mut MEntry {
        self.entries.entry(key).or_insert_with(MEntry::new)
    }

    fn is_current(&self, flight: usize) -> bool {
        let key = self.flights[flight].key;
        self.entries
            .get(&key)
            .is_some_and(|e| e.flight == Some(flight))
    }

    fn begin_flight(&mut self, key: usize) -> usize {
        let id = self.flights.len();
        let now = self.now;
        let e = self.entries.get_mut(&key).expect("entry");
        let previous = match e.flight {
            // A flight that replaces another goes back to where the first one began.
            Some(old) => self.flights[old].previous.clone(),
            None => e.state.clone(),
        };
        let flight = MFlight {
            key,
            previous,
            data_gen: e.data_gen,
            inval_gen: e.inval_gen,
            failures: 0,
            phase: Phase::Done,
            result: None,
        };
        e.state.fetching = true;
        e.state.failure_count = 0;
        if e.state.status == Status::Idle {
            e.state.status = Status::Pending;
        }
        e.flight = Some(id);
        e.gc_deadline = None;
        self.flights.push(flight);
        self.fetches += 1;
        self.start_attempt(id, now);
        id
    }

    fn start_attempt(&mut self, id: usize, now: u64) {
        let key = self.flights[id].key;
        self.calls[key] += 1;
        let s = self.scripts[key];
        let value = fetch_value(s.token, now);
        if s.delay == 0 {
            self.complete_attempt(id, s.ok, value);
        } else {
            self.flights[id].phase = Phase::Attempt {
                until: now + s.delay,
                ok: s.ok,
                value,
            };
        }
    }

    fn complete_attempt(&mut self, id: usize, ok: bool, value: u64) {
        if ok {
            self.settle(id, Outcome::Data(value));
            return;
        }
        self.flights[id].failures += 1;
        if self.is_current(id) {
            let key = self.flights[id].key;
            self.entries
                .get_mut(&key)
                .expect("entry")
                .state
                .failure_count += 1;
        }
        if self.flights[id].failures <= RETRIES {
            self.flights[id].phase = Phase::Sleep {
                until: self.now + RETRY_DELAY,
            };
        } else {
            self.settle(id, Outcome::Failed);
        }
    }

    fn settle(&mut self, id: usize, outcome: Outcome) {
        let now = self.now;
        if self.is_current(id) {
            let f = &self.flights[id];
            let (key, data_gen, inval_gen) = (f.key, f.data_gen, f.inval_gen);
            let previous = f.previous.clone();
            let e = self.entries.get_mut(&key).expect("entry");
            e.flight = None;
            match outcome {
                Outcome::Data(v) if e.data_gen == data_gen => {
                    let invalidated = e.inval_gen != inval_gen;
                    e.success(v, invalidated, now);
                }
                // A manual write landed during the fetch: it stays.
                Outcome::Data(_) => e.state.fetching = false,
                Outcome::Cancelled => {
                    // Only what the fetch itself changed goes back (status if still
                    // pending, failure bookkeeping); data written meanwhile and an
                    // invalidation made meanwhile both stand.
                    // (regressions.rs: cancel_after_a_manual_write_keeps_the_manual_write)
                    e.state.fetching = false;
                    if e.state.status == Status::Pending {
                        e.state.status = previous.status;
                    }
                    e.state.failure_count = previous.failure_count;
                }
                Outcome::Failed => {
                    e.state.status = Status::Error;
                    e.state.fetching = false;
                    e.state.error = true;
                }
            }
            e.arm_gc_if_unused(now);
        }
        let f = &mut self.flights[id];
        f.phase = Phase::Done;
        f.result = Some(outcome);
        for c in &mut self.callers {
            if matches!(c, MCaller::Waiting(w) if *w == id) {
                *c = MCaller::Done(outcome);
            }
        }
    }

    /// One second passes.
    fn tick(&mut self) {
        self.now += 1;
        let now = self.now;
        loop {
            let due = self.flights.iter().position(|f| match f.phase {
                Phase::Attempt { until, .. } | Phase::Sleep { until } => until == now,
                Phase::Done => false,
            });
            let Some(id) = due else { break };
            match self.flights[id].phase {
                Phase::Attempt { ok, value, .. } => {
                    self.flights[id].phase = Phase::Done;
                    self.complete_attempt(id, ok, value);
                }
                Phase::Sleep { .. } => {
                    self.flights[id].phase = Phase::Done;
                    self.start_attempt(id, now);
                }
                Phase::Done => unreachable!(),
            }
        }
        self.entries.retain(|_, e| {
            !(e.observers == 0 && e.flight.is_none() && e.gc_deadline.is_some_and(|d| d <= now))
        });
    }

    /// `fetch_query` (stale-while-revalidate).
    fn fetch(&mut self, key: usize) -> MCaller {
        let now = self.now;
        let e = self.entry(key);
        if e.has_options && e.fresh(now) {
            return MCaller::Done(Outcome::Data(e.state.data.expect("fresh")));
        }
        self.step(key)
    }

    /// `Entry::step` in `Swr` mode: what a caller (or an observer's first subscriber) gets.
    fn step(&mut self, key: usize) -> MCaller {
        let now = self.now;
        let e = self.entry(key);
        e.has_options = true;
        if let Some(data) = e.state.data {
            if !e.fresh(now) && e.flight.is_none() {
                self.begin_flight(key);
            }
            return MCaller::Done(Outcome::Data(data));
        }
        self.join_or_begin(key)
    }

    /// A fetch in flight to join, or a new one.
    fn join_or_begin(&mut self, key: usize) -> MCaller {
        let flight = match self.entry(key).flight {
            Some(f) => f,
            None => self.begin_flight(key),
        };
        match self.flights[flight].result {
            Some(outcome) => MCaller::Done(outcome),
            None => MCaller::Waiting(flight),
        }
    }

    fn write(&mut self, key: usize, value: u64) {
        let now = self.now;
        let e = self.entry(key);
        e.data_gen += 1;
        let fetching = e.flight.is_some();
        e.success(value, false, now);
        e.state.fetching = fetching;
        e.arm_gc_if_unused(now);
    }

    fn matching(&self, prefix: usize) -> Vec<usize> {
        self.entries
            .keys()
            .copied()
            .filter(|&k| under(k, prefix))
            .collect()
    }

    fn apply(&mut self, op: &Op, token: u64) {
        match *op {
            Op::Fetch { key, ok, delay } => {
                self.scripts[key] = Script { ok, delay, token };
                let c = self.fetch(key);
                self.callers.push(c);
            }
            Op::Ensure { key } => {
                let e = self.entry(key);
                e.has_options = true;
                let c = match e.state.data {
                    Some(data) => MCaller::Done(Outcome::Data(data)),
                    None => self.join_or_begin(key),
                };
                self.callers.push(c);
            }
            Op::Refetch { key } => {
                self.entry(key).has_options = true;
                let c = self.join_or_begin(key);
                self.callers.push(c);
            }
            Op::Set { key } => self.write(key, 1_000_000 + token),
            Op::Update { key } => {
                // The entry is created even when the updater writes nothing; it is then
                // collected like any unused entry.
                // (regressions.rs: a_no_op_update_on_a_missing_key_leaves_nothing_behind)
                let now = self.now;
                let e = self.entry(key);
                match e.state.data {
                    Some(old) => self.write(key, old + 1),
                    None if e.gc_deadline.is_none() => e.arm_gc_if_unused(now),
                    None => {}
                }
            }
            Op::Invalidate { prefix } => {
                let found = self.matching(prefix);
                let mut waits = Vec::new();
                for &k in &found {
                    let e = self.entries.get_mut(&k).expect("entry");
                    e.inval_gen += 1;
                    e.state.invalidated = true;
                    if e.observers > 0 && e.has_options {
                        // Observed: a new fetch replaces any fetch in flight.
                        waits.push(self.begin_flight(k));
                    }
                }
                self.invalidations.push(MInvalidate {
                    count: found.len(),
                    waits,
                });
            }
            Op::Remove { prefix } => {
                for k in self.matching(prefix) {
                    self.entries.remove(&k);
                    self.observers[k].attached = false;
                }
            }
            Op::Reset { prefix } => {
                let now = self.now;
                for k in self.matching(prefix) {
                    let e = self.entries.get_mut(&k).expect("entry");
                    e.data_gen += 1;
                    e.inval_gen += 1;
                    e.flight = None;
                    e.updated_at = None;
                    e.state = MState::initial();
                    e.arm_gc_if_unused(now);
                    if e.observers > 0 && e.has_options {
                        self.begin_flight(k);
                    }
                }
            }
            Op::Cancel { prefix } => {
                for k in self.matching(prefix) {
                    if let Some(f) = self.entries[&k].flight {
                        self.settle(f, Outcome::Cancelled);
                    }
                }
            }
            Op::Subscribe { key } => {
                self.observers[key].subs += 1;
                if !self.observers[key].attached {
                    self.observers[key].attached = true;
                    let e = self.entry(key);
                    e.observers += 1;
                    e.gc_deadline = None;
                    self.step(key);
                }
            }
            Op::Unsubscribe { key } => {
                let now = self.now;
                let o = &mut self.observers[key];
                if o.subs == 0 {
                    return;
                }
                o.subs -= 1;
                if o.subs == 0 && o.attached {
                    o.attached = false;
                    let e = self.entries.get_mut(&key).expect("attached entry");
                    e.observers -= 1;
                    e.arm_gc_if_unused(now);
                }
            }
            Op::Advance { secs } => {
                for _ in 0..secs {
                    self.tick();
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The system under test
// ---------------------------------------------------------------------------------------

/// A comparable view of a `QueryState<u64>`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    status: Status,
    fetching: bool,
    data: Option<u64>,
    error: bool,
    invalidated: bool,
    failure_count: u32,
}

impl Seen {
    fn of(s: &QueryState<u64>) -> Self {
        Seen {
            status: match s.status {
                QueryStatus::Idle => Status::Idle,
                QueryStatus::Pending => Status::Pending,
                QueryStatus::Success => Status::Success,
                QueryStatus::Error => Status::Error,
                other => unreachable!("a status the model does not know: {other:?}"),
            },
            fetching: s.fetch_status == FetchStatus::Fetching,
            data: s.data.as_deref().copied(),
            error: s.error.is_some(),
            invalidated: s.is_invalidated,
            failure_count: s.failure_count,
        }
    }

    fn of_model(s: &MState) -> Self {
        Seen {
            status: s.status,
            fetching: s.fetching,
            data: s.data,
            error: s.error,
            invalidated: s.invalidated,
            failure_count: s.failure_count,
        }
    }
}

type LastSeen = Arc<Mutex<Option<Seen>>>;

struct Sut {
    client: QueryClient,
    opts: Vec<QueryOptions<u64>>,
    scripts: Arc<Mutex<Vec<Script>>>,
    calls: Arc<Vec<AtomicU32>>,
    observers: Vec<QueryObserver<u64>>,
    subs: Vec<Vec<(Subscription, LastSeen)>>,
    callers: Vec<Task<Result<Arc<u64>, QueryError>>>,
    invalidations: Vec<Task<usize>>,
}

/// A spawned call, and its output once it finished.
enum Task<T> {
    Running(JoinHandle<T>),
    Finished(Result<T, String>),
}

impl<T> Task<T> {
    /// The output if the call has finished (kept: a handle is polled only once).
    fn output(&mut self) -> Option<&Result<T, String>> {
        if let Task::Running(h) = self {
            if !h.is_finished() {
                return None;
            }
            let out = h
                .now_or_never()
                .expect("finished")
                .map_err(|e| format!("panicked: {e}"));
            *self = Task::Finished(out);
        }
        match self {
            Task::Finished(out) => Some(out),
            Task::Running(_) => None,
        }
    }
}

impl Sut {
    fn new() -> Self {
        let client = QueryClient::builder()
            .stale_time(Duration::from_secs(STALE))
            .gc_time(Duration::from_secs(GC))
            .retry(RETRIES)
            .retry_delay(|_| Duration::from_secs(RETRY_DELAY))
            .build();
        let start = Instant::now();
        let scripts = Arc::new(Mutex::new(vec![
            Script {
                ok: true,
                delay: 0,
                token: 0
            };
            KEYS.len()
        ]));
        let calls: Arc<Vec<AtomicU32>> =
            Arc::new((0..KEYS.len()).map(|_| AtomicU32::new(0)).collect());
        let opts: Vec<QueryOptions<u64>> = (0..KEYS.len())
            .map(|k| {
                let scripts = scripts.clone();
                let calls = calls.clone();
                QueryOptions::new(query_key(KEYS[k]), move || {
                    calls[k].fetch_add(1, Ordering::SeqCst);
                    let s = scripts.lock().unwrap()[k];
                    let now = (Instant::now() - start).as_secs();
                    async move {
                        if s.delay > 0 {
                            tokio::time::sleep(Duration::from_secs(s.delay)).await;
                        }
                        if s.ok {
                            Ok(fetch_value(s.token, now))
                        } else {
                            Err(format!("script {} failed", s.token))
                        }
                    }
                })
            })
            .collect();
        let observers = opts.iter().map(|o| client.watch(o)).collect();
        Sut {
            client,
            opts,
            scripts,
            calls,
            observers,
            subs: (0..KEYS.len()).map(|_| Vec::new()).collect(),
            callers: Vec::new(),
            invalidations: Vec::new(),
        }
    }

    async fn apply(&mut self, op: &Op, token: u64) {
        {
            match *op {
                Op::Fetch { key, ok, delay } => {
                    self.scripts.lock().unwrap()[key] = Script { ok, delay, token };
                    let client = self.client.clone();
                    let opts = self.opts[key].clone();
                    let task = tokio::spawn(async move { client.fetch_query(&opts).await });
                    self.callers.push(Task::Running(task));
                }
                Op::Ensure { key } | Op::Refetch { key } => {
                    let client = self.client.clone();
                    let opts = self.opts[key].clone();
                    let ensure = matches!(op, Op::Ensure { .. });
                    let task = tokio::spawn(async move {
                        if ensure {
                            client.ensure_query_data(&opts).await
                        } else {
                            client.refetch_query(&opts).await
                        }
                    });
                    self.callers.push(Task::Running(task));
                }
                Op::Set { key } => self
                    .client
                    .set_query_data(query_key(KEYS[key]), 1_000_000 + token)
                    .unwrap(),
                Op::Update { key } => {
                    self.client
                        .update_query_data(query_key(KEYS[key]), |old: Option<&u64>| {
                            old.map(|v| v + 1)
                        })
                        .unwrap();
                }
                Op::Invalidate { prefix } => {
                    let client = self.client.clone();
                    let filter = QueryFilter::prefix(query_key(PREFIXES[prefix]));
                    let task = tokio::spawn(async move { client.invalidate_queries(filter).await });
                    self.invalidations.push(Task::Running(task));
                }
                Op::Remove { prefix } => {
                    self.client.remove_queries(query_key(PREFIXES[prefix]));
                }
                Op::Reset { prefix } => {
                    self.client.reset_queries(query_key(PREFIXES[prefix]));
                }
                Op::Cancel { prefix } => {
                    self.client
                        .cancel_queries(query_key(PREFIXES[prefix]))
                        .await;
                }
                Op::Subscribe { key } => {
                    let last: LastSeen = Arc::default();
                    let l = last.clone();
                    let sub = self.observers[key].subscribe(move |s: &QueryState<u64>| {
                        *l.lock().unwrap() = Some(Seen::of(s));
                    });
                    self.subs[key].push((sub, last));
                }
                Op::Unsubscribe { key } => {
                    self.subs[key].pop();
                }
                Op::Advance { secs } => {
                    for _ in 0..secs {
                        tokio::time::advance(Duration::from_secs(1)).await;
                        common::settle().await;
                    }
                }
            }
            common::settle().await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------------------

fn outcome_of(r: &Result<Arc<u64>, QueryError>) -> Outcome {
    match r {
        Ok(v) => Outcome::Data(**v),
        Err(QueryError::Cancelled) => Outcome::Cancelled,
        Err(QueryError::Fetch(_)) => Outcome::Failed,
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

fn compare(model: &Model, sut: &mut Sut) -> Result<(), String> {
    let now = model.now;
    let stats = sut.client.stats();
    if stats.entries != model.entries.len() {
        return Err(format!(
            "entries: client {} model {}",
            stats.entries,
            model.entries.len()
        ));
    }
    if stats.fetches != model.fetches {
        return Err(format!(
            "fetches started: client {} model {}",
            stats.fetches, model.fetches
        ));
    }
    for (k, key) in KEYS.iter().enumerate() {
        let calls = sut.calls[k].load(Ordering::SeqCst);
        if calls != model.calls[k] {
            return Err(format!(
                "key {k}: fetch function ran {calls} times, model {}",
                model.calls[k]
            ));
        }
        let state = sut.client.get_query_state::<u64>(&query_key(key));
        match (state, model.entries.get(&k)) {
            (None, None) => {}
            (Some(s), Some(e)) => {
                let (got, want) = (Seen::of(&s), Seen::of_model(&e.state));
                if got != want {
                    return Err(format!("key {k}: client {got:?}\n model {want:?}"));
                }
                if s.is_stale() == e.fresh(now) {
                    return Err(format!(
                        "key {k}: client stale={} model fresh={} (updated_at {:?}, now {now})",
                        s.is_stale(),
                        e.fresh(now),
                        e.updated_at
                    ));
                }
            }
            (s, e) => {
                return Err(format!(
                    "key {k}: client has entry {}, model {}",
                    s.is_some(),
                    e.is_some()
                ))
            }
        }
        // Observers: every live listener was told the newest state.
        let o = &model.observers[k];
        if sut.subs[k].len() != o.subs {
            return Err(format!(
                "key {k}: {} subs vs model {}",
                sut.subs[k].len(),
                o.subs
            ));
        }
        for (i, (_, last)) in sut.subs[k].iter().enumerate() {
            LISTENER_CHECKS.fetch_add(1, Ordering::Relaxed);
            let last = last.lock().unwrap().clone();
            let want = match (o.attached, model.entries.get(&k)) {
                (true, Some(e)) => Seen::of_model(&e.state),
                (true, None) => return Err(format!("key {k}: attached without an entry")),
                // Removed while observed: the last state told is the initial one.
                (false, _) => Seen::of_model(&MState::initial()),
            };
            if last.as_ref() != Some(&want) {
                return Err(format!(
                    "key {k}: listener {i} last saw {last:?}\n model {want:?}"
                ));
            }
        }
    }
    for (i, (task, want)) in sut.callers.iter_mut().zip(&model.callers).enumerate() {
        let got = task.output().map(|r| r.as_ref().map(outcome_of));
        let want = match want {
            MCaller::Waiting(_) => None,
            MCaller::Done(o) => Some(*o),
        };
        let agree = match (&got, want) {
            (None, None) => true,
            (Some(Ok(g)), Some(w)) => *g == w,
            _ => false,
        };
        if !agree {
            return Err(format!("caller {i}: client {got:?} model {want:?}"));
        }
    }
    for (i, (task, want)) in sut
        .invalidations
        .iter_mut()
        .zip(&model.invalidations)
        .enumerate()
    {
        let done = want
            .waits
            .iter()
            .all(|&f| model.flights[f].result.is_some());
        let got = task.output().cloned();
        let want = done.then_some(Ok(want.count));
        if got != want {
            return Err(format!("invalidate {i}: client {got:?} model {want:?}"));
        }
    }
    Ok(())
}

/// Runs one case on a fresh paused current-thread runtime. `Err` names the first step
/// where the client and the model disagree.
fn run_case(ops: &[Op]) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut model = Model::new();
        let mut sut = Sut::new();
        for (i, op) in ops.iter().enumerate() {
            let token = i as u64 + 1;
            model.apply(op, token);
            sut.apply(op, token).await;
            STEPS.fetch_add(1, Ordering::Relaxed);
            compare(&model, &mut sut)
                .map_err(|e| format!("after step {i} {op:?}: {e}\nops: {:?}", &ops[..=i]))?;
        }
        CASES.fetch_add(1, Ordering::Relaxed);
        CALLERS.fetch_add(model.callers.len() as u64, Ordering::Relaxed);
        FETCHES.fetch_add(model.fetches, Ordering::Relaxed);
        let cancelled = model
            .flights
            .iter()
            .filter(|f| f.result == Some(Outcome::Cancelled))
            .count();
        CANCELLED.fetch_add(cancelled as u64, Ordering::Relaxed);
        Ok(())
    })
}

fn config() -> Config {
    let cases = if deep() { 2_000 } else { 64 };
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/model.txt",
        ))),
        max_shrink_iters: 10_000,
        ..Config::default()
    }
}

#[test]
fn client_agrees_with_the_reference_model() {
    let len = if deep() { 1..120 } else { 1..50 };
    let mut runner = TestRunner::new(config());
    let result = runner.run(&proptest::collection::vec(op_strategy(), len), |ops| {
        run_case(&ops).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "model: {} cases (incl. shrinking), {} steps, {} callers checked, {} fetches, \
         {} cancelled, {} listener checks",
        get(&CASES),
        get(&STEPS),
        get(&CALLERS),
        get(&FETCHES),
        get(&CANCELLED),
        get(&LISTENER_CHECKS)
    );
}

/// The shrunk failures the model test found, replayed by name (the seeds in
/// `proptest-regressions/model.txt` only regenerate them while the op strategy is
/// unchanged). Each has a story test in `tests/regressions.rs`.
#[test]
fn shrunk_failures_stay_fixed() {
    let cases: &[(&str, &[Op])] = &[
        (
            "reattaching_an_observer_after_removal_tells_every_listener",
            &[
                Op::Subscribe { key: 2 },
                Op::Remove { prefix: 4 },
                Op::Fetch {
                    key: 2,
                    ok: false,
                    delay: 0,
                },
                Op::Subscribe { key: 2 },
            ],
        ),
        (
            "cancel_after_a_manual_write_keeps_the_manual_write",
            &[
                Op::Fetch {
                    key: 2,
                    ok: false,
                    delay: 0,
                },
                Op::Set { key: 2 },
                Op::Cancel { prefix: 4 },
            ],
        ),
        (
            "a_no_op_update_on_a_missing_key_leaves_nothing_behind",
            &[
                Op::Update { key: 0 },
                Op::Advance { secs: 4 },
                Op::Advance { secs: 4 },
                Op::Advance { secs: 3 },
            ],
        ),
    ];
    for (name, ops) in cases {
        if let Err(e) = run_case(ops) {
            panic!("{name}: {e}");
        }
    }
}
