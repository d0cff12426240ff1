//! `QueryClient::inspect_queries` and `query_info`: entries described without their type.

use std::sync::Arc;
use std::time::Duration;

use stackquery::{key, FetchStatus, QueryClient, QueryOptions, QueryStatus};

#[tokio::test]
async fn describes_every_entry_whatever_its_type() {
    let client = QueryClient::new();
    client
        .set_query_data(key!["a", 1], "one".to_string())
        .unwrap();
    client.set_query_data(key!["a", 2], [0_u64; 4]).unwrap();
    let failing =
        QueryOptions::new(key!["b"], || async { Err::<u8, _>("down".to_string()) }).retry(0);
    assert!(client.fetch_query(&failing).await.is_err());

    let infos = client.inspect_queries(stackquery::QueryFilter::all());
    let keys: Vec<String> = infos.iter().map(|i| i.key.to_string()).collect();
    assert_eq!(keys, [r#"["a",1]"#, r#"["a",2]"#, r#"["b"]"#]);

    let a1 = &infos[0];
    assert_eq!(a1.status, QueryStatus::Success);
    assert_eq!(a1.fetch_status, FetchStatus::Idle);
    assert_eq!(a1.type_name, std::any::type_name::<String>());
    assert!(a1.data_updated_at.is_some());
    assert_eq!(a1.observers, 0);
    assert!(!a1.persisted);
    let d = a1.data.as_ref().unwrap();
    assert_eq!(d.size, std::mem::size_of::<String>());
    assert!(d.json.is_none(), "inspect_queries encodes nothing");

    assert_eq!(infos[1].data.as_ref().unwrap().size, 32);

    let b = &infos[2];
    assert_eq!(b.status, QueryStatus::Error);
    assert_eq!(b.failure_count, 1);
    assert!(
        b.error.as_deref().unwrap().contains("down"),
        "{:?}",
        b.error
    );
    assert!(b.data.is_none());
    assert!(b.stale);

    // A prefix filter narrows.
    assert_eq!(client.inspect_queries(key!["a"]).len(), 2);
}

#[tokio::test]
async fn query_info_gives_persisted_data_as_json() {
    let client = QueryClient::new();
    let persisted = QueryOptions::new(key!["p"], || async {
        Ok::<_, String>(vec!["x".to_string(), "y".to_string()])
    })
    .persist()
    .stale_time(Duration::from_secs(60));
    client.fetch_query(&persisted).await.unwrap();
    let info = client.query_info(&key!["p"]).unwrap();
    assert!(info.persisted);
    assert!(!info.stale);
    let json = info.data.unwrap().json.unwrap().unwrap();
    assert_eq!(json, serde_json::json!(["x", "y"]));

    // Not persisted: the type and size only.
    client.set_query_data(key!["q"], 7_u32).unwrap();
    let info = client.query_info(&key!["q"]).unwrap();
    let d = info.data.unwrap();
    assert_eq!((d.type_name, d.size), ("u32", 4));
    assert!(d.json.is_none());

    assert!(client.query_info(&key!["absent"]).is_none());
}

#[tokio::test]
async fn a_panicking_serialize_is_an_error_not_a_panic() {
    #[derive(serde::Deserialize)]
    struct Bad;
    impl serde::Serialize for Bad {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            panic!("boom")
        }
    }
    let client = QueryClient::new();
    let opts = QueryOptions::new(key!["bad"], || async { Ok::<_, String>(Bad) }).persist();
    client.fetch_query(&opts).await.unwrap();
    let info = client.query_info(&key!["bad"]).unwrap();
    let err = info.data.unwrap().json.unwrap().unwrap_err();
    assert!(err.contains("boom") || err.contains("panic"), "{err}");
}

#[tokio::test]
async fn observers_invalidation_and_staleness_are_seen() {
    let client = QueryClient::new();
    let opts = QueryOptions::new(key!["o"], || async { Ok::<_, String>(1_u8) })
        .stale_time(Duration::from_secs(60));
    let observer = client.watch(&opts);
    let _sub = observer.subscribe(|_| {});
    for _ in 0..100 {
        if client.get_query_data::<u8>(&key!["o"]).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let info = client.query_info(&key!["o"]).unwrap();
    assert_eq!((info.observers, info.enabled_observers), (1, 1));
    assert!(info.is_active());
    assert!(!info.stale && !info.invalidated);

    client.invalidate_queries(key!["o"]).await;
    // The active entry refetched; written by hand instead, it stays invalidated.
    client.set_query_data(key!["m"], Arc::new(1_u8)).unwrap();
    client.invalidate_queries(key!["m"]).await;
    let m = client.query_info(&key!["m"]).unwrap();
    assert!(m.invalidated && m.stale);
}
