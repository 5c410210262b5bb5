//! A failing history saved to a file replays through the checker with the
//! same verdict and report.

mod common;

use common::*;
use zongheng_check::{check_kv, check_register, KvHistory};

#[test]
fn a_saved_history_replays_to_the_same_verdict() {
    let history = Builder::new()
        .ok(1, 0, 1, put("x", "a"), put_ok(2))
        .ok(1, 2, 3, put("x", "b"), put_ok(3))
        .unknown(3, 3, None, cas("x", Some("b"), "c"))
        .failed(3, 0, 1, del("x"))
        .ok(2, 4, 5, get("x"), got("a", 2, 2))
        .build();
    let verdict = check_kv(&history);
    assert!(verdict.is_not_linearizable());

    let path = std::env::temp_dir().join(format!("zongheng-check-replay-{}.json", std::process::id()));
    std::fs::write(&path, history.to_json()).expect("write the history");
    let replayed = KvHistory::from_json(&std::fs::read_to_string(&path).expect("read it back")).expect("parse it");
    std::fs::remove_file(&path).expect("clean up");

    assert_eq!(replayed, history);
    assert_eq!(check_kv(&replayed), verdict);
    assert_eq!(check_register(&replayed), check_register(&history));
    // The minimal failing history saves and replays too.
    let report = verdict.report().expect("rejected");
    let minimal = KvHistory::from_json(&report.history.to_json()).expect("parse the minimal history");
    assert!(check_kv(&minimal).is_not_linearizable());
}
