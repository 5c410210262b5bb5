//! Hand-written histories, each judged by every checker: the register model
//! (generic search per key), the etcd model (revision search, and the
//! generic search on the same model), and the exhaustive ground truth.

mod common;

use common::*;
use zongheng_check::{
    check, check_exhaustive, check_kv, check_register, EtcdKvModel, KvHistory, KvVerdict, RegisterModel,
};

struct Case {
    name: &'static str,
    history: KvHistory,
    /// Expected: linearizable as independent registers (revisions ignored).
    register: bool,
    /// Expected: linearizable with etcd's revisions.
    etcd: bool,
}

fn case(name: &'static str, register: bool, etcd: bool, builder: Builder) -> Case {
    Case {
        name,
        history: builder.build(),
        register,
        etcd,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case(
            "sequential put, get, cas, delete",
            true,
            true,
            Builder::new()
                .ok(1, 0, 1, put("x", "1"), put_ok(2))
                .ok(2, 2, 3, get("x"), got("1", 2, 2))
                .ok(1, 4, 5, cas("x", Some("1"), "2"), cas_ok(true, 3))
                .ok(2, 6, 7, get("x"), got("2", 3, 3))
                .ok(1, 8, 9, cas("x", Some("1"), "3"), cas_ok(false, 3))
                .ok(1, 10, 11, del("x"), deleted(1, 4))
                .ok(2, 12, 13, get("x"), got_nothing(4))
                .ok(1, 14, 15, del("x"), deleted(0, 4))
                .ok(2, 16, 17, cas("x", None, "4"), cas_ok(true, 5)),
        ),
        case(
            "stale read: a get misses a put that completed before it began",
            false,
            false,
            Builder::new()
                .ok(1, 0, 1, put("x", "a"), put_ok(2))
                .ok(1, 2, 3, put("x", "b"), put_ok(3))
                .ok(2, 4, 5, get("x"), got("a", 2, 2)),
        ),
        case(
            "lost write: an acknowledged put is never visible",
            false,
            false,
            Builder::new()
                .ok(1, 0, 1, put("x", "a"), put_ok(2))
                .ok(2, 2, 3, put("y", "b"), put_ok(3))
                .ok(3, 4, 5, get("x"), got_nothing(3)),
        ),
        case(
            "cas succeeded on a value that was already overwritten",
            false,
            false,
            Builder::new()
                .ok(1, 0, 1, put("x", "a"), put_ok(2))
                .ok(2, 2, 3, put("x", "b"), put_ok(3))
                .ok(3, 4, 5, cas("x", Some("a"), "c"), cas_ok(true, 4)),
        ),
        case(
            "cas refused although the value matched",
            false,
            false,
            Builder::new().ok(1, 0, 1, put("x", "a"), put_ok(2)).ok(
                2,
                2,
                3,
                cas("x", Some("a"), "c"),
                cas_ok(false, 2),
            ),
        ),
        case(
            "revisions out of real-time order (different keys)",
            true,
            false,
            Builder::new()
                .ok(1, 0, 1, put("x", "a"), put_ok(3))
                .ok(2, 2, 3, put("y", "b"), put_ok(2)),
        ),
        case(
            "read of a value never written",
            false,
            false,
            Builder::new()
                .ok(1, 0, 1, put("x", "a"), put_ok(2))
                .ok(2, 2, 3, get("x"), got("zzz", 2, 2)),
        ),
        case(
            "read of a value never written, with a revision nobody produced",
            false,
            false,
            Builder::new().ok(2, 2, 3, get("x"), got("zzz", 2, 2)),
        ),
        case(
            "unknown put that took effect (still running at the end)",
            true,
            true,
            Builder::new()
                .unknown(1, 0, None, put("x", "a"))
                .ok(2, 5, 6, get("x"), got("a", 2, 2)),
        ),
        case(
            "unknown put that did not take effect",
            true,
            true,
            Builder::new()
                .unknown(1, 0, Some(1), put("x", "a"))
                .ok(2, 5, 6, get("x"), got_nothing(1)),
        ),
        case(
            "unknown put that took effect after its client gave up",
            true,
            true,
            Builder::new()
                .ok(1, 0, 1, put("x", "a"), put_ok(2))
                .unknown(1, 2, Some(3), put("x", "b"))
                .ok(2, 4, 5, get("x"), got("a", 2, 2))
                .ok(2, 6, 7, get("x"), got("b", 3, 3)),
        ),
        case(
            "unknown put seen by a read that completed before it was invoked",
            false,
            false,
            Builder::new()
                .ok(2, 0, 5, get("x"), got("b", 2, 2))
                .unknown(1, 10, None, put("x", "b")),
        ),
        case(
            "unknown cas that took effect",
            true,
            true,
            Builder::new()
                .unknown(1, 0, Some(2), cas("x", None, "a"))
                .ok(2, 3, 4, get("x"), got("a", 2, 2))
                .ok(2, 5, 6, put("x", "b"), put_ok(3)),
        ),
        case(
            "concurrent puts and reads with several valid orders",
            true,
            true,
            Builder::new()
                .ok(1, 0, 10, put("x", "a"), put_ok(2))
                .ok(2, 1, 9, put("x", "b"), put_ok(3))
                .ok(3, 2, 8, get("x"), got("a", 2, 2))
                .ok(4, 3, 8, get("x"), got("b", 3, 3))
                .ok(3, 11, 12, get("x"), got("b", 3, 3)),
        ),
        case(
            "concurrent puts: the later-invoked one took effect first",
            true,
            true,
            Builder::new()
                .ok(1, 0, 10, put("x", "a"), put_ok(3))
                .ok(2, 1, 9, put("x", "b"), put_ok(2))
                .ok(3, 11, 12, get("x"), got("a", 3, 3)),
        ),
        case(
            "two reads disagree on the order of two concurrent puts",
            false,
            false,
            Builder::new()
                .ok(1, 0, 10, put("x", "a"), put_ok(2))
                .ok(2, 0, 10, put("x", "b"), put_ok(3))
                .ok(3, 11, 12, get("x"), got("b", 3, 3))
                .ok(4, 13, 14, get("x"), got("a", 2, 3)),
        ),
        case(
            "failed put is ignored",
            true,
            true,
            Builder::new()
                .failed(1, 0, 1, put("x", "a"))
                .ok(2, 2, 3, get("x"), got_nothing(1)),
        ),
        case(
            "a read sees a failed put",
            false,
            false,
            Builder::new()
                .failed(1, 0, 1, put("x", "a"))
                .ok(2, 2, 3, get("x"), got("a", 2, 2)),
        ),
        case(
            "delete of an absent key reports a deletion",
            false,
            false,
            Builder::new().ok(1, 0, 1, del("x"), deleted(1, 2)),
        ),
        case(
            "a gap in revisions filled by an unknown put of another key",
            true,
            true,
            Builder::new()
                .ok(1, 0, 1, put("x", "a"), put_ok(2))
                .unknown(2, 2, None, put("y", "q"))
                .ok(1, 5, 6, put("x", "b"), put_ok(4))
                .ok(3, 7, 8, get("x"), got("b", 4, 4)),
        ),
        case(
            "a gap in revisions that no write can fill",
            true,
            false,
            Builder::new()
                .ok(1, 0, 1, put("x", "a"), put_ok(2))
                .ok(1, 5, 6, put("x", "b"), put_ok(4))
                .ok(3, 7, 8, get("x"), got("b", 4, 4)),
        ),
        case(
            "a get reports a revision the store never reached",
            true,
            false,
            Builder::new()
                .ok(1, 0, 1, put("x", "a"), put_ok(2))
                .ok(2, 2, 3, get("x"), got("a", 2, 5)),
        ),
        case(
            "a get reports the wrong mod revision",
            true,
            false,
            Builder::new()
                .ok(1, 0, 1, put("x", "a"), put_ok(2))
                .ok(1, 2, 3, put("y", "b"), put_ok(3))
                .ok(2, 4, 5, get("x"), got("a", 3, 3)),
        ),
        case(
            "serializable read may be stale",
            true,
            true,
            Builder::new()
                .ok(1, 0, 1, put("x", "a"), put_ok(2))
                .ok(1, 2, 3, put("x", "b"), put_ok(3))
                .ok(2, 4, 5, sget("x"), got("a", 2, 2)),
        ),
        case(
            "serializable read goes below what its client saw",
            true,
            false,
            Builder::new()
                .ok(1, 0, 1, put("x", "a"), put_ok(2))
                .ok(2, 2, 3, put("x", "b"), put_ok(3))
                .ok(2, 4, 5, sget("x"), got("a", 2, 2)),
        ),
        case(
            "serializable read sees a write invoked after it completed",
            true,
            false,
            Builder::new()
                .ok(2, 0, 1, sget("x"), got("a", 2, 2))
                .ok(1, 5, 6, put("x", "a"), put_ok(2)),
        ),
        case(
            "serializable read's value is not the key's state at its revision",
            true,
            false,
            Builder::new()
                .ok(1, 0, 1, put("x", "a"), put_ok(2))
                .ok(1, 2, 3, put("x", "b"), put_ok(3))
                .ok(2, 4, 5, sget("x"), got("a", 2, 3)),
        ),
        case(
            "serializable read of a value never written",
            false,
            false,
            Builder::new()
                .ok(1, 0, 1, put("x", "a"), put_ok(2))
                .ok(2, 4, 5, sget("x"), got("c", 2, 2)),
        ),
    ]
}

fn describe(verdict: &KvVerdict) -> String {
    match verdict {
        KvVerdict::Linearizable => "linearizable".into(),
        other => other.to_string(),
    }
}

#[test]
fn every_checker_judges_every_case_as_expected() {
    let mut wrong = Vec::new();
    for case in cases() {
        let history = &case.history;
        let verdicts = [
            (
                "check_register",
                check_register(history).is_linearizable(),
                case.register,
            ),
            (
                "exhaustive register",
                check_exhaustive(&RegisterModel, history),
                case.register,
            ),
            ("check_kv", check_kv(history).is_linearizable(), case.etcd),
            (
                "generic etcd",
                check(&EtcdKvModel::default(), history).is_linearizable(),
                case.etcd,
            ),
            (
                "exhaustive etcd",
                check_exhaustive(&EtcdKvModel::default(), history),
                case.etcd,
            ),
        ];
        for (checker, got, expected) in verdicts {
            if got != expected {
                wrong.push(format!("{}: {checker} said {got}, expected {expected}", case.name));
            }
        }
        for (checker, verdict, expected) in [
            ("check_kv", check_kv(history), case.etcd),
            ("check_register", check_register(history), case.register),
        ] {
            if !expected {
                let report = verdict.report().expect("a rejected history has a report");
                assert!(
                    report.history.operations.iter().any(|op| op.id == report.stuck),
                    "{}: {checker}'s stuck operation is in its minimal history:\n{report}",
                    case.name
                );
                println!("--- {} ({checker})\n{}", case.name, describe(&verdict));
            }
        }
    }
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
}

#[test]
fn the_report_names_the_stale_read_and_keeps_what_explains_it() {
    let history = Builder::new()
        .ok(1, 0, 1, put("x", "a"), put_ok(2))
        .ok(4, 0, 1, put("z", "unrelated"), put_ok(3))
        .ok(1, 2, 3, put("x", "b"), put_ok(4))
        .ok(3, 3, 4, get("z"), got("unrelated", 3, 4))
        .ok(2, 5, 6, get("x"), got("a", 2, 2))
        .ok(3, 7, 8, get("x"), got("b", 4, 4))
        .build();
    for verdict in [check_kv(&history), check_register(&history)] {
        let report = verdict.report().expect("a stale read is not linearizable");
        let text = report.to_string();
        println!("{text}");
        let ids: Vec<u64> = report.history.operations.iter().map(|op| op.id).collect();
        // The stale get (#4), the put it read (#0) and the put it missed (#2).
        assert_eq!(report.stuck, 4, "{text}");
        assert!(ids.contains(&0) && ids.contains(&2) && ids.contains(&4), "{text}");
        assert!(
            !ids.contains(&3) && !ids.contains(&5),
            "unrelated reads are dropped: {text}"
        );
        assert!(text.contains("client 2") && text.contains("get \"x\""), "{text}");
        assert!(text.contains("longest linearizable prefix"), "{text}");
    }
}

#[test]
fn the_etcd_report_explains_revisions_out_of_order() {
    let history = Builder::new()
        .ok(1, 0, 1, put("x", "a"), put_ok(3))
        .ok(2, 2, 3, put("y", "b"), put_ok(2))
        .ok(3, 4, 5, get("x"), got("a", 3, 3))
        .build();
    let verdict = check_kv(&history);
    let report = verdict.report().expect("revisions contradict real time");
    println!("{report}");
    assert_eq!(report.stuck, 1);
    assert!(report.reason.contains("completed at"), "{report}");
}
