//! `persist_with` / `persist_prefix_with`: data that is not a serde type (another
//! language's objects) in the same stored envelope as serde data, so that clients of both
//! kinds share one tier.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stackquery::storage::{JsonConverter, MemoryStorage, StorageError};
use stackquery::{key, QueryClient, QueryOptions};

/// Stands for a foreign object: no serde impls.
#[derive(Clone, Debug, PartialEq)]
struct Foreign(Vec<(String, i64)>);

struct ForeignJson;

impl JsonConverter<Foreign> for ForeignJson {
    fn to_json(data: &Foreign) -> Result<serde_json::Value, StorageError> {
        if data.0.iter().any(|(k, _)| k.is_empty()) {
            return Err(StorageError::Encode("empty field name".into()));
        }
        Ok(serde_json::Value::Object(
            data.0
                .iter()
                .map(|(k, v)| (k.clone(), (*v).into()))
                .collect(),
        ))
    }
    fn from_json(value: serde_json::Value) -> Result<Foreign, StorageError> {
        let serde_json::Value::Object(map) = value else {
            return Err(StorageError::Corrupt("not an object".into()));
        };
        let mut fields = Vec::new();
        for (k, v) in map {
            let v = v
                .as_i64()
                .ok_or_else(|| StorageError::Corrupt(format!("{k}: not an int")))?;
            fields.push((k, v));
        }
        Ok(Foreign(fields))
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i64,
    y: i64,
}

fn never<T: Send + Sync + 'static>() -> impl Fn() -> std::future::Ready<Result<T, std::io::Error>> {
    || std::future::ready(Err(std::io::Error::other("must be served from the tier")))
}

/// Written through a converter, read as a serde struct with the same fields; and the
/// reverse, through a prefix rule (a manual write, no query of the key has run).
#[tokio::test]
async fn a_converted_value_and_a_serde_value_share_one_envelope() {
    let store = Arc::new(MemoryStorage::new());
    let foreign = QueryClient::builder()
        .storage(store.clone())
        .persist_prefix_with::<Foreign, ForeignJson>(key![])
        .build();
    let written = Foreign(vec![("x".into(), 1), ("y".into(), 2)]);
    foreign
        .set_query_data(key!["p", 1], written.clone())
        .unwrap();
    foreign.flush_storage().await;

    let typed = QueryClient::builder().storage(store.clone()).build();
    let read = typed
        .fetch_query(&QueryOptions::new(key!["p", 1], never::<Point>()).persist())
        .await
        .unwrap();
    assert_eq!(*read, Point { x: 1, y: 2 });

    typed
        .fetch_query(
            &QueryOptions::new(key!["p", 2], || async {
                Ok::<_, std::io::Error>(Point { x: 3, y: 4 })
            })
            .persist(),
        )
        .await
        .unwrap();
    typed.flush_storage().await;
    let other = QueryClient::builder().storage(store).build();
    let back = other
        .fetch_query(
            &QueryOptions::new(key!["p", 2], never::<Foreign>()).persist_with::<ForeignJson>(),
        )
        .await
        .unwrap();
    let mut fields = back.0.clone();
    fields.sort();
    assert_eq!(fields, vec![("x".into(), 3), ("y".into(), 4)]);
}

/// A value the converter refuses is not written (the write is skipped and counted), and
/// the client goes on from memory.
#[tokio::test]
async fn a_value_the_converter_refuses_is_a_counted_skipped_write() {
    let store = Arc::new(MemoryStorage::new());
    let client = QueryClient::builder()
        .storage(store.clone())
        .storage_timeout(Duration::from_secs(1))
        .persist_prefix_with::<Foreign, ForeignJson>(key![])
        .build();
    client
        .set_query_data(key!["bad"], Foreign(vec![(String::new(), 1)]))
        .unwrap();
    client.flush_storage().await;
    assert_eq!(store.len(), 0);
    assert!(client.stats().l2_errors >= 1);
    let kept = client
        .get_query_data::<Foreign>(&key!["bad"])
        .expect("kept in memory");
    assert_eq!(kept.0.len(), 1);
}

/// `get_query_data_or_stored` (PyStackQuery's `get_query_data_async`): memory first, then
/// the tier for a key a rule covers, without putting the entry in memory.
#[tokio::test]
async fn stored_data_is_read_without_a_query() {
    let store = Arc::new(MemoryStorage::new());
    let writer = QueryClient::builder()
        .storage(store.clone())
        .persist_prefix::<Point>(key!["p"])
        .build();
    writer
        .set_query_data(key!["p", 9], Point { x: 9, y: 9 })
        .unwrap();
    writer.flush_storage().await;

    let reader = QueryClient::builder()
        .storage(store)
        .persist_prefix::<Point>(key!["p"])
        .build();
    let read = reader
        .get_query_data_or_stored::<Point>(&key!["p", 9])
        .await;
    assert_eq!(read.as_deref(), Some(&Point { x: 9, y: 9 }));
    assert!(
        reader.get_query_data::<Point>(&key!["p", 9]).is_none(),
        "not put in memory"
    );
    assert!(reader
        .get_query_data_or_stored::<Point>(&key!["p", 8])
        .await
        .is_none());
    assert!(
        reader
            .get_query_data_or_stored::<Point>(&key!["other"])
            .await
            .is_none(),
        "no rule covers the key"
    );
}
