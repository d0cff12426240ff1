//! `QueryClient::stats`: counters kept up to date as things happen (O(1) to read), so
//! hits survive the entries that served them, and concurrent hits are all counted.

use std::sync::Arc;
use std::time::Duration;

use stackquery::{key, QueryClient, QueryOptions};

fn counted(id: u32) -> QueryOptions<u32> {
    QueryOptions::new(key!["n", id], move || async move { Ok::<_, String>(id) })
        .stale_time(Duration::from_secs(3600))
        .gc_time(Duration::from_secs(10))
}

/// Hits of entries that were removed, cleared, evicted or collected stay counted.
#[tokio::test(start_paused = true)]
async fn hits_outlive_removals_evictions_and_gc() {
    let client = QueryClient::builder().max_queries(3).build();
    let mut expected = 0;
    let mut hit = |id: u32, n: u64| {
        expected += n;
        (id, n)
    };
    // Prime keys 0..3 and hit them.
    for id in 0..3 {
        client.fetch_query(&counted(id)).await.unwrap();
    }
    for (id, n) in [hit(0, 4), hit(1, 3), hit(2, 2)] {
        for _ in 0..n {
            client.fetch_query(&counted(id)).await.unwrap();
        }
    }
    assert_eq!(client.stats().hits, expected);
    // Removed by hand.
    client.remove_queries(key!["n", 0]);
    assert_eq!(client.stats().entries, 2);
    assert_eq!(client.stats().hits, expected, "after a removal");
    // Evicted: three new keys push the old ones out of the bound of 3.
    for id in 10..13 {
        client.fetch_query(&counted(id)).await.unwrap();
    }
    let stats = client.stats();
    assert!(stats.evictions >= 2, "{stats:?}");
    assert_eq!(stats.hits, expected, "after evictions");
    for _ in 0..5 {
        client.fetch_query(&counted(12)).await.unwrap();
    }
    expected += 5;
    // Collected by the gc.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let stats = client.stats();
    assert_eq!((stats.entries, stats.gc_collections), (0, 3));
    assert_eq!(stats.hits, expected, "after gc");
    // Cleared.
    client.fetch_query(&counted(20)).await.unwrap();
    client.fetch_query(&counted(20)).await.unwrap();
    client.clear();
    assert_eq!(client.stats().hits, expected + 1, "after clear");
    assert_eq!(client.stats().misses, 3 + 3 + 1);
}

/// Hits from several OS threads on the same hot keys are all counted (each thread adds
/// to its own stripe).
#[test]
fn concurrent_hits_are_all_counted() {
    const THREADS: u64 = 4;
    const HITS: u64 = 20_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let client = QueryClient::new();
    let opts: Arc<Vec<_>> = Arc::new((0..8).map(counted).collect());
    rt.block_on(async {
        for o in opts.iter() {
            client.fetch_query(o).await.unwrap();
        }
    });
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (client, opts) = (client.clone(), opts.clone());
            let handle = rt.handle().clone();
            std::thread::spawn(move || {
                handle.block_on(async {
                    for i in 0..HITS {
                        client.fetch_query(&opts[(i % 8) as usize]).await.unwrap();
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = client.stats();
    assert_eq!(stats.hits, THREADS * HITS);
    assert_eq!((stats.misses, stats.fetches), (8, 8));
}
