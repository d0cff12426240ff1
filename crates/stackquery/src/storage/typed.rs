//! Typed encode/decode of one persisted data type to and from the storage envelope: plain
//! function pointers, so a query's options carry them at no cost.

use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{decode, encode, Codec, Envelope, StorageError};
use crate::user_code::contain;

type EncodeFn<T> = fn(&T, SystemTime, bool, Codec) -> Result<Vec<u8>, StorageError>;

/// Typed encode/decode for one persisted data type (plain function pointers: cheap to copy).
pub(crate) struct PersistFns<T> {
    pub(crate) encode: EncodeFn<T>,
    pub(crate) decode: fn(&[u8]) -> Result<Envelope<T>, StorageError>,
    pub(crate) to_json: fn(&T) -> Result<serde_json::Value, StorageError>,
    pub(crate) from_json: fn(serde_json::Value) -> Result<T, StorageError>,
}

impl<T> Clone for PersistFns<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for PersistFns<T> {}

// `Serialize` / `Deserialize` impls are user code: each call runs under the crate's panic
// policy, here where every caller (the write-behind task, the lease holder's direct write,
// second-tier reads, snapshots) gets it. A panic while encoding is an encode error (that
// write is skipped, the write-behind task lives on); a panic while decoding makes the
// stored bytes unreadable (a miss), never a dead fetch task.
impl<T: Serialize + DeserializeOwned> PersistFns<T> {
    pub(crate) fn new() -> Self {
        PersistFns {
            encode: |data, at, invalidated, codec| {
                contain("serialize", || {
                    encode(&Envelope::new(data, at, invalidated), codec)
                })
                .unwrap_or_else(|p| Err(StorageError::Encode(p.to_string())))
            },
            decode: |bytes| {
                contain("deserialize", || decode::<T>(bytes))
                    .unwrap_or_else(|p| Err(StorageError::Corrupt(p.to_string())))
            },
            to_json: |data| {
                contain("serialize", || serde_json::to_value(data))
                    .unwrap_or_else(|p| Err(serde::ser::Error::custom(p)))
                    .map_err(|e| StorageError::Encode(e.to_string()))
            },
            from_json: |value| {
                contain("deserialize", || serde_json::from_value(value))
                    .unwrap_or_else(|p| Err(serde::de::Error::custom(p)))
                    .map_err(|e| StorageError::Corrupt(e.to_string()))
            },
        }
    }
}

/// Converts a data type that is not itself serde-serialisable to and from the JSON of the
/// stored envelope — for data owned by another language's runtime (the Python package's
/// objects are `Py<PyAny>`, a foreign type that cannot implement serde's traits there).
///
/// The converter is a type of its own (usually a unit struct), so a crate can implement it
/// for a type it does not own. Use it with
/// [`QueryOptions::persist_with`](crate::QueryOptions::persist_with) and
/// [`QueryClientBuilder::persist_prefix_with`](crate::QueryClientBuilder::persist_prefix_with).
/// The stored envelope is the same as for a serde type with the same JSON, so clients of
/// either kind read each other's entries.
///
/// ```
/// use stackquery::storage::{JsonConverter, StorageError};
///
/// /// A type from elsewhere, stored as a JSON string.
/// struct Name(String);
/// struct NameJson;
///
/// impl JsonConverter<Name> for NameJson {
///     fn to_json(data: &Name) -> Result<serde_json::Value, StorageError> {
///         Ok(serde_json::Value::String(data.0.clone()))
///     }
///     fn from_json(value: serde_json::Value) -> Result<Name, StorageError> {
///         match value {
///             serde_json::Value::String(s) => Ok(Name(s)),
///             other => Err(StorageError::Corrupt(format!("expected a string, got {other}"))),
///         }
///     }
/// }
/// let options = stackquery::QueryOptions::new(
///     stackquery::key!["name"],
///     || async { Ok::<_, std::io::Error>(Name("Ada".into())) },
/// )
/// .persist_with::<NameJson>();
/// # let _ = options;
/// ```
pub trait JsonConverter<T>: 'static {
    /// The JSON stored for `data` (an error skips the write; it is logged and counted).
    ///
    /// # Errors
    ///
    /// [`StorageError::Encode`] when `data` has no JSON form.
    fn to_json(data: &T) -> Result<serde_json::Value, StorageError>;

    /// The data back from stored JSON (an error makes the entry a miss).
    ///
    /// # Errors
    ///
    /// [`StorageError::Corrupt`] when `value` is not a `T`.
    fn from_json(value: serde_json::Value) -> Result<T, StorageError>;
}

impl<T: 'static> PersistFns<T> {
    /// Encode/decode through the converter `C` (see [`JsonConverter`]); conversions run
    /// under the crate's panic policy like serde impls do.
    pub(crate) fn via<C: JsonConverter<T>>() -> Self {
        PersistFns {
            encode: |data, at, invalidated, codec| {
                contain("serialize", || {
                    let json = C::to_json(data)?;
                    encode(&Envelope::new(&json, at, invalidated), codec)
                })
                .unwrap_or_else(|p| Err(StorageError::Encode(p.to_string())))
            },
            decode: |bytes| {
                contain("deserialize", || {
                    let e = decode::<serde_json::Value>(bytes)?;
                    Ok(Envelope {
                        version: e.version,
                        data: C::from_json(e.data)?,
                        data_updated_at_ms: e.data_updated_at_ms,
                        invalidated: e.invalidated,
                    })
                })
                .unwrap_or_else(|p| Err(StorageError::Corrupt(p.to_string())))
            },
            to_json: |data| {
                contain("serialize", || C::to_json(data))
                    .unwrap_or_else(|p| Err(StorageError::Encode(p.to_string())))
            },
            from_json: |value| {
                contain("deserialize", || C::from_json(value))
                    .unwrap_or_else(|p| Err(StorageError::Corrupt(p.to_string())))
            },
        }
    }
}
