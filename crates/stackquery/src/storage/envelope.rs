//! The versioned envelope every persisted entry is written in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Codec, StorageError};

/// The envelope format this build writes and the only one it reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// A persisted query entry: the data plus what the cache needs to judge it after a restart.
///
/// A stable, public format (see [the storage module](super#the-stored-format-public-stable)):
/// what the client writes to and reads from a [`Storage`](super::Storage), for code that
/// works on a shared tier without a client. Encode one with [`encode`], read one back with
/// [`decode`]. To encode data held in an
/// `Arc<T>` without cloning it, build an `Envelope<&T>`.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use stackquery::storage::{decode, encode, Codec, Envelope};
///
/// # fn main() -> Result<(), stackquery::StorageError> {
/// let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
/// let bytes = encode(&Envelope::new(&vec![1, 2, 3], at, false), Codec::Json)?;
/// assert_eq!(
///     std::str::from_utf8(&bytes).unwrap(),
///     r#"{"version":1,"data":[1,2,3],"data_updated_at_ms":1700000000123,"invalidated":false}"#
/// );
/// let back: Envelope<Vec<u8>> = decode(&bytes)?;
/// assert_eq!(back.data, [1, 2, 3]);
/// assert_eq!(back.data_updated_at(), at);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// The envelope format version ([`ENVELOPE_VERSION`]).
    pub version: u32,
    /// The query's data.
    pub data: T,
    /// When the data was fetched or set: wall-clock milliseconds since the UNIX epoch.
    pub data_updated_at_ms: u64,
    /// Whether the entry had been invalidated (it is stale whatever its age).
    pub invalidated: bool,
}

impl<T> Envelope<T> {
    /// An envelope of the current version; a time before the UNIX epoch is stored as the
    /// epoch itself.
    pub fn new(data: T, data_updated_at: SystemTime, invalidated: bool) -> Self {
        let ms = data_updated_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Envelope {
            version: ENVELOPE_VERSION,
            data,
            data_updated_at_ms: ms,
            invalidated,
        }
    }

    /// [`data_updated_at_ms`](Envelope::data_updated_at_ms) as a `SystemTime` (saturating
    /// at the latest representable time).
    pub fn data_updated_at(&self) -> SystemTime {
        let since_epoch = Duration::from_millis(self.data_updated_at_ms);
        UNIX_EPOCH
            .checked_add(since_epoch)
            // Far future (year 2514), representable on every platform.
            .or_else(|| UNIX_EPOCH.checked_add(Duration::from_secs(1 << 34)))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// Encodes an envelope with `codec`.
///
/// # Errors
///
/// [`StorageError::Encode`] when the data cannot be represented by the codec (for JSON: a
/// map whose keys are not strings), or when `envelope.version` is not [`ENVELOPE_VERSION`]
/// (nothing could read it back). With the binary codec, a type that needs a
/// self-describing format (e.g. `serde_json::Value`) may encode without error and then
/// fail to decode: such an entry reads as corrupt (a miss), so use JSON for those types.
pub fn encode<T: Serialize>(envelope: &Envelope<T>, codec: Codec) -> Result<Vec<u8>, StorageError> {
    if envelope.version != ENVELOPE_VERSION {
        return Err(StorageError::Encode(format!(
            "envelope version {} (this build writes {ENVELOPE_VERSION})",
            envelope.version
        )));
    }
    match codec {
        Codec::Json => {
            serde_json::to_vec(envelope).map_err(|e| StorageError::Encode(e.to_string()))
        }
        #[cfg(feature = "binary-codec")]
        Codec::Binary => binary::encode(envelope),
    }
}

/// Decodes an envelope written by [`encode`] with any codec (it recognises which).
///
/// Never panics, whatever the bytes.
///
/// # Errors
///
/// - [`StorageError::Corrupt`] for bytes that are empty, truncated, damaged, not an
///   envelope, of a format version other than [`ENVELOPE_VERSION`], or whose data does not
///   fit `T`. Such an entry is a miss.
/// - [`StorageError::Unsupported`] for a binary entry when the `binary-codec` feature is
///   off (another process may be able to read it, so it need not be deleted).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Envelope<T>, StorageError> {
    match Codec::detect(bytes)? {
        Some(Codec::Json) => json::decode(bytes),
        #[cfg(feature = "binary-codec")]
        Some(Codec::Binary) => binary::decode(bytes),
        None if bytes.is_empty() => Err(StorageError::Corrupt("empty entry".into())),
        None => Err(StorageError::Corrupt(
            "not an envelope (unknown leading byte)".into(),
        )),
    }
}

fn unknown_version(version: u32) -> StorageError {
    StorageError::Corrupt(format!(
        "unknown envelope version {version} (this build reads {ENVELOPE_VERSION})"
    ))
}

mod json {
    use super::*;

    /// Just the version, to explain why a whole envelope did not parse.
    #[derive(Deserialize)]
    struct Header {
        version: u32,
    }

    pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Envelope<T>, StorageError> {
        match serde_json::from_slice::<Envelope<T>>(bytes) {
            Ok(env) if env.version == ENVELOPE_VERSION => Ok(env),
            Ok(env) => Err(unknown_version(env.version)),
            Err(err) => match serde_json::from_slice::<Header>(bytes) {
                Ok(header) if header.version != ENVELOPE_VERSION => {
                    Err(unknown_version(header.version))
                }
                _ => Err(StorageError::Corrupt(format!("json envelope: {err}"))),
            },
        }
    }
}

/// `[BINARY_TAG][postcard: version, data, data_updated_at_ms, invalidated]` — the fields
/// in declaration order, as postcard writes a struct; the version comes first so it can be
/// checked before the rest is read.
#[cfg(feature = "binary-codec")]
mod binary {
    use super::super::codec::BINARY_TAG;
    use super::*;

    pub(super) fn encode<T: Serialize>(envelope: &Envelope<T>) -> Result<Vec<u8>, StorageError> {
        postcard::to_extend(envelope, vec![BINARY_TAG])
            .map_err(|e| StorageError::Encode(format!("binary envelope: {e}")))
    }

    pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Envelope<T>, StorageError> {
        let corrupt = |e: postcard::Error| StorageError::Corrupt(format!("binary envelope: {e}"));
        let body = bytes
            .strip_prefix(&[BINARY_TAG])
            .ok_or_else(|| StorageError::Corrupt("binary envelope: missing tag".into()))?;
        let (version, rest) = postcard::take_from_bytes::<u32>(body).map_err(corrupt)?;
        if version != ENVELOPE_VERSION {
            return Err(unknown_version(version));
        }
        let ((data, data_updated_at_ms, invalidated), trailing) =
            postcard::take_from_bytes::<(T, u64, bool)>(rest).map_err(corrupt)?;
        if !trailing.is_empty() {
            return Err(StorageError::Corrupt(format!(
                "binary envelope: {} trailing bytes",
                trailing.len()
            )));
        }
        Ok(Envelope {
            version,
            data,
            data_updated_at_ms,
            invalidated,
        })
    }
}
