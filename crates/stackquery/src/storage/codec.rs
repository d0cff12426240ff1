//! How an [`Envelope`](super::Envelope) is turned into bytes: JSON, or a compact binary form.

use super::StorageError;

/// The first byte of a binary-encoded envelope. It can never start a JSON document (nor
/// any UTF-8 text), so [`decode`](super::decode) tells the codecs apart without being told.
pub(crate) const BINARY_TAG: u8 = 0xFF;

/// The byte encoding of stored envelopes.
///
/// Entries are self-describing: [`decode`](super::decode) recognises which codec wrote
/// them, so switching codecs leaves older entries readable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// JSON text (the default): larger and slower than binary, but an entry can be read
    /// with any SQLite or Redis client. The data type's `Serialize` must produce JSON
    /// (map keys must be strings).
    #[default]
    Json,
    /// A compact binary form ([postcard](https://docs.rs/postcard)) after a one-byte tag.
    /// The data type must not need a self-describing format: no `#[serde(flatten)]`,
    /// `#[serde(untagged)]`, `skip_serializing_if`, or `serde_json::Value`. Nor does it
    /// carry field names or types: bytes written for another shape of the data type may
    /// decode without error into wrong values, so change the query key (or go back to
    /// JSON) when the type changes incompatibly.
    #[cfg(feature = "binary-codec")]
    #[cfg_attr(docsrs, doc(cfg(feature = "binary-codec")))]
    Binary,
}

impl Codec {
    /// The codec that wrote `bytes`, judged by their first byte; `None` when they cannot
    /// be an envelope of any codec. Bytes of a codec this build lacks report an error.
    ///
    /// ```
    /// use stackquery::storage::Codec;
    /// assert_eq!(Codec::detect(br#"{"version":1}"#).unwrap(), Some(Codec::Json));
    /// assert_eq!(Codec::detect(b"").unwrap(), None);
    /// ```
    ///
    /// # Errors
    ///
    /// [`StorageError::Unsupported`] for binary-encoded bytes when the `binary-codec`
    /// feature is off.
    pub fn detect(bytes: &[u8]) -> Result<Option<Codec>, StorageError> {
        let first_non_space = bytes
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        if first_non_space == Some(&b'{') {
            return Ok(Some(Codec::Json));
        }
        if bytes.first() == Some(&BINARY_TAG) {
            #[cfg(feature = "binary-codec")]
            return Ok(Some(Codec::Binary));
            #[cfg(not(feature = "binary-codec"))]
            return Err(StorageError::Unsupported(
                "binary-encoded entry: enable stackquery's `binary-codec` feature",
            ));
        }
        Ok(None)
    }
}
