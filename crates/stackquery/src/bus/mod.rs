//! Coordination between instances that share a cache (feature `redis`).
//!
//! - [`RedisBus`]: an invalidation bus on Redis pub/sub. Each instance publishes what it
//!   changed ([`BusMessage`]) and hears what the others changed ([`BusEvent`]); it never
//!   hears itself. After a connection loss it reconnects, resubscribes and says so with
//!   [`BusEvent::Reconnected`], since messages may have been lost meanwhile.
//! - [`RedisLeases`]: cluster-wide leases (`SET NX PX` with a random token, released only by
//!   their holder) so that one instance fetches a cold key while the others wait.
//!
//! Both live under the same namespace as a [`RedisStorage`](crate::storage::RedisStorage):
//! the bus channel is `<namespace>:bus` and a lease on `key` is `<namespace>:lease:<key>`.
//!
//! # Wire format (public, stable)
//!
//! [`BusMessage`], [`BusMessageKind`], [`InstanceId`] and [`BusMessage::encode`] /
//! [`BusMessage::decode`] are public on purpose: the bus is a Redis channel that anything
//! may publish to or listen on, and these types are its contract. [`RedisBus::publish`]
//! lets an application (or a job that has no `QueryClient`, e.g. a batch import) tell
//! every client that keys changed; `encode`/`decode` let a process that does not use
//! [`RedisBus`] — another language, a script, a test — speak the same protocol through
//! any Redis client. The format is versioned by [`WIRE_VERSION`] and changes only in
//! compatible ways (new fields that old readers ignore, new kinds that old readers skip);
//! an incompatible change would take a new version number and a CHANGELOG entry.
//!
//! A message is a JSON object (unknown fields are ignored, unknown kinds are skipped by
//! older receivers). Keys travel as their `Display` text; a [`KeyScope`] is written as a
//! `key` and a flag — `exact` for an invalidation, `prefix` for a removal (the two flags
//! are opposite ways of saying the same thing, kept so that every version reads every
//! other's messages); `All` is the empty key `[]` as a prefix:
//!
//! ```text
//! {"v":1,"origin":"<32 hex digits>","kind":"invalidate","key":"[\"user\"]","exact":false}
//! {"v":1,"origin":"…","kind":"set","key":"[\"user\",1]"}
//! {"v":1,"origin":"…","kind":"remove","key":"[\"user\"]","prefix":true}
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{KeyScope, QueryKey, StorageError};

pub(crate) mod lost;
pub(crate) mod outbox;
mod redis;

pub(crate) use self::redis::Incoming;
pub use self::redis::{BusSubscription, RedisBus, RedisBusBuilder};
pub use crate::lease::{LeaseToken, RedisLeases};

/// The wire format's version, written in every message as `"v"`.
pub const WIRE_VERSION: u32 = 1;

/// Who sent a [`BusMessage`]: a random 128-bit id drawn once per bus, so an instance can
/// recognise (and ignore) its own messages.
///
/// Displayed (and sent) as 32 lowercase hex digits.
///
/// ```
/// use stackquery::bus::InstanceId;
/// let id = InstanceId::random();
/// assert_ne!(id, InstanceId::random());
/// assert_eq!(id.to_string().len(), 32);
/// assert_eq!(id.to_string().parse::<InstanceId>(), Ok(id));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(u128);

impl InstanceId {
    /// A fresh random id (from the standard library's randomly seeded hasher, the clock,
    /// the process id and a counter).
    pub fn random() -> Self {
        InstanceId(crate::random::u128())
    }

    /// The id as a number.
    pub fn as_u128(self) -> u128 {
        self.0
    }
}

impl From<u128> for InstanceId {
    fn from(id: u128) -> Self {
        InstanceId(id)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({self})")
    }
}

/// The text was not 32 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("an instance id is 32 hex digits")]
pub struct ParseInstanceIdError;

impl FromStr for InstanceId {
    type Err = ParseInstanceIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseInstanceIdError);
        }
        u128::from_str_radix(text, 16)
            .map(InstanceId)
            .map_err(|_| ParseInstanceIdError)
    }
}

/// A change one instance made that the others should know about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusMessage {
    /// The instance that made the change.
    pub origin: InstanceId,
    /// What changed.
    pub kind: BusMessageKind,
}

/// What a [`BusMessage`] says happened. Keys travel as their `Display` text, so prefix
/// filters work across instances.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusMessageKind {
    /// `invalidate_queries`: the entries in `scope` are stale.
    Invalidate {
        /// The keys invalidated (a key-only filter's scope, or one exact key per entry).
        scope: KeyScope,
    },
    /// `set_query_data`: `key` has new data, written to the shared tier.
    Set {
        /// The entry's key.
        key: QueryKey,
    },
    /// `remove_queries`: the entries in `scope` are gone.
    Remove {
        /// The keys removed (a key-only filter's scope, or one exact key per entry).
        scope: KeyScope,
    },
}

impl BusMessage {
    /// A message from `origin`.
    pub fn new(origin: InstanceId, kind: BusMessageKind) -> Self {
        BusMessage { origin, kind }
    }

    /// The message as JSON bytes (see the [module docs](self) for the format).
    ///
    /// ```
    /// use stackquery::bus::{BusMessage, BusMessageKind, InstanceId};
    /// use stackquery::{key, KeyScope};
    ///
    /// let msg = BusMessage::new(
    ///     InstanceId::from(7),
    ///     BusMessageKind::Invalidate { scope: KeyScope::prefix(key!["user"]) },
    /// );
    /// let bytes = msg.encode();
    /// assert_eq!(
    ///     std::str::from_utf8(&bytes).unwrap(),
    ///     r#"{"v":1,"origin":"00000000000000000000000000000007","kind":"invalidate","key":"[\"user\"]","exact":false}"#
    /// );
    /// assert_eq!(BusMessage::decode(&bytes).unwrap(), msg);
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        let body = match &self.kind {
            BusMessageKind::Invalidate { scope } => {
                let (key, exact) = wire_scope(scope);
                WireBody::Invalidate { key, exact }
            }
            BusMessageKind::Set { key } => WireBody::Set {
                key: key.to_string(),
            },
            BusMessageKind::Remove { scope } => {
                let (key, exact) = wire_scope(scope);
                WireBody::Remove {
                    key,
                    prefix: !exact,
                }
            }
        };
        let wire = Wire {
            v: WIRE_VERSION,
            origin: self.origin.to_string(),
            body,
        };
        // A struct of strings and booleans always serializes.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Reads a message written by [`encode`](Self::encode).
    ///
    /// # Errors
    ///
    /// [`StorageError::Corrupt`] for bytes that are not such a message: not JSON, a missing
    /// field, an unknown kind (from a newer sender), a bad origin or key.
    pub fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        let wire: Wire = serde_json::from_slice(bytes)
            .map_err(|e| StorageError::Corrupt(format!("bus message: {e}")))?;
        let origin = wire
            .origin
            .parse::<InstanceId>()
            .map_err(|e| StorageError::Corrupt(format!("bus message origin: {e}")))?;
        let parse_key = |text: &str| {
            text.parse::<QueryKey>()
                .map_err(|e| StorageError::Corrupt(format!("bus message key: {e}")))
        };
        let kind = match wire.body {
            WireBody::Invalidate { key, exact } => BusMessageKind::Invalidate {
                scope: scope_of_wire(parse_key(&key)?, exact),
            },
            WireBody::Set { key } => BusMessageKind::Set {
                key: parse_key(&key)?,
            },
            WireBody::Remove { key, prefix } => BusMessageKind::Remove {
                scope: scope_of_wire(parse_key(&key)?, !prefix),
            },
        };
        Ok(BusMessage { origin, kind })
    }
}

/// What a [`BusSubscription`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusEvent {
    /// A message from another instance.
    Message(BusMessage),
    /// The bus lost its connection and has subscribed again: messages sent in between are
    /// lost, so everything in memory may be stale.
    Reconnected,
    /// This subscriber fell behind and this many messages were dropped for it. A client
    /// on the bus marks stale only what they may have changed: the bus remembers the
    /// scopes of recent messages (exact keys, then first key parts, then everything).
    Lagged(u64),
}

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u32,
    origin: String,
    #[serde(flatten)]
    body: WireBody,
}

/// A scope as the wire writes it: the key's text, and whether only that key is meant
/// (`All` is the empty key, not exact).
fn wire_scope(scope: &KeyScope) -> (String, bool) {
    match scope {
        KeyScope::All => ("[]".to_owned(), false),
        KeyScope::Prefix(key) => (key.to_string(), false),
        KeyScope::Exact(key) => (key.to_string(), true),
    }
}

/// The scope a wire key and flag name (the empty key as a prefix is `All`).
fn scope_of_wire(key: QueryKey, exact: bool) -> KeyScope {
    if exact {
        KeyScope::Exact(key)
    } else {
        KeyScope::prefix(key)
    }
}

/// The body of a wire message. The flags of `invalidate` (`exact`) and `remove` (`prefix`)
/// have opposite polarity for historical reasons; only [`wire_scope`] and
/// [`scope_of_wire`] deal with them.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WireBody {
    Invalidate { key: String, exact: bool },
    Set { key: String },
    Remove { key: String, prefix: bool },
}

#[cfg(test)]
mod tests;
