//! Cold hydration from SQLite: pending the persistence integration.
//!
//! Once stackquery's SQLite tier lands, this workload will write N entries to a SQLite
//! file, start a fresh client on it, and time the first `fetch_query` of every key
//! (served from the second tier, no fetch). Until then it is a labelled placeholder row.

use super::SQ_FETCH;
use crate::report::{Better, Row, Section};

pub(crate) fn pending() -> Section {
    let mut s = Section::new(
        "hydration",
        "Cold hydration from SQLite",
        "keys/s",
        Better::Higher,
    );
    s.push(
        Row::new(format!("{SQ_FETCH} (SQLite tier)"), Vec::new())
            .note("pending persistence integration"),
    );
    s.note("Not measured yet: pending persistence integration.");
    s
}
