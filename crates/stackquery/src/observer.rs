//! Reactive observers: [`QueryObserver`] watches one key, notifies listeners and streams,
//! polls while observed, and can transform the data with `select`.
//!
//! Delivery uses the crate's one notification primitive ([`crate::notify`]) twice. Entry →
//! observer: an entry change marks the observer's [`Drain`] pending, and whoever holds its
//! delivery slot computes the newest state (select runs once per change, not per
//! listener); a change that arrives meanwhile (even from a listener calling back into the
//! client) is picked up by the same loop before the slot is released. Observer →
//! listeners: each round hands its state to every listener by latest-value delivery. So
//! states arrive in order, the final state is never lost, a listener is never called
//! re-entrantly, and no internal lock is held while user code runs.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use futures::stream::{BoxStream, Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::engine::Shared;
use crate::entry::{Entry, EntryListener, Mode};
use crate::error::QueryError;
use crate::notify::{deliver, CowList, Drain, Listener, Versioned};
use crate::options::QueryOptions;
use crate::state::{FetchStatus, QueryState, QueryStatus};
use crate::subscription::Subscription;
use crate::user_code::contain;

mod poll;

type Selector<R, T> = dyn Fn(&Arc<R>) -> Arc<T> + Send + Sync;
type DataEq<T> = dyn Fn(&T, &T) -> bool + Send + Sync;
type SelectMemo<R, T> = Option<(Arc<R>, Result<Arc<T>, QueryError>)>;

/// Watches one query and tells listeners and streams about every change.
///
/// `T` is the type observers see; `R` the type stored in the cache (the same unless
/// [`select`](QueryObserver::select) transforms it). Cloning is cheap and clones share
/// subscribers.
///
/// An observer with at least one subscriber (listener or stream) pins its entry: it is
/// never evicted or collected. If its query is enabled it also makes the entry *active*:
/// `invalidate_queries`, `refetch_queries` and `reset_queries` refetch it at once, and a
/// `refetch_interval` polls it. A disabled query never fetches by itself (bulk operations
/// only mark it invalidated); [`refetch`](QueryObserver::refetch) still fetches it. When the
/// last subscriber leaves, the entry's gc timer starts (the largest `gc_time` asked for the
/// key wins).
///
/// Freshness is judged with the observer's own `stale_time`, and listeners get a new state
/// when the data turns stale (no other change needed).
///
/// If the entry is removed (`remove_queries`, `clear`, or the client dropped), listeners get
/// one last state (the initial one: idle, no data), streams end, and the observer detaches.
/// A later `subscribe`, `stream` or `refetch` attaches it to a new entry for the key.
///
/// ```
/// use stackquery::{key, QueryClient, QueryOptions};
/// use std::sync::{Arc, Mutex};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stackquery::QueryError> {
/// let client = QueryClient::new();
/// let opts = QueryOptions::new(key!["user", 1], || async { Ok::<_, String>("Ada".to_string()) });
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let s = seen.clone();
/// let observer = client.watch(&opts);
/// let sub = observer.subscribe(move |state| s.lock().unwrap().push(state.status));
/// observer.refetch().await?;
/// drop(sub);
/// let seen = seen.lock().unwrap();
/// // The first subscriber started the fetch, so the first state it saw was already pending.
/// assert_eq!(seen.first(), Some(&stackquery::QueryStatus::Pending));
/// assert_eq!(seen.last(), Some(&stackquery::QueryStatus::Success));
/// # Ok(()) }
/// ```
pub struct QueryObserver<T, R = T> {
    inner: Arc<ObserverInner<T, R>>,
}

impl<T, R> Clone for QueryObserver<T, R> {
    fn clone(&self) -> Self {
        QueryObserver {
            inner: self.inner.clone(),
        }
    }
}

impl<T, R> fmt::Debug for QueryObserver<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryObserver")
            .field("key", &self.inner.opts.lock().key)
            .field("paused", &self.inner.paused.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Attachment<R> {
    entry: Arc<Entry<R>>,
    handle: Arc<dyn EntryListener>,
}

struct Subscribers<T, R> {
    listeners: CowList<Arc<Listener<QueryState<T>>>>,
    /// Streams alive (they count as subscribers).
    streams: usize,
    attached: Option<Attachment<R>>,
    /// Polling is on: the observer's `Poll` timer is armed, or a poll's refetch runs and
    /// will arm it (see `poll.rs`).
    polling: bool,
    /// Latest state for streams; `None` ends them (entry removed).
    stream_tx: Option<watch::Sender<Option<QueryState<T>>>>,
}

impl<T, R> Subscribers<T, R> {
    fn count(&self) -> usize {
        self.listeners.len() + self.streams
    }
}

struct ObserverInner<T, R> {
    shared: Arc<Shared>,
    /// The query observed; [`QueryObserver::set_options`] replaces it.
    opts: Mutex<Arc<QueryOptions<R>>>,
    /// The data of the last key shown before `set_options` switched keys, shown as
    /// placeholder under `keep_previous_data` until the new key has data.
    previous: Mutex<Option<Arc<R>>>,
    select: Arc<Selector<R, T>>,
    data_eq: Arc<DataEq<T>>,
    paused: AtomicBool,
    subs: Mutex<Subscribers<T, R>>,
    /// Select memo: the raw data last seen and what it selected to.
    memo: Mutex<SelectMemo<R, T>>,
    /// Entry → observer: rounds of computing the state and handing it on (see the module
    /// docs).
    delivery: Drain,
    /// The state last computed, and its version (`None`: not computed yet).
    last: Mutex<Versioned<Option<QueryState<T>>>>,
    /// Id of this observer's `Poll` timer on the client's timer queue.
    poll_id: u64,
    weak_self: Weak<ObserverInner<T, R>>,
}

/// Forwards entry notifications to the observer without keeping it alive; knows the
/// entry it hooks (id and key), so a late removal notice from an entry the observer has
/// switched away from (`set_options`) is ignored.
struct EntryHook<T, R>(Weak<ObserverInner<T, R>>, u64, crate::key::QueryKey);

impl<T: Send + Sync + 'static, R: Send + Sync + 'static> EntryListener for EntryHook<T, R> {
    fn changed(&self) {
        if let Some(o) = self.0.upgrade() {
            o.deliver();
        }
    }
    fn removed(&self) {
        if let Some(o) = self.0.upgrade() {
            o.on_removed(self.1, &self.2);
        }
    }
}

impl<T: Send + Sync + 'static> QueryObserver<T> {
    /// An observer of `opts`'s key on the engine `shared` (see [`QueryClient::watch`]).
    ///
    /// [`QueryClient::watch`]: crate::QueryClient::watch
    pub(crate) fn new(shared: Arc<Shared>, opts: &QueryOptions<T>) -> Self {
        QueryObserver::build(
            shared,
            opts.clone(),
            Arc::new(|raw: &Arc<T>| raw.clone()),
            Arc::new(|a: &T, b: &T| std::ptr::eq(a, b)),
        )
    }
}

impl<T: Send + Sync + 'static, R: Send + Sync + 'static> QueryObserver<T, R> {
    fn build(
        shared: Arc<Shared>,
        opts: QueryOptions<R>,
        select: Arc<Selector<R, T>>,
        data_eq: Arc<DataEq<T>>,
    ) -> Self {
        let poll_id = shared.fresh_id();
        QueryObserver {
            inner: Arc::new_cyclic(|weak| ObserverInner {
                shared,
                opts: Mutex::new(Arc::new(opts)),
                previous: Mutex::new(None),
                select,
                data_eq,
                paused: AtomicBool::new(false),
                subs: Mutex::new(Subscribers {
                    listeners: CowList::default(),
                    streams: 0,
                    attached: None,
                    polling: false,
                    stream_tx: None,
                }),
                memo: Mutex::new(None),
                delivery: Drain::new(),
                last: Mutex::new(Versioned::new(None)),
                poll_id,
                weak_self: weak.clone(),
            }),
        }
    }

    /// A new observer of the same query that shows `f(data)` instead of the data. The raw
    /// data stays in the cache; `f` runs once per data change, and listeners are not called
    /// when the selected value is equal to the previous one. A panic in `f` becomes an
    /// error state for this observer only.
    pub fn select<S, F>(&self, f: F) -> QueryObserver<S, R>
    where
        S: PartialEq + Send + Sync + 'static,
        F: Fn(&T) -> S + Send + Sync + 'static,
    {
        let inner = self.inner.select.clone();
        QueryObserver::build(
            self.inner.shared.clone(),
            QueryOptions::clone(&self.inner.opts()),
            Arc::new(move |raw: &Arc<R>| Arc::new(f(&inner(raw)))),
            Arc::new(|a: &S, b: &S| a == b),
        )
    }

    /// The current state as this observer shows it (selected, placeholder, paused).
    pub fn state(&self) -> QueryState<T> {
        self.inner.ensure_timers();
        self.inner.compute().1
    }

    /// Calls `listener` at once with the current state, then on every change. The first
    /// subscriber attaches the observer and fetches if the data is missing or stale (and
    /// the query is enabled and the observer not paused).
    ///
    /// A panicking listener is caught and logged; other listeners still run.
    pub fn subscribe(
        &self,
        listener: impl Fn(&QueryState<T>) + Send + Sync + 'static,
    ) -> Subscription {
        let inner = &self.inner;
        inner.ensure_timers();
        // A panicking listener is contained (logged) by the notification primitive.
        let listener = Listener::new("listener", Box::new(listener));
        inner.subs.lock().listeners.push(listener.clone());
        // The subscription exists before any user code runs, so a listener that panics
        // on its first call still leaves a subscription that cleans up on drop.
        // The subscription holds the observer: `client.watch(&o).subscribe(f)` drops the
        // observer handle at once, and the subscription must still work and clean up.
        let owner = inner.clone();
        let l = listener.clone();
        let subscription = Subscription::new(move || owner.remove_listener(&l));
        inner.activate();
        // "At once": unless the activation's own notification already reached it.
        listener.offer(|| inner.compute());
        subscription
    }

    /// A stream of states with latest-value semantics: it yields the current state first,
    /// then changes; a slow consumer may skip states but always gets the newest. It ends when
    /// the entry is removed or the client is dropped. The stream counts as a subscriber.
    pub fn stream(&self) -> ObserverStream<T> {
        let inner = self.inner.clone();
        inner.ensure_timers();
        let rx = {
            let mut subs = inner.subs.lock();
            subs.streams += 1;
            let tx = subs.stream_tx.get_or_insert_with(|| watch::channel(None).0);
            tx.subscribe()
        };
        inner.activate();
        // Seed the stream with the current state.
        let (_, state) = inner.compute();
        inner.publish_to_streams(&state);
        let owner = inner.clone();
        let guard = StreamGuard(Some(Box::new(move || owner.remove_stream())));
        let stream =
            futures::stream::unfold((rx, guard, true), |(mut rx, guard, first)| async move {
                if !first && rx.changed().await.is_err() {
                    return None;
                }
                let state = rx.borrow_and_update().clone()?;
                Some((state, (rx, guard, false)))
            });
        ObserverStream {
            inner: stream.boxed(),
        }
    }

    /// Fetches now, even when the data is fresh or the query is disabled (joining a fetch
    /// already in flight), and returns the observer's state afterwards.
    ///
    /// # Errors
    /// The fetch's error, as for [`QueryClient::fetch_query`](crate::QueryClient::fetch_query).
    pub async fn refetch(&self) -> Result<QueryState<T>, QueryError> {
        self.inner.activate();
        let opts = self.inner.opts();
        self.inner.shared.run(&opts, Mode::Force).await?;
        Ok(self.state())
    }

    /// Switches the observer to `opts` (TanStack Query's `setOptions`): usually a new key
    /// (the next page, another id), or new settings for the same one. Subscribers stay;
    /// the observer leaves its entry (whose gc timer starts if nobody else uses it),
    /// joins the new key's (creating it), fetches it if its data is missing or stale (and
    /// the query is enabled, the observer not paused), and polls by the new options. The
    /// new state reaches listeners and streams as any change does; `select` stays.
    ///
    /// With [`keep_previous_data`](QueryOptions::keep_previous_data) on the new options,
    /// while the new key has no data the state shows the data shown before the switch
    /// (`status` `Success`, `is_placeholder_data`), until the new key's data arrives.
    /// Switching again before that keeps the older key's data.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stackquery::{key, QueryClient, QueryOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let client = QueryClient::new();
    /// let page = |n: u32| {
    ///     QueryOptions::new(key!["todos", n], move || async move {
    ///         tokio::time::sleep(Duration::from_secs(1)).await;
    ///         Ok::<_, String>(format!("page {n}"))
    ///     })
    ///     .keep_previous_data(true)
    /// };
    /// let observer = client.watch(&page(1));
    /// let _sub = observer.subscribe(|_| {});
    /// tokio::time::sleep(Duration::from_secs(2)).await;
    /// assert_eq!(observer.state().data.as_deref().map(String::as_str), Some("page 1"));
    ///
    /// observer.set_options(page(2));
    /// let state = observer.state(); // page 2 is loading: page 1 stays on screen
    /// assert_eq!(state.data.as_deref().map(String::as_str), Some("page 1"));
    /// assert!(state.is_placeholder_data);
    ///
    /// tokio::time::sleep(Duration::from_secs(2)).await;
    /// let state = observer.state();
    /// assert_eq!(state.data.as_deref().map(String::as_str), Some("page 2"));
    /// assert!(!state.is_placeholder_data);
    /// # }
    /// ```
    pub fn set_options(&self, opts: QueryOptions<R>) {
        let inner = &self.inner;
        inner.ensure_timers();
        // The data shown now is the previous data of the next key (a key with none keeps
        // the one before it).
        if let Ok(QueryState {
            data: Some(data), ..
        }) = inner.raw_state()
        {
            let replaced = inner.previous.lock().replace(data);
            drop(replaced); // user data is dropped outside the lock
        }
        let (left, replaced) = {
            let mut subs = inner.subs.lock();
            let replaced = std::mem::replace(&mut *inner.opts.lock(), Arc::new(opts));
            inner.stop_polling_locked(&mut subs);
            (subs.attached.take(), replaced)
        };
        drop(replaced); // the old options (user closures) are dropped outside the locks
        if let Some(a) = left {
            inner.shared.detach(&a.entry, &a.handle);
            inner
                .shared
                .cache
                .trim_after_release(&a.entry.key, a.entry.id);
            inner.shared.send_removals();
        }
        // With subscribers: join the new key, fetch, poll, deliver.
        inner.activate();
        inner.deliver();
    }

    /// Stops automatic fetching and polling; the state shows `FetchStatus::Paused` when no
    /// fetch is running.
    pub fn pause(&self) {
        self.inner.paused.store(true, Ordering::SeqCst);
        self.inner.deliver();
    }

    /// Resumes after [`pause`](Self::pause); with `refetch`, fetches at once if the data is
    /// missing or stale.
    pub fn resume(&self, refetch: bool) {
        self.inner.paused.store(false, Ordering::SeqCst);
        self.inner.deliver();
        if refetch {
            self.inner.auto_fetch();
        }
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.inner.paused.load(Ordering::SeqCst)
    }
}

impl<T: Send + Sync + 'static, R: Send + Sync + 'static> ObserverInner<T, R> {
    /// Polls and stale notices run on the client's timer driver; if the runtime it ran on
    /// has shut down, start it again on the current one (one atomic load otherwise).
    fn ensure_timers(&self) {
        self.shared.timers.ensure_driver();
    }

    /// Computes the observer's view and its version (bumped when the view changes).
    ///
    /// The user's equality runs with no lock held: the last state is read, compared outside
    /// the lock, and replaced only if nobody replaced it meanwhile (else compared again).
    fn compute(&self) -> (u64, QueryState<T>) {
        let raw = self.raw_state();
        let state = self.view(raw);
        loop {
            let (version, last) = self.last.lock().latest();
            if let Some(last) = last {
                if self.same(&last, &state) {
                    return (version, last);
                }
            }
            let mut slot = self.last.lock();
            if slot.version() != version {
                continue; // replaced while we compared: compare with the newer one
            }
            let replaced = slot.replace(Some(state.clone()));
            let version = slot.version();
            drop(slot);
            drop(replaced); // user data is dropped outside the lock too
            return (version, state);
        }
    }

    fn raw_state(&self) -> Result<QueryState<R>, QueryError> {
        let attached = self.subs.lock().attached.as_ref().map(|a| a.entry.clone());
        let shared = &self.shared;
        let opts = self.opts();
        let stale_time = shared.defaults.stale_time(&opts);
        let entry = match attached {
            Some(e) => e,
            None => match shared.cache.get(&opts.key) {
                None => return Ok(QueryState::default()),
                Some(e) => match e.into_any().downcast::<Entry<R>>() {
                    Ok(e) => e,
                    Err(_) => return Err(self.mismatch()),
                },
            },
        };
        Ok(entry.snapshot(Some(stale_time), self.shared.runtime.now()))
    }

    fn mismatch(&self) -> QueryError {
        let key = self.opts().key.clone();
        let stored = self.shared.cache.get(&key).map_or("?", |e| e.type_name());
        QueryError::type_mismatch(key.to_string(), stored, std::any::type_name::<R>())
    }

    /// Raw entry state → what this observer shows (select, placeholder, pause).
    fn view(&self, raw: Result<QueryState<R>, QueryError>) -> QueryState<T> {
        let raw = match raw {
            Ok(raw) => raw,
            Err(e) => return error_state(e),
        };
        let mut out = QueryState {
            status: raw.status,
            fetch_status: raw.fetch_status,
            data: None,
            error: raw.error.clone(),
            data_updated_at: raw.data_updated_at,
            error_updated_at: raw.error_updated_at,
            failure_count: raw.failure_count,
            failure_reason: raw.failure_reason.clone(),
            is_invalidated: raw.is_invalidated,
            is_placeholder_data: false,
            stale: raw.stale,
        };
        let opts = self.opts();
        let data = match (&raw.data, self.placeholder(&opts, raw.data.is_some())) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(p)) if raw.status != QueryStatus::Error => {
                out.is_placeholder_data = true;
                out.status = QueryStatus::Success;
                Some(p)
            }
            _ => None,
        };
        if let Some(d) = data {
            match self.selected(&d) {
                Ok(v) => out.data = Some(v),
                Err(e) => return error_state(e),
            }
        }
        if self.paused.load(Ordering::SeqCst) && out.fetch_status == FetchStatus::Idle {
            out.fetch_status = FetchStatus::Paused;
        }
        out
    }

    /// The data shown while the key has none: the previous key's (under
    /// `keep_previous_data`), else the query's placeholder. Once the key has data
    /// (`has_data`), the previous key's is let go.
    fn placeholder(&self, opts: &QueryOptions<R>, has_data: bool) -> Option<Arc<R>> {
        if opts.keeps_previous_data() {
            if has_data {
                let gone = self.previous.lock().take();
                drop(gone); // user data is dropped outside the lock
                return None;
            }
            if let Some(previous) = self.previous.lock().clone() {
                return Some(previous);
            }
        }
        opts.placeholder().cloned()
    }

    /// The options observed now (a reference-count bump).
    fn opts(&self) -> Arc<QueryOptions<R>> {
        self.opts.lock().clone()
    }

    /// Runs select once per distinct raw value (memoised by pointer). Select runs with no
    /// lock held, so it may call back into the observer or the client; two concurrent first
    /// computations of one value may both run it (the last result is kept).
    fn selected(&self, raw: &Arc<R>) -> Result<Arc<T>, QueryError> {
        if let Some((seen, out)) = &*self.memo.lock() {
            if Arc::ptr_eq(seen, raw) {
                return out.clone();
            }
        }
        let out = contain("select", || (self.select)(raw));
        let replaced = self.memo.lock().replace((raw.clone(), out.clone()));
        drop(replaced); // user data is dropped outside the lock
        out
    }

    /// Whether two views are the same (no notification). Runs the user's equality of the
    /// selected type (no lock held); a panic there counts as "changed".
    fn same(&self, a: &QueryState<T>, b: &QueryState<T>) -> bool {
        let meta_same = a.status == b.status
            && a.fetch_status == b.fetch_status
            && a.error.is_some() == b.error.is_some()
            && a.error_updated_at == b.error_updated_at
            && a.failure_count == b.failure_count
            && a.is_invalidated == b.is_invalidated
            && a.is_placeholder_data == b.is_placeholder_data
            && a.stale == b.stale;
        meta_same
            && match (&a.data, &b.data) {
                (Some(x), Some(y)) => {
                    Arc::ptr_eq(x, y)
                        || contain("PartialEq", || (self.data_eq)(x, y)).unwrap_or(false)
                }
                (None, None) => true,
                _ => false,
            }
    }

    /// Something changed: compute the newest state and hand it to listeners and streams
    /// (see the module docs). A round's listeners get its state as is: any later change
    /// runs another round.
    fn deliver(&self) {
        self.delivery.run(|| {
            let (version, state) = self.compute();
            let listeners = self.subs.lock().listeners.snapshot();
            deliver(&listeners, || (version, &state));
            self.publish_to_streams(&state);
        });
    }

    fn publish_to_streams(&self, state: &QueryState<T>) {
        let subs = self.subs.lock();
        if let Some(tx) = &subs.stream_tx {
            tx.send_replace(Some(state.clone()));
        }
    }

    /// Joins the entry for the key (creating it if needed) as an observer.
    fn attach(&self) {
        let Some(me) = self.weak_self.upgrade() else {
            return;
        };
        let opts = self.opts();
        let entry = match self.shared.typed_entry::<R>(&opts.key) {
            Ok(e) => e,
            Err(_) => return, // type mismatch: the state shows it
        };
        let hook = EntryHook(Arc::downgrade(&me), entry.id, entry.key.clone());
        let handle: Arc<dyn EntryListener> = Arc::new(hook);
        if !self.shared.attach(&entry, handle.clone(), &opts) {
            return;
        }
        let mut subs = self.subs.lock();
        // (Options switched meanwhile: the switch attaches to the new key itself.)
        if subs.count() == 0 || subs.attached.is_some() || !Arc::ptr_eq(&opts, &self.opts()) {
            drop(subs);
            self.shared.detach(&entry, &handle);
            return;
        }
        subs.attached = Some(Attachment { entry, handle });
    }

    /// With subscribers but no entry (first subscriber, or after a removal): attach, fetch
    /// if needed, start polling.
    fn activate(&self) {
        let need = {
            let subs = self.subs.lock();
            subs.count() > 0 && subs.attached.is_none()
        };
        if need {
            self.attach();
            self.auto_fetch();
            self.start_polling();
            self.deliver(); // listeners from before a removal see the new entry (regressions.rs)
        }
    }

    fn detach(&self) {
        let attachment = {
            let mut subs = self.subs.lock();
            if subs.count() > 0 {
                return;
            }
            self.stop_polling_locked(&mut subs);
            subs.attached.take()
        };
        if let Some(a) = attachment {
            self.shared.detach(&a.entry, &a.handle);
            self.shared
                .cache
                .trim_after_release(&a.entry.key, a.entry.id);
            self.shared.send_removals();
        }
    }

    fn remove_listener(&self, listener: &Arc<Listener<QueryState<T>>>) {
        listener.end();
        self.subs.lock().listeners.remove(listener);
        self.detach();
    }

    fn remove_stream(&self) {
        {
            let mut subs = self.subs.lock();
            subs.streams = subs.streams.saturating_sub(1);
        }
        self.detach();
    }

    /// The entry left the cache: last state to listeners, streams end, detach.
    fn on_removed(&self, id: u64, key: &crate::key::QueryKey) {
        let tx = {
            let mut subs = self.subs.lock();
            let other = match &subs.attached {
                Some(a) => a.entry.id != id,
                None => *key != self.opts().key,
            };
            if other {
                return; // an entry this observer switched away from
            }
            subs.attached = None;
            self.stop_polling_locked(&mut subs);
            subs.stream_tx.take()
        };
        if let Some(tx) = tx {
            tx.send_replace(None);
        }
        // Ended streams no longer count as subscribers.
        self.subs.lock().streams = 0;
        // The state is now computed from the cache, where the key is absent.
        self.deliver();
    }

    /// First subscriber: fetch if enabled, not paused, and the data is missing or stale.
    fn auto_fetch(&self) {
        let opts = self.opts();
        if !opts.enabled || self.paused.load(Ordering::SeqCst) {
            return;
        }
        let entry = match self.subs.lock().attached.as_ref() {
            Some(a) => a.entry.clone(),
            None => return,
        };
        // `Swr` starts a background fetch for missing or stale data and returns at once.
        if let Err(error) = self.shared.ask(&entry, &opts, Mode::Swr, false, None) {
            tracing::debug!(key = %opts.key, error = %crate::error::report(&error), "observer fetch did not start");
        }
    }
}

fn error_state<T>(e: QueryError) -> QueryState<T> {
    QueryState {
        status: QueryStatus::Error,
        error: Some(e.clone()),
        failure_reason: Some(e),
        ..QueryState::default()
    }
}

struct StreamGuard(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// The stream returned by [`QueryObserver::stream`].
pub struct ObserverStream<T> {
    inner: BoxStream<'static, QueryState<T>>,
}

impl<T> fmt::Debug for ObserverStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ObserverStream")
    }
}

impl<T> Stream for ObserverStream<T> {
    type Item = QueryState<T>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}
