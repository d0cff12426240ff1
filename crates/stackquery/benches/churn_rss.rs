//! Memory under key churn: pushes `STACKQUERY_CHURN_KEYS` (default 10,000,000) distinct
//! keys through a client bounded by `max_queries(100_000)`, with the default gc time
//! (5 minutes, so the gc never collects during the run: only the bound can hold memory
//! flat), and prints the process's RSS at 1M, 5M and 10M keys.
//!
//! ```sh
//! cargo bench -p stackquery --bench churn_rss
//! STACKQUERY_CHURN_KEYS=2000000 cargo bench -p stackquery --bench churn_rss
//! ```
//!
//! A flat RSS from 1M on is the target: every evicted entry must leave nothing behind
//! (no timer, no key, no ring slot).

use std::time::Instant;

use stackquery::{key, QueryClient, QueryOptions};

const BOUND: usize = 100_000;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    kib / 1024.0
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let total: u64 = std::env::var("STACKQUERY_CHURN_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let checkpoints = [1_000_000, 5_000_000, 10_000_000, total];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = QueryClient::builder().max_queries(BOUND).build();
        let start = Instant::now();
        println!("churn: {total} distinct keys through max_queries({BOUND}), default gc_time");
        println!("keys,rss_mib,entries,seconds");
        println!("0,{:.1},0,0.0", rss_mib());
        for i in 1..=total {
            let opts = QueryOptions::new(key!["user", i], move || async move {
                Ok::<_, std::io::Error>(i)
            });
            let v = client.fetch_query(&opts).await.expect("ready fetch");
            assert_eq!(*v, i);
            if checkpoints.contains(&i) {
                println!(
                    "{i},{:.1},{},{:.1}",
                    rss_mib(),
                    client.stats().entries,
                    start.elapsed().as_secs_f64()
                );
            }
            if i == total {
                break;
            }
        }
        assert!(client.stats().entries <= BOUND);
    });
}
