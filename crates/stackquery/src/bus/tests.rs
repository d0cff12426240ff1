//! The wire format and instance ids (no server needed).

use super::*;
use crate::key;

#[test]
fn every_kind_round_trips() {
    let origin = InstanceId::random();
    for kind in [
        BusMessageKind::Invalidate {
            scope: KeyScope::Exact(key!["user", 1]),
        },
        BusMessageKind::Invalidate {
            scope: KeyScope::All,
        },
        BusMessageKind::Invalidate {
            scope: KeyScope::Exact(key![]),
        },
        BusMessageKind::Set {
            key: key!["todo", "a \"quoted\" title", true],
        },
        BusMessageKind::Remove {
            scope: KeyScope::Prefix(key!["user"]),
        },
        BusMessageKind::Remove {
            scope: KeyScope::All,
        },
    ] {
        let msg = BusMessage::new(origin, kind);
        assert_eq!(BusMessage::decode(&msg.encode()).unwrap(), msg);
    }
}

#[test]
fn the_wire_format_is_stable() {
    let msg = BusMessage::new(
        InstanceId::from(0xabc),
        BusMessageKind::Remove {
            scope: KeyScope::Exact(key!["user", 1]),
        },
    );
    assert_eq!(
        String::from_utf8(msg.encode()).unwrap(),
        r#"{"v":1,"origin":"00000000000000000000000000000abc","kind":"remove","key":"[\"user\",1]","prefix":false}"#
    );
    let set =
        br#"{"v":1,"origin":"00000000000000000000000000000abc","kind":"set","key":"[\"a\"]"}"#;
    assert_eq!(
        BusMessage::decode(set).unwrap().kind,
        BusMessageKind::Set { key: key!["a"] }
    );
}

#[test]
fn unknown_fields_are_ignored_and_bad_messages_are_corrupt() {
    let extra =
        br#"{"v":2,"origin":"00000000000000000000000000000001","kind":"set","key":"[1]","at":5}"#;
    assert_eq!(
        BusMessage::decode(extra).unwrap().kind,
        BusMessageKind::Set { key: key![1] }
    );
    for bad in [
        &b""[..],
        b"not json",
        b"{}",
        br#"{"v":1,"origin":"00000000000000000000000000000001","kind":"explode","key":"[1]"}"#,
        br#"{"v":1,"origin":"xyz","kind":"set","key":"[1]"}"#,
        br#"{"v":1,"origin":"00000000000000000000000000000001","kind":"set","key":"user"}"#,
        br#"{"v":1,"origin":"00000000000000000000000000000001","kind":"set"}"#,
    ] {
        assert!(
            BusMessage::decode(bad).unwrap_err().is_corrupt(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn instance_ids_are_distinct_and_parse_back() {
    let ids: std::collections::HashSet<InstanceId> =
        (0..10_000).map(|_| InstanceId::random()).collect();
    assert_eq!(ids.len(), 10_000);
    for id in ids.iter().take(10) {
        assert_eq!(id.to_string().parse::<InstanceId>(), Ok(*id));
    }
    assert_eq!("".parse::<InstanceId>(), Err(ParseInstanceIdError));
    assert_eq!(
        "+0000000000000000000000000000001".parse::<InstanceId>(),
        Err(ParseInstanceIdError)
    );
    assert_eq!(
        format!("{:?}", InstanceId::from(1)),
        "InstanceId(00000000000000000000000000000001)"
    );
}

#[test]
fn scopes_keep_their_v1_wire_form() {
    let origin = InstanceId::from(1);
    let text = |kind| String::from_utf8(BusMessage::new(origin, kind).encode()).unwrap();
    let o = r#"{"v":1,"origin":"00000000000000000000000000000001","#;
    assert_eq!(
        text(BusMessageKind::Invalidate {
            scope: KeyScope::All
        }),
        format!(r#"{o}"kind":"invalidate","key":"[]","exact":false}}"#)
    );
    assert_eq!(
        text(BusMessageKind::Remove {
            scope: KeyScope::All
        }),
        format!(r#"{o}"kind":"remove","key":"[]","prefix":true}}"#)
    );
    assert_eq!(
        text(BusMessageKind::Remove {
            scope: KeyScope::Prefix(key!["a"])
        }),
        format!(r#"{o}"kind":"remove","key":"[\"a\"]","prefix":true}}"#)
    );
    // The empty key as a prefix is everything, whichever way it was built.
    let everything = BusMessage::new(
        origin,
        BusMessageKind::Invalidate {
            scope: KeyScope::Prefix(key![]),
        },
    );
    assert_eq!(
        BusMessage::decode(&everything.encode()).unwrap().kind,
        BusMessageKind::Invalidate {
            scope: KeyScope::All
        }
    );
}
