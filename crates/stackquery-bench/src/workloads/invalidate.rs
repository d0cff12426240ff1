//! Invalidating the 100 keys under one prefix among 1,000,000 (`["g", group, item]`,
//! 10,000 groups of 100): stackquery's `invalidate_queries(prefix)` against what a
//! hand-written map must do (a linear scan marking matches stale) and an ordered index
//! (`BTreeMap` range), each run on a different group.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use stackquery::{key, QueryClient, QueryKey};

use super::{multi_thread, on_worker, SQ_INVALIDATE};
use crate::report::{fmt_num, Better, Row, Section};
use crate::Cfg;

const SCAN: &str = "linear scan (HashMap)";
const ORDERED: &str = "ordered index (BTreeMap range)";

/// The data of one entry in the hand-written maps: a value and a stale flag.
type Slot = (Arc<u64>, bool);

fn group_of(rep: usize, groups: usize) -> usize {
    (rep * 7919 + 13) % groups
}

pub(crate) fn run(cfg: &Cfg) -> Section {
    let (groups, per) = (cfg.inval_groups, cfg.inval_per_group);
    let total = groups * per;
    let mut s = Section::new(
        "invalidate",
        format!(
            "Invalidate the {per} keys under one prefix among {}",
            fmt_num(total as f64)
        ),
        "µs",
        Better::Lower,
    );
    s.reference(SQ_INVALIDATE);
    let keys: Arc<Vec<QueryKey>> = Arc::new(
        (0..groups)
            .flat_map(|g| (0..per).map(move |j| key!["g", g, j]))
            .collect(),
    );
    let rt = multi_thread();
    let reps = cfg.inval_reps;

    let k = keys.clone();
    let (samples, populate_s) = on_worker(&rt, async move {
        let client = QueryClient::new();
        let t = Instant::now();
        for (i, k) in k.iter().enumerate() {
            client.set_query_data(k.clone(), i as u64).expect("set");
        }
        let populate_s = t.elapsed().as_secs_f64();
        let mut samples = Vec::with_capacity(reps);
        for rep in 0..reps {
            let prefix = key!["g", group_of(rep, groups)];
            let t = Instant::now();
            let n = client.invalidate_queries(prefix).await;
            samples.push(t.elapsed().as_nanos() as f64 / 1e3);
            assert_eq!(n, per, "invalidate_queries matched {n}");
        }
        // Cheap sanity check: the entries are there and now stale.
        let probe = key!["g", group_of(0, groups), 0];
        let st = client.get_query_state::<u64>(&probe).expect("entry");
        assert!(st.is_invalidated);
        (samples, populate_s)
    });
    s.push(Row::new(SQ_INVALIDATE, samples).note(format!(
        "prefix index; populating {} keys with set_query_data took {:.2} s",
        fmt_num(total as f64),
        populate_s
    )));

    let mut map: HashMap<QueryKey, Slot> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), (Arc::new(i as u64), false)))
        .collect();
    let mut samples = Vec::with_capacity(reps);
    for rep in 0..reps {
        let prefix = key!["g", group_of(rep, groups)];
        let t = Instant::now();
        let mut n = 0;
        for (k, slot) in map.iter_mut() {
            if k.starts_with(&prefix) {
                slot.1 = true;
                n += 1;
            }
        }
        samples.push(t.elapsed().as_nanos() as f64 / 1e3);
        assert_eq!(std::hint::black_box(n), per);
    }
    drop(map);
    s.push(Row::new(SCAN, samples).note("what a hand-written map (or moka) must do"));

    let mut tree: BTreeMap<QueryKey, Slot> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), (Arc::new(i as u64), false)))
        .collect();
    let mut samples = Vec::with_capacity(reps);
    for rep in 0..reps {
        let prefix = key!["g", group_of(rep, groups)];
        let t = Instant::now();
        let mut n = 0;
        for (_, slot) in tree
            .range_mut(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
        {
            slot.1 = true;
            n += 1;
        }
        samples.push(t.elapsed().as_nanos() as f64 / 1e3);
        assert_eq!(std::hint::black_box(n), per);
    }
    s.push(Row::new(ORDERED, samples).note("the lower bound for an index walk"));
    s.note(format!(
        "Each run invalidates a different group; stackquery marks the entries invalidated \
         (no observers, so no refetch). {reps} runs each. moka has no prefix index: its \
         `invalidate_entries_if` is a predicate applied by a scan of the whole cache."
    ));
    s
}
