//! The wire format and instance ids (no server needed).

use super::*;
use crate::key;

#[test]
fn every_kind_round_trips() {
    let origin = InstanceId::random();
    for kind in [
        BusMessageKind::Invalidate {
            key: key!["user", 1],
            exact: true,
        },
        BusMessageKind::Invalidate {
            key: key![],
            exact: false,
        },
        BusMessageKind::Set {
            key: key!["todo", "a \"quoted\" title", true],
        },
        BusMessageKind::Remove {
            key: key!["user"],
            prefix: true,
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
            key: key!["user", 1],
            prefix: false,
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
