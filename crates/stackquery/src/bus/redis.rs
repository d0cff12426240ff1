//! [`RedisBus`]: the invalidation bus on Redis pub/sub.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, PubSub};
use tokio::sync::broadcast;

use super::lost::{Digest, Lost};
use super::{BusEvent, BusMessage, BusMessageKind, InstanceId};
use crate::storage::redis_conn::{
    backend, bounded, connection_manager, with_retry, DEFAULT_CONNECT_TIMEOUT, DEFAULT_NAMESPACE,
    DEFAULT_TIMEOUT,
};
use crate::worker::Worker;
use crate::StorageError;

const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Events a subscriber may fall behind by. The ring is allocated up front, one slot per
/// event (about 100 bytes each: 1.6 MB), and a slot keeps its last event's key alive until
/// it is overwritten (keys are shared with the cache, so usually nothing more). At the bus's
/// worst case of roughly 200,000 messages/s arriving from Redis, that is 80 ms of a stalled
/// subscriber — a busy runtime's scheduling hiccup — where 1,024 was 5 ms.
const DEFAULT_CAPACITY: usize = 16_384;

/// An invalidation bus on Redis pub/sub (feature `redis`): every instance that shares a
/// namespace hears the [`BusMessage`]s the others publish, on the channel
/// `<namespace>:bus`.
///
/// - **Own messages are ignored**: each bus draws a random [`InstanceId`], stamps it on
///   what it publishes and drops what comes back with it.
/// - **A dedicated connection** carries the subscription (pub/sub connections can do
///   nothing else); a background task reads it and hands events to every
///   [`BusSubscription`]. The task ends when the last clone of the bus is dropped.
/// - **Outages**: when the subscription connection closes, or does not answer a `PING`
///   (every 5 s by default) within the timeout, the task reconnects with exponential
///   backoff (50 ms doubling to 1 s, jittered), subscribes again and emits
///   [`BusEvent::Reconnected`]: messages published meanwhile are lost, so the receiver
///   should treat what it holds in memory as possibly stale.
/// - [`publish`](Self::publish) goes through a reconnecting connection and is bounded by
///   the timeout (500 ms by default); while Redis is down it returns an error.
///
/// Cloning is cheap; clones share the id, the connections and the task.
///
/// # Examples
///
/// ```no_run
/// use stackquery::bus::{BusEvent, BusMessageKind, RedisBus};
/// use stackquery::{key, KeyScope};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stackquery::StorageError> {
/// let a = RedisBus::connect_namespaced("redis://127.0.0.1:6379", "myapp").await?;
/// let b = RedisBus::connect_namespaced("redis://127.0.0.1:6379", "myapp").await?;
/// let mut heard_by_b = b.subscribe();
///
/// a.publish(BusMessageKind::Invalidate { scope: KeyScope::Prefix(key!["user"]) }).await?;
/// match heard_by_b.recv().await {
///     Some(BusEvent::Message(msg)) => assert_eq!(msg.origin, a.instance_id()),
///     other => panic!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    id: InstanceId,
    channel: String,
    publisher: ConnectionManager,
    timeout: Duration,
    events: broadcast::Sender<Numbered>,
    digest: Arc<Mutex<Digest>>,
    health: Arc<Health>,
    listener: Arc<Listener>,
    /// The listener task; restarted on the current runtime if the runtime it ran on died.
    worker: Worker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.worker.abort();
    }
}

#[derive(Default)]
struct Health {
    connected: AtomicBool,
    reconnects: AtomicU64,
    lags: AtomicU64,
}

/// An event with its number in the listener's sequence (see [`Digest`]): what the channel
/// carries.
#[derive(Clone, Debug)]
struct Numbered {
    seq: u64,
    event: BusEvent,
}

/// What a subscription hands the client: an event, or a lag with what it may have cost.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// An event received in order.
    Event(BusEvent),
    /// `missed` events were lost; `lost` says which entries they may have changed.
    Lagged { missed: u64, lost: Lost },
}

/// Settings of a [`RedisBus`], made by [`RedisBus::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct RedisBusBuilder {
    url: String,
    namespace: String,
    timeout: Duration,
    connect_timeout: Duration,
    ping_interval: Duration,
    max_backoff: Duration,
    capacity: usize,
}

/// A receiver of [`BusEvent`]s, made by [`RedisBus::subscribe`]. Each subscription gets
/// every event from the moment it was made.
pub struct BusSubscription {
    rx: broadcast::Receiver<Numbered>,
    /// The number of the last event read (or skipped by a lag).
    read: u64,
    digest: Arc<Mutex<Digest>>,
    health: Arc<Health>,
}

impl RedisBus {
    /// Settings for a bus on the server at `url`.
    pub fn builder(url: impl Into<String>) -> RedisBusBuilder {
        RedisBusBuilder {
            url: url.into(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            max_backoff: DEFAULT_MAX_BACKOFF,
            capacity: DEFAULT_CAPACITY,
        }
    }

    /// Connects to the server at `url` and subscribes to `<namespace>:bus`, with the
    /// default settings otherwise: the same arguments as
    /// [`RedisStorage::connect_namespaced`](crate::RedisStorage::connect_namespaced).
    ///
    /// # Errors
    ///
    /// As [`RedisBusBuilder::connect`].
    pub async fn connect_namespaced(
        url: impl Into<String>,
        namespace: impl Into<String>,
    ) -> Result<Self, StorageError> {
        Self::builder(url).namespace(namespace).connect().await
    }

    /// Connects to the server at `url` and subscribes to `<namespace>:bus`.
    ///
    /// # Errors
    ///
    /// As [`RedisBusBuilder::connect`].
    #[deprecated(
        since = "0.1.0",
        note = "takes a namespace where `RedisStorage::connect` does not: use \
                `RedisBus::connect_namespaced(url, namespace)` (the same arguments) or \
                `RedisBus::builder(url).namespace(namespace).connect()`"
    )]
    pub async fn connect(
        url: impl Into<String>,
        namespace: impl Into<String>,
    ) -> Result<Self, StorageError> {
        Self::connect_namespaced(url, namespace).await
    }

    /// This bus's id, stamped on everything it publishes.
    pub fn instance_id(&self) -> InstanceId {
        self.inner.id
    }

    /// The pub/sub channel: `<namespace>:bus`.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Whether the subscription connection is up (false while reconnecting).
    pub fn is_connected(&self) -> bool {
        self.inner.health.connected.load(Ordering::Acquire)
    }

    /// How many times the subscription has been re-established since
    /// [`connect`](RedisBusBuilder::connect).
    pub fn reconnect_count(&self) -> u64 {
        self.inner.health.reconnects.load(Ordering::Acquire)
    }

    /// How many times a subscriber of this bus fell behind and lost events (each
    /// [`BusEvent::Lagged`] counts once). Should stay 0: a lag costs the subscriber's
    /// cache precision (see [`capacity`](RedisBusBuilder::capacity)).
    pub fn lag_count(&self) -> u64 {
        self.inner.health.lags.load(Ordering::Acquire)
    }

    /// Receives the events from now on: messages from other instances, and
    /// [`BusEvent::Reconnected`] after an outage. See [`BusSubscription::recv`].
    pub fn subscribe(&self) -> BusSubscription {
        self.keep_listening();
        // Under the digest's lock the listener cannot emit: the subscription starts exactly
        // after event `read`, so a later lag knows where its loss began.
        let digest = self.inner.digest.lock();
        BusSubscription {
            rx: self.inner.events.subscribe(),
            read: digest.seq(),
            digest: Arc::clone(&self.inner.digest),
            health: Arc::clone(&self.inner.health),
        }
    }

    /// Restarts the listener task on the current runtime if the runtime it ran on has shut
    /// down (a bus that outlives its runtime). The new task subscribes again and emits
    /// [`BusEvent::Reconnected`]: messages sent while nobody listened are lost. One atomic
    /// load while the task runs.
    pub(crate) fn keep_listening(&self) {
        let listener = self.inner.listener.clone();
        self.inner.worker.ensure(move |running| async move {
            let _running = running;
            listener.run(None).await;
        });
    }

    /// Publishes `kind` to every other instance, stamped with this bus's id.
    ///
    /// Delivery is at most once: an instance that is disconnected at that moment misses
    /// the message (and will see [`BusEvent::Reconnected`]).
    ///
    /// # Errors
    ///
    /// [`StorageError::Timeout`] when the server has not acknowledged within the timeout,
    /// [`StorageError::Backend`] when the connection is down. The message may or may not
    /// have been sent.
    pub async fn publish(&self, kind: BusMessageKind) -> Result<(), StorageError> {
        self.keep_listening();
        let payload = BusMessage::new(self.inner.id, kind).encode();
        let cmd = redis::cmd("PUBLISH")
            .arg(&self.inner.channel)
            .arg(payload)
            .clone();
        // A repeat after a lost connection may deliver a message twice: harmless, every
        // kind is idempotent.
        with_retry(self.inner.timeout, || {
            let mut conn = self.inner.publisher.clone();
            let cmd = &cmd;
            async move { cmd.exec_async(&mut conn).await }
        })
        .await
    }
}

impl fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBus")
            .field("instance_id", &self.inner.id)
            .field("channel", &self.inner.channel)
            .field("connected", &self.is_connected())
            .field("reconnects", &self.reconnect_count())
            .finish_non_exhaustive()
    }
}

impl RedisBusBuilder {
    /// The namespace shared with the other instances (default `stackquery`): the channel
    /// is `<namespace>:bus`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The deadline of a publish and of a liveness `PING` (default 500 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The deadline of a connection and subscription attempt (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How often the subscription connection is checked with a `PING` (default 5 s), so
    /// that a connection that went silent without closing is replaced too. `Duration::MAX`
    /// (or anything past the clock's range) means never.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The longest wait between two reconnection attempts (default 1 s).
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff.max(FIRST_BACKOFF);
        self
    }

    /// How many events a slow subscriber may fall behind before it gets
    /// [`BusEvent::Lagged`] (default 16,384: about 1.6 MB allocated up front, one slot of
    /// about 100 bytes per event; at 200,000 messages/s, 80 ms of a stalled subscriber).
    ///
    /// A client that lags marks stale only the entries the lost events may have changed
    /// (the bus remembers their scopes), so a lag costs precision, not correctness.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Connects the publishing connection, subscribes the listening one, and starts the
    /// background task (on the current tokio runtime). When this returns, messages that
    /// other instances publish are received.
    ///
    /// # Errors
    ///
    /// [`StorageError::Backend`] for a malformed url or a server that refuses the
    /// connection; [`StorageError::Timeout`] when connecting or subscribing takes longer
    /// than the connect timeout.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn connect(self) -> Result<RedisBus, StorageError> {
        let client = redis::Client::open(self.url.as_str()).map_err(backend)?;
        let channel = format!("{}:bus", self.namespace);
        let publisher = connection_manager(&self.url, self.connect_timeout).await?;
        let pubsub = subscribe(&client, &channel, self.connect_timeout).await?;
        let (events, _) = broadcast::channel(self.capacity);
        let digest = Arc::new(Mutex::new(Digest::default()));
        let health = Arc::new(Health::default());
        health.connected.store(true, Ordering::Release);
        let id = InstanceId::random();
        let listener = Arc::new(Listener {
            client,
            channel: channel.clone(),
            id,
            events: events.clone(),
            digest: Arc::clone(&digest),
            health: Arc::clone(&health),
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
            ping_interval: self.ping_interval,
            max_backoff: self.max_backoff,
        });
        let worker = Worker::default();
        let first = listener.clone();
        worker.ensure(move |running| async move {
            let _running = running;
            first.run(Some(pubsub)).await;
        });
        Ok(RedisBus {
            inner: Arc::new(Inner {
                id,
                channel,
                publisher,
                timeout: self.timeout,
                events,
                digest,
                health,
                listener,
                worker,
            }),
        })
    }
}

impl BusSubscription {
    /// The next event; `None` once the bus has been dropped.
    ///
    /// A subscriber that falls more than the [capacity](RedisBusBuilder::capacity) behind
    /// gets [`BusEvent::Lagged`] with the number of events it missed, then the newest ones.
    pub async fn recv(&mut self) -> Option<BusEvent> {
        let next = self.rx.recv().await;
        self.take(next)
    }

    /// The next event if one is ready, without waiting: `None` when none is (or the bus
    /// has been dropped). Lets a subscriber drain a burst in one go after a
    /// [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Option<BusEvent> {
        let next = self.try_next()?;
        self.take(next)
    }

    /// As [`recv`](Self::recv), with what a lag may have cost.
    pub(crate) async fn recv_incoming(&mut self) -> Option<Incoming> {
        let next = self.rx.recv().await;
        self.incoming(next, true)
    }

    /// As [`try_recv`](Self::try_recv), with what a lag may have cost.
    pub(crate) fn try_recv_incoming(&mut self) -> Option<Incoming> {
        let next = self.try_next()?;
        self.incoming(next, true)
    }

    /// `try_recv` in `recv`'s terms; `None`: nothing ready.
    fn try_next(&mut self) -> Option<Result<Numbered, broadcast::error::RecvError>> {
        use broadcast::error::{RecvError, TryRecvError};
        match self.rx.try_recv() {
            Ok(numbered) => Some(Ok(numbered)),
            Err(TryRecvError::Lagged(missed)) => Some(Err(RecvError::Lagged(missed))),
            Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
            Err(TryRecvError::Empty) => None,
        }
    }

    /// The public view: a lag is only a count (nobody asks the digest).
    fn take(&mut self, next: Result<Numbered, broadcast::error::RecvError>) -> Option<BusEvent> {
        match self.incoming(next, false)? {
            Incoming::Event(event) => Some(event),
            Incoming::Lagged { missed, .. } => Some(BusEvent::Lagged(missed)),
        }
    }

    /// Tracks the sequence; on a lag, asks the digest (when `want_lost`) what events after
    /// the last one read may have changed, before it forgets more.
    fn incoming(
        &mut self,
        next: Result<Numbered, broadcast::error::RecvError>,
        want_lost: bool,
    ) -> Option<Incoming> {
        match next {
            Ok(numbered) => {
                self.read = numbered.seq;
                Some(Incoming::Event(numbered.event))
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                self.health.lags.fetch_add(1, Ordering::AcqRel);
                let lost = if want_lost {
                    self.digest.lock().since(self.read)
                } else {
                    Lost::Everything
                };
                // The channel skipped the `missed` oldest events: the next one read is
                // numbered after them (it sets `read` itself anyway).
                self.read = self.read.saturating_add(missed);
                Some(Incoming::Lagged { missed, lost })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The events as a stream, ending when the bus is dropped.
    pub fn into_stream(self) -> impl Stream<Item = BusEvent> + Send + 'static {
        futures::stream::unfold(self, |mut sub| async move {
            sub.recv().await.map(|event| (event, sub))
        })
    }
}

impl fmt::Debug for BusSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusSubscription")
            .field("pending", &self.rx.len())
            .field("read", &self.read)
            .finish()
    }
}

/// Opens a pub/sub connection and subscribes it to `channel`, within `limit`.
async fn subscribe(
    client: &redis::Client,
    channel: &str,
    limit: Duration,
) -> Result<PubSub, StorageError> {
    bounded(limit, async {
        let mut pubsub = client.get_async_pubsub().await.map_err(backend)?;
        pubsub.subscribe(channel).await.map_err(backend)?;
        Ok(pubsub)
    })
    .await
}

/// The background task: reads the subscription, and replaces it when it is lost.
struct Listener {
    client: redis::Client,
    channel: String,
    id: InstanceId,
    events: broadcast::Sender<Numbered>,
    digest: Arc<Mutex<Digest>>,
    health: Arc<Health>,
    timeout: Duration,
    connect_timeout: Duration,
    ping_interval: Duration,
    max_backoff: Duration,
}

impl Listener {
    /// Listens on `pubsub`; without one (a restart after the previous task's runtime
    /// died), subscribes first and reports [`BusEvent::Reconnected`].
    async fn run(&self, pubsub: Option<PubSub>) {
        let mut pubsub = match pubsub {
            Some(p) => p,
            None => {
                let p = self.reconnect().await;
                self.health.reconnects.fetch_add(1, Ordering::AcqRel);
                self.health.connected.store(true, Ordering::Release);
                self.emit(BusEvent::Reconnected);
                p
            }
        };
        loop {
            self.listen(pubsub).await;
            self.health.connected.store(false, Ordering::Release);
            tracing::warn!(channel = %self.channel, "stackquery bus: connection lost, reconnecting");
            pubsub = self.reconnect().await;
            self.health.reconnects.fetch_add(1, Ordering::AcqRel);
            self.health.connected.store(true, Ordering::Release);
            tracing::info!(channel = %self.channel, "stackquery bus: resubscribed");
            self.emit(BusEvent::Reconnected);
        }
    }

    /// Delivers messages until the connection closes or stops answering pings.
    async fn listen(&self, pubsub: PubSub) {
        let (mut sink, mut stream) = pubsub.split();
        // The ping interval is user-given: `Instant + interval` (and `tokio::time::interval`)
        // would panic past the clock's range, killing the listener task and with it every
        // invalidation. `None` ("never") sends no pings at all.
        let mut next_ping = crate::deadline::after(self.ping_interval);
        loop {
            let due = next_ping;
            let ping_due = async move {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // `futures`' select (tokio's `select!` needs its `macros` feature, which the
            // library does not force on users). It polls its first future first: the ping
            // goes first so that a steady flood of messages cannot starve it.
            let ping_due = std::pin::pin!(ping_due);
            match futures::future::select(ping_due, stream.next()).await {
                Either::Right((msg, _)) => match msg {
                    Some(msg) => self.deliver(msg.get_payload_bytes()),
                    None => return,
                },
                Either::Left(((), _)) => {
                    let pong =
                        tokio::time::timeout(self.timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::warn!(channel = %self.channel, "stackquery bus: ping failed");
                        return;
                    }
                    // Measured from the pong, like `MissedTickBehavior::Delay`.
                    next_ping = crate::deadline::after(self.ping_interval);
                }
            }
        }
    }

    fn deliver(&self, payload: &[u8]) {
        match BusMessage::decode(payload) {
            Ok(msg) if msg.origin == self.id => {}
            Ok(msg) => self.emit(BusEvent::Message(msg)),
            Err(err) => {
                tracing::debug!(channel = %self.channel, error = %crate::error::report(&err), "stackquery bus: skipped a message");
            }
        }
    }

    /// Numbers `event`, records its scope in the digest and sends it to the subscribers.
    /// All three under the digest's lock, so numbers follow the channel's order and a new
    /// subscriber starts at a known number.
    fn emit(&self, event: BusEvent) {
        let mut digest = self.digest.lock();
        let seq = digest.record(&event);
        // No receiver is not an error: nobody listens yet.
        let _ = self.events.send(Numbered { seq, event });
    }

    /// Tries to subscribe again until it works, with jittered exponential backoff.
    async fn reconnect(&self) -> PubSub {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match subscribe(&self.client, &self.channel, self.connect_timeout).await {
                Ok(pubsub) => return pubsub,
                Err(err) => {
                    tracing::debug!(channel = %self.channel, error = %crate::error::report(&err), "stackquery bus: reconnect failed");
                }
            }
            // Jittered so that instances cut off together do not reconnect in lockstep.
            tokio::time::sleep(crate::random::jittered(backoff)).await;
            // Saturating: `max_backoff` is user-given and may be `Duration::MAX`.
            backoff = backoff.saturating_mul(2).min(self.max_backoff);
        }
    }
}
