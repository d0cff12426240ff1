//! Issue 17, TanStack Query parity for UIs: `initial_data` (cached, judged fresh or stale),
//! keeping the previous key's data while an observer's new key loads, and structural
//! sharing of equal refetched data.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use stackquery::{key, QueryClient, QueryOptions, QueryState, QueryStatus};

/// A query of `key` whose fetch takes a second and returns `value`, counting its calls.
fn counted(
    key: stackquery::QueryKey,
    value: &'static str,
    calls: &Arc<AtomicU32>,
) -> QueryOptions<String> {
    let calls = calls.clone();
    QueryOptions::new(key, move || {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, String>(value.to_string())
        }
    })
}

mod initial_data {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fresh_initial_data_is_cached_and_served_without_a_fetch() {
        let client = QueryClient::new();
        let calls = Arc::new(AtomicU32::new(0));
        let opts = counted(key!["settings"], "fetched", &calls)
            .initial_data("initial".to_string())
            .stale_time(Duration::from_secs(60));
        assert_eq!(client.fetch_query(&opts).await.unwrap().as_str(), "initial");
        let state = client.get_query_state::<String>(&key!["settings"]).unwrap();
        assert_eq!(state.status, QueryStatus::Success);
        assert!(state.data_updated_at.is_some());
        assert!(!state.is_placeholder_data);
        // Cached: a plain read finds it (a placeholder would not be there).
        assert_eq!(
            client
                .get_query_data::<String>(&key!["settings"])
                .as_deref()
                .map(String::as_str),
            Some("initial")
        );
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(client.fetch_query(&opts).await.unwrap().as_str(), "initial");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "fresh for the stale time: no fetch"
        );

        tokio::time::advance(Duration::from_secs(1)).await;
        // Stale: served at once, refetched behind.
        assert_eq!(client.fetch_query(&opts).await.unwrap().as_str(), "initial");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            client
                .get_query_data::<String>(&key!["settings"])
                .as_deref()
                .map(String::as_str),
            Some("fetched")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_stamp_sets_how_old_the_initial_data_is() {
        let client = QueryClient::new();
        let calls = Arc::new(AtomicU32::new(0));
        let stamp = SystemTime::now() - Duration::from_secs(40);
        let opts = counted(key!["feed"], "fetched", &calls)
            .initial_data("initial".to_string())
            .initial_data_updated_at(stamp)
            .stale_time(Duration::from_secs(60));
        client.fetch_query(&opts).await.unwrap();
        let state = client.get_query_state::<String>(&key!["feed"]).unwrap();
        assert_eq!(
            state.data_updated_at,
            Some(stamp),
            "the wall-clock stamp is kept"
        );
        // 40 s old at seeding: fresh for 20 s more on the client's clock.
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(!client
            .get_query_state::<String>(&key!["feed"])
            .unwrap()
            .is_stale());
        client.fetch_query(&opts).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(client
            .get_query_state::<String>(&key!["feed"])
            .unwrap()
            .is_stale());
        // `fetch_query_fresh` refuses the stale initial data and waits for the fetch.
        assert_eq!(
            client.fetch_query_fresh(&opts).await.unwrap().as_str(),
            "fetched"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn placeholder_data_is_not_cached_but_initial_data_is() {
        let client = QueryClient::new();
        let calls = Arc::new(AtomicU32::new(0));
        let placeholder = counted(key!["p"], "fetched", &calls)
            .placeholder_data("placeholder".to_string())
            .enabled(false);
        let initial = counted(key!["i"], "fetched", &calls)
            .initial_data("initial".to_string())
            .enabled(false);
        let (p, i) = (client.watch(&placeholder), client.watch(&initial));
        let (_a, _b) = (p.subscribe(|_| {}), i.subscribe(|_| {}));
        let (ps, is) = (p.state(), i.state());
        assert_eq!(ps.data.as_deref().map(String::as_str), Some("placeholder"));
        assert!(ps.is_placeholder_data);
        assert_eq!(is.data.as_deref().map(String::as_str), Some("initial"));
        assert!(
            !is.is_placeholder_data,
            "a disabled observer shows the cached initial data"
        );
        assert_eq!(client.get_query_data::<String>(&key!["p"]), None);
        assert!(client.get_query_data::<String>(&key!["i"]).is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fetch_in_flight_still_replaces_the_initial_data() {
        let client = QueryClient::new();
        let calls = Arc::new(AtomicU32::new(0));
        let plain = counted(key!["k"], "fetched", &calls);
        let with_initial = plain
            .clone()
            .initial_data("initial".to_string())
            .stale_time(Duration::from_secs(600));
        let first = tokio::spawn({
            let (client, plain) = (client.clone(), plain.clone());
            async move { client.fetch_query(&plain).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The entry is empty (its first fetch runs): the initial data is seeded and served.
        assert_eq!(
            client.fetch_query(&with_initial).await.unwrap().as_str(),
            "initial"
        );
        assert_eq!(first.await.unwrap().unwrap().as_str(), "fetched");
        assert_eq!(
            client
                .get_query_data::<String>(&key!["k"])
                .as_deref()
                .map(String::as_str),
            Some("fetched")
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_builder_leaves_no_initial_data() {
        let client = QueryClient::new();
        let calls = Arc::new(AtomicU32::new(0));
        let opts = counted(key!["k"], "fetched", &calls).initial_data_with(|| panic!("no"));
        assert_eq!(client.fetch_query(&opts).await.unwrap().as_str(), "fetched");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[cfg(feature = "sqlite")]
    mod sqlite {
        use super::*;
        use stackquery::storage::{SqliteStorage, Storage};

        fn client(path: &std::path::Path) -> (QueryClient, SqliteStorage) {
            let store = SqliteStorage::open(path).unwrap();
            let client = QueryClient::builder().storage(store.clone()).build();
            (client, store)
        }

        /// A stored copy wins over unstamped initial data (a fallback), and initial data
        /// is not written to the second tier by itself.
        #[tokio::test]
        async fn a_stored_copy_wins_over_unstamped_initial_data() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("cache.sqlite");
            let calls = Arc::new(AtomicU32::new(0));
            let opts = |v| {
                counted(key!["user", 1], v, &calls)
                    .persist()
                    .stale_time(Duration::from_secs(600))
            };
            {
                let (client, store) = client(&path);
                let seeded = opts("never").initial_data("initial".to_string());
                assert_eq!(
                    client.fetch_query(&seeded).await.unwrap().as_str(),
                    "initial"
                );
                client.flush_storage().await;
                assert_eq!(store.get(&key!["user", 1].to_string()).await.unwrap(), None);
                client.clear();
                client.fetch_query(&opts("stored")).await.unwrap();
                client.flush_storage().await;
            }
            let (client, _) = client(&path);
            let seeded = opts("never").initial_data("initial".to_string());
            assert_eq!(
                client.fetch_query(&seeded).await.unwrap().as_str(),
                "stored"
            );
            assert_eq!(
                calls.load(Ordering::SeqCst),
                1,
                "only the first client fetched"
            );
        }

        /// Stamped initial data newer than the stored copy wins over it.
        #[tokio::test]
        async fn stamped_initial_data_newer_than_the_stored_copy_wins() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("cache.sqlite");
            let calls = Arc::new(AtomicU32::new(0));
            let opts = |v| {
                counted(key!["user", 1], v, &calls)
                    .persist()
                    .stale_time(Duration::from_secs(600))
            };
            let stored_at = {
                let (client, _) = client(&path);
                client.fetch_query(&opts("stored")).await.unwrap();
                client.flush_storage().await;
                client
                    .get_query_state::<String>(&key!["user", 1])
                    .unwrap()
                    .data_updated_at
                    .unwrap()
            };
            let (client, _) = client(&path);
            let older = opts("never")
                .initial_data("older".to_string())
                .initial_data_updated_at(stored_at - Duration::from_secs(5));
            assert_eq!(client.fetch_query(&older).await.unwrap().as_str(), "stored");
            client.clear();
            let newer = opts("never")
                .initial_data("newer".to_string())
                .initial_data_updated_at(stored_at + Duration::from_secs(5));
            assert_eq!(client.fetch_query(&newer).await.unwrap().as_str(), "newer");
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }
}

mod keep_previous_data {
    use super::*;

    fn page(n: u32, keep: bool, calls: &Arc<AtomicU32>) -> QueryOptions<String> {
        let value: &'static str = Box::leak(format!("page {n}").into_boxed_str());
        counted(key!["todos", n], value, calls).keep_previous_data(keep)
    }

    fn shown(state: &QueryState<String>) -> (Option<String>, bool, QueryStatus) {
        (
            state.data.as_deref().cloned(),
            state.is_placeholder_data,
            state.status,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_previous_keys_data_stays_until_the_new_keys_arrives() {
        let client = QueryClient::new();
        let calls = Arc::new(AtomicU32::new(0));
        let observer = client.watch(&page(1, true, &calls));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let _sub = observer.subscribe(move |st| s.lock().unwrap().push(shown(st)));
        tokio::time::sleep(Duration::from_secs(2)).await;
        seen.lock().unwrap().clear();

        observer.set_options(page(2, true, &calls));
        let placeholder = (Some("page 1".to_string()), true, QueryStatus::Success);
        assert_eq!(shown(&observer.state()), placeholder);
        // Two switches before any data: the first key's data is still the one shown.
        observer.set_options(page(3, true, &calls));
        assert_eq!(shown(&observer.state()), placeholder);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            shown(&observer.state()),
            (Some("page 3".to_string()), false, QueryStatus::Success)
        );
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter().all(|(data, _, _)| data.is_some()),
            "never blank: {seen:?}"
        );
        assert_eq!(seen.last().unwrap().0.as_deref(), Some("page 3"));
        // The observer left keys 1 and 2: nobody observes them.
        let info = client.query_info(&key!["todos", 1]).unwrap();
        assert_eq!(info.observers, 0);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn without_the_option_a_new_key_starts_blank() {
        let client = QueryClient::new();
        let calls = Arc::new(AtomicU32::new(0));
        let observer = client.watch(&page(1, false, &calls));
        let _sub = observer.subscribe(|_| {});
        tokio::time::sleep(Duration::from_secs(2)).await;
        observer.set_options(page(2, false, &calls));
        assert_eq!(
            shown(&observer.state()),
            (None, false, QueryStatus::Pending)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            observer.state().data.as_deref().map(String::as_str),
            Some("page 2")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_on_the_new_key_shows_the_error_not_the_old_data() {
        let client = QueryClient::new();
        let calls = Arc::new(AtomicU32::new(0));
        let observer = client.watch(&page(1, true, &calls));
        let _sub = observer.subscribe(|_| {});
        tokio::time::sleep(Duration::from_secs(2)).await;
        let failing = QueryOptions::new(key!["todos", 2], || async {
            Err::<String, _>("down".to_string())
        })
        .retry(0)
        .keep_previous_data(true);
        observer.set_options(failing);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let state = observer.state();
        assert_eq!(state.status, QueryStatus::Error);
        assert_eq!(state.data, None);
        assert!(!state.is_placeholder_data);
    }
}

mod structural_sharing {
    use super::*;

    #[derive(Debug)]
    struct Eq(u32);

    impl PartialEq for Eq {
        fn eq(&self, other: &Self) -> bool {
            assert!(self.0 != 99, "equality panics on 99");
            self.0 == other.0
        }
    }

    fn opts(values: &Arc<Mutex<Vec<u32>>>) -> QueryOptions<Eq> {
        let values = values.clone();
        QueryOptions::new(key!["shared"], move || {
            let v = values.lock().unwrap().remove(0);
            async move { Ok::<_, String>(Eq(v)) }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn equal_data_keeps_the_same_arc_and_select_sees_no_change() {
        let client = QueryClient::new();
        let values = Arc::new(Mutex::new(vec![1, 1, 2]));
        let o = opts(&values).structural_sharing();
        let selects = Arc::new(AtomicU32::new(0));
        let sel = selects.clone();
        let observer = client.watch(&o).select(move |d: &Eq| {
            sel.fetch_add(1, Ordering::SeqCst);
            d.0
        });
        let datas = Arc::new(Mutex::new(Vec::new()));
        let d = datas.clone();
        let _sub = observer.subscribe(move |st| {
            if let Some(v) = &st.data {
                d.lock().unwrap().push(v.clone());
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let first = client.get_query_data::<Eq>(&key!["shared"]).unwrap();
        let stamp = client
            .get_query_state::<Eq>(&key!["shared"])
            .unwrap()
            .data_updated_at;
        tokio::time::advance(Duration::from_secs(1)).await;
        let again = client.refetch_query(&o).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again), "equal data: the held Arc");
        let state = client.get_query_state::<Eq>(&key!["shared"]).unwrap();
        assert!(
            state.data_updated_at > stamp,
            "the stamp moves to the fetch"
        );
        assert_eq!(
            selects.load(Ordering::SeqCst),
            1,
            "select did not run again"
        );
        {
            let datas = datas.lock().unwrap();
            assert!(
                datas.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])),
                "{datas:?}"
            );
        }
        let changed = client.refetch_query(&o).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &changed));
        assert_eq!(changed.0, 2);
        assert_eq!(selects.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn without_opting_in_equal_data_is_a_new_arc() {
        let client = QueryClient::new();
        let values = Arc::new(Mutex::new(vec![1, 1]));
        let o = opts(&values);
        let first = client.fetch_query(&o).await.unwrap();
        let again = client.refetch_query(&o).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_equality_counts_as_changed() {
        let client = QueryClient::new();
        let values = Arc::new(Mutex::new(vec![99, 99]));
        let o = opts(&values).structural_sharing();
        let first = client.fetch_query(&o).await.unwrap();
        let again = client.refetch_query(&o).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
        assert_eq!(again.0, 99);
    }

    /// The equality may call back into the client: it runs with no lock held.
    #[tokio::test(start_paused = true)]
    async fn the_equality_runs_with_no_lock_held() {
        #[derive(Debug)]
        struct Reentrant(u32, QueryClient);
        impl PartialEq for Reentrant {
            fn eq(&self, other: &Self) -> bool {
                // Reads the very entry being settled: would deadlock under its lock.
                let _ = self.1.get_query_state::<Reentrant>(&key!["re"]);
                self.0 == other.0
            }
        }
        let client = QueryClient::new();
        let c = client.clone();
        let o = QueryOptions::new(key!["re"], move || {
            let c = c.clone();
            async move { Ok::<_, String>(Reentrant(1, c)) }
        })
        .structural_sharing();
        let first = client.fetch_query(&o).await.unwrap();
        let again = client.refetch_query(&o).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        client.clear();
    }
}
