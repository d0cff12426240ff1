//! [`RedisBus`]: the invalidation bus on Redis pub/sub.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use redis::aio::{ConnectionManager, PubSub};
use tokio::sync::broadcast;

use super::{BusEvent, BusMessage, BusMessageKind, InstanceId};
use crate::storage::redis::{
    backend, bounded, connection_manager, with_retry, DEFAULT_CONNECT_TIMEOUT, DEFAULT_NAMESPACE,
    DEFAULT_TIMEOUT,
};
use crate::worker::Worker;
use crate::StorageError;

const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const DEFAULT_CAPACITY: usize = 1024;

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
/// use stackquery::key;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stackquery::StorageError> {
/// let a = RedisBus::connect("redis://127.0.0.1:6379", "myapp").await?;
/// let b = RedisBus::connect("redis://127.0.0.1:6379", "myapp").await?;
/// let mut heard_by_b = b.subscribe();
///
/// a.publish(BusMessageKind::Invalidate { key: key!["user"], exact: false }).await?;
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
    events: broadcast::Sender<BusEvent>,
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
    rx: broadcast::Receiver<BusEvent>,
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
    /// default settings.
    ///
    /// # Errors
    ///
    /// As [`RedisBusBuilder::connect`].
    pub async fn connect(
        url: impl Into<String>,
        namespace: impl Into<String>,
    ) -> Result<Self, StorageError> {
        Self::builder(url).namespace(namespace).connect().await
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

    /// Receives the events from now on: messages from other instances, and
    /// [`BusEvent::Reconnected`] after an outage. See [`BusSubscription::recv`].
    pub fn subscribe(&self) -> BusSubscription {
        self.keep_listening();
        BusSubscription {
            rx: self.inner.events.subscribe(),
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
    /// [`BusEvent::Lagged`] (default 1024).
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
        let health = Arc::new(Health::default());
        health.connected.store(true, Ordering::Release);
        let id = InstanceId::random();
        let listener = Arc::new(Listener {
            client,
            channel: channel.clone(),
            id,
            events: events.clone(),
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
        match self.rx.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(BusEvent::Lagged(missed)),
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
    events: broadcast::Sender<BusEvent>,
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
                let _ = self.events.send(BusEvent::Reconnected);
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
            // No receiver is not an error: nobody listens yet.
            let _ = self.events.send(BusEvent::Reconnected);
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
            let ping_due = async {
                match next_ping {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(msg) => self.deliver(msg.get_payload_bytes()),
                    None => return,
                },
                () = ping_due => {
                    let pong = tokio::time::timeout(self.timeout, sink.ping::<redis::Value>()).await;
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
            Ok(msg) => {
                let _ = self.events.send(BusEvent::Message(msg));
            }
            Err(err) => {
                tracing::debug!(channel = %self.channel, %err, "stackquery bus: skipped a message");
            }
        }
    }

    /// Tries to subscribe again until it works, with jittered exponential backoff.
    async fn reconnect(&self) -> PubSub {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match subscribe(&self.client, &self.channel, self.connect_timeout).await {
                Ok(pubsub) => return pubsub,
                Err(err) => {
                    tracing::debug!(channel = %self.channel, %err, "stackquery bus: reconnect failed");
                }
            }
            // Jittered so that instances cut off together do not reconnect in lockstep.
            tokio::time::sleep(crate::random::jittered(backoff)).await;
            // Saturating: `max_backoff` is user-given and may be `Duration::MAX`.
            backoff = backoff.saturating_mul(2).min(self.max_backoff);
        }
    }
}
