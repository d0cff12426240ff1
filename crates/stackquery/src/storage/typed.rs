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
