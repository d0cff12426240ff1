//! Unit tests of [`Flight`] (kept out of `flight/mod.rs`, which the shuttle test compiles
//! against its own `crate::sync`).

use std::sync::Arc;

use crate::flight::Flight;
use crate::state::QueryState;
use futures::FutureExt;

#[tokio::test]
async fn every_waiter_gets_the_first_result() {
    let f = Arc::new(Flight::<u32>::new(QueryState::default(), 0, 0, true, None));
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move { f.wait().await })
        })
        .collect();
    tokio::task::yield_now().await;
    f.resolve(Ok(Arc::new(1)));
    f.resolve(Ok(Arc::new(2)));
    for w in waiters {
        assert_eq!(*w.await.unwrap().unwrap(), 1);
    }
    assert_eq!(*f.wait().await.unwrap(), 1, "a late waiter gets it at once");
}

#[test]
fn a_dropped_waiter_unregisters_and_its_slot_is_reused() {
    let f = Flight::<u32>::new(QueryState::default(), 0, 0, true, None);
    let mut a = Box::pin(f.wait());
    assert!(a.as_mut().now_or_never().is_none());
    assert_eq!(f.waiters(), 1);
    drop(a);
    assert_eq!(f.waiters(), 0);
    for _ in 0..100 {
        let mut w = Box::pin(f.wait());
        assert!(w.as_mut().now_or_never().is_none());
    }
    assert_eq!(f.waiters(), 0, "abandoned waiters leave nothing behind");
    assert!(!f.is_resolved());
}
