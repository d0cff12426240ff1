//! Cold hydration from SQLite: N entries are written to a SQLite file by one client; a new
//! client on the same file then asks for every key once (`fetch_query` of a persisted query
//! whose fetch function is never called: each answer comes from the second tier). Reported
//! as keys/s, with the p50 / p99 latency of one cold hydration in the row's note. No other
//! contender has a persistent tier, so the row stands alone.

use std::time::{Duration, Instant};

use stackquery::{key, QueryClient, QueryOptions, SqliteStorage};

use super::{multi_thread, on_worker, SQ_FETCH};
use crate::report::{Better, Row, Section};
use crate::Cfg;

const KEYS: u64 = 2_000;

fn opts(id: u64) -> QueryOptions<Vec<String>> {
    QueryOptions::new(key!["report", id], move || async move {
        // Never called when hydration works; make a miss obvious in the figures.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, std::io::Error>(vec![format!("fetched {id}")])
    })
    .stale_time(Duration::from_secs(3600))
    .persist()
}

pub(crate) fn run(_cfg: &Cfg) -> Section {
    let mut s = Section::new(
        "hydration",
        "Cold hydration from SQLite (a new client reads 2,000 persisted keys)",
        "keys/s",
        Better::Higher,
    );
    let dir = std::env::temp_dir().join(format!("stackquery-bench-{}", std::process::id()));
    let path = dir.join("hydration.db");
    let rt = multi_thread();
    let p = path.clone();
    let (rate, p50, p99) = on_worker(&rt, async move {
        let writer = QueryClient::builder()
            .storage(SqliteStorage::open(&p).expect("open"))
            .build();
        for id in 0..KEYS {
            let data: Vec<String> = (0..8).map(|i| format!("row {id}/{i}")).collect();
            writer
                .set_query_data(key!["report", id], data.clone())
                .expect("set");
            writer
                .fetch_query(&opts(id))
                .await
                .expect("records the options");
            writer
                .set_query_data(key!["report", id], data)
                .expect("set");
        }
        writer.flush_storage().await;
        drop(writer);
        let reader = QueryClient::builder()
            .storage(SqliteStorage::open(&p).expect("open"))
            .build();
        let mut lat = Vec::with_capacity(KEYS as usize);
        let t = Instant::now();
        for id in 0..KEYS {
            let one = Instant::now();
            let v = reader.fetch_query(&opts(id)).await.expect("hydrated");
            lat.push(one.elapsed().as_secs_f64() * 1e6);
            assert!(v[0].starts_with("row"), "hydrated, not fetched");
        }
        let rate = KEYS as f64 / t.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        let pick = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
        (rate, pick(0.5), pick(0.99))
    });
    let _ = std::fs::remove_dir_all(&dir);
    s.push(
        Row::new(format!("{SQ_FETCH} (SQLite tier)"), vec![rate])
            .note(format!("one hydration: p50 {p50:.0} µs, p99 {p99:.0} µs")),
    );
    s
}
