//! The partition-side Percolator rules, one case each.

use super::*;

fn ts(value: u64) -> Timestamp {
    // Physical ms = value, so TTL arithmetic reads naturally.
    Timestamp::new(value, 0)
}

fn put(key: &str, value: &str) -> Mutation {
    Mutation::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn key(key: &str) -> Vec<u8> {
    key.as_bytes().to_vec()
}

fn committed(store: &mut TxnStore, mutations: Vec<Mutation>, start: u64, commit: u64) {
    let primary = mutations[0].key().to_vec();
    let keys: Vec<Vec<u8>> = mutations.iter().map(|m| m.key().to_vec()).collect();
    store.prewrite(mutations, &primary, ts(start), 1_000).unwrap();
    store.commit(&keys, ts(start), ts(commit)).unwrap();
}

#[test]
fn readers_see_the_snapshot_at_their_timestamp() {
    let mut store = TxnStore::default();
    committed(&mut store, vec![put("a", "1")], 10, 11);
    committed(&mut store, vec![put("a", "2")], 20, 21);
    assert_eq!(store.get(b"a", ts(5)).unwrap(), None);
    assert_eq!(store.get(b"a", ts(11)).unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.get(b"a", ts(20)).unwrap(), Some(b"1".to_vec()));
    assert_eq!(store.get(b"a", ts(21)).unwrap(), Some(b"2".to_vec()));
    committed(&mut store, vec![Mutation::Delete { key: key("a") }], 30, 31);
    assert_eq!(store.get(b"a", ts(40)).unwrap(), None);
    assert_eq!(store.get(b"a", ts(25)).unwrap(), Some(b"2".to_vec()));
}

#[test]
fn a_lock_hides_the_key_from_readers_at_or_after_its_start() {
    let mut store = TxnStore::default();
    committed(&mut store, vec![put("a", "1")], 10, 11);
    store.prewrite(vec![put("a", "2")], b"a", ts(20), 1_000).unwrap();
    // A reader that started before the writer is not affected.
    assert_eq!(store.get(b"a", ts(15)).unwrap(), Some(b"1".to_vec()));
    match store.get(b"a", ts(25)) {
        Err(TxnError::Locked(info)) => {
            assert_eq!(info.start_ts, ts(20));
            assert_eq!(info.primary, key("a"));
        }
        other => panic!("expected a lock, got {other:?}"),
    }
}

#[test]
fn first_committer_wins() {
    let mut store = TxnStore::default();
    // T1 starts at 10, T2 at 12; T2 commits at 13; T1's prewrite must fail.
    committed(&mut store, vec![put("a", "t2")], 12, 13);
    let error = store.prewrite(vec![put("a", "t1")], b"a", ts(10), 1_000).unwrap_err();
    assert_eq!(
        error,
        TxnError::WriteConflict {
            key: key("a"),
            start_ts: ts(10),
            conflict_commit_ts: ts(13)
        }
    );
    assert!(error.retryable());
    assert_eq!(error.code(), "ZH_TXN_WRITE_CONFLICT");
    // A transaction that started after the commit goes through.
    store.prewrite(vec![put("a", "t3")], b"a", ts(14), 1_000).unwrap();
}

#[test]
fn a_locked_key_refuses_another_writer_and_nothing_is_locked_on_error() {
    let mut store = TxnStore::default();
    store.prewrite(vec![put("b", "x")], b"b", ts(10), 1_000).unwrap();
    let error = store
        .prewrite(vec![put("a", "y"), put("b", "y")], b"a", ts(11), 1_000)
        .unwrap_err();
    assert!(matches!(error, TxnError::Locked(_)));
    assert!(store.lock(b"a").is_none(), "a failed prewrite left a lock");
}

#[test]
fn retried_prewrite_and_commit_are_harmless() {
    let mut store = TxnStore::default();
    store.prewrite(vec![put("a", "1")], b"a", ts(10), 1_000).unwrap();
    store.prewrite(vec![put("a", "1")], b"a", ts(10), 1_000).unwrap();
    store.commit(&[key("a")], ts(10), ts(11)).unwrap();
    store.commit(&[key("a")], ts(10), ts(11)).unwrap();
    // A prewrite retried after its commit does not lock again.
    store.prewrite(vec![put("a", "1")], b"a", ts(10), 1_000).unwrap();
    assert_eq!(store.lock_count(), 0);
    assert_eq!(store.get(b"a", ts(12)).unwrap(), Some(b"1".to_vec()));
}

#[test]
fn commit_of_an_unknown_transaction_is_refused() {
    let mut store = TxnStore::default();
    let error = store.commit(&[key("a")], ts(10), ts(11)).unwrap_err();
    assert_eq!(error.code(), "ZH_TXN_NOT_FOUND");
    assert!(!error.retryable());
}

#[test]
fn rollback_blocks_a_late_commit_and_a_late_prewrite() {
    let mut store = TxnStore::default();
    store.prewrite(vec![put("a", "1")], b"a", ts(10), 1_000).unwrap();
    store.rollback(&[key("a")], ts(10)).unwrap();
    assert_eq!(
        store.commit(&[key("a")], ts(10), ts(11)),
        Err(TxnError::Aborted { start_ts: ts(10) })
    );
    assert_eq!(
        store.prewrite(vec![put("a", "1")], b"a", ts(10), 1_000),
        Err(TxnError::Aborted { start_ts: ts(10) })
    );
    assert_eq!(store.get(b"a", ts(20)).unwrap(), None);
    // The rollback record does not conflict with other writers.
    store.prewrite(vec![put("a", "2")], b"a", ts(5), 1_000).unwrap();
}

#[test]
fn a_committed_transaction_cannot_be_rolled_back() {
    let mut store = TxnStore::default();
    committed(&mut store, vec![put("a", "1")], 10, 11);
    assert_eq!(
        store.rollback(&[key("a")], ts(10)),
        Err(TxnError::AlreadyCommitted {
            start_ts: ts(10),
            commit_ts: ts(11)
        })
    );
    assert_eq!(store.get(b"a", ts(12)).unwrap(), Some(b"1".to_vec()));
}

#[test]
fn status_check_waits_for_a_live_lock_and_rolls_back_an_expired_one() {
    let mut store = TxnStore::default();
    store.prewrite(vec![put("p", "1")], b"p", ts(100), 500).unwrap();
    assert_eq!(
        store.check_txn_status(b"p", ts(100), ts(300)),
        TxnStatus::Locked { ttl_remaining_ms: 300 }
    );
    assert_eq!(store.check_txn_status(b"p", ts(100), ts(600)), TxnStatus::RolledBack);
    assert!(store.lock(b"p").is_none());
    // The owner waking up late cannot commit any more.
    assert_eq!(
        store.commit(&[key("p")], ts(100), ts(700)),
        Err(TxnError::Aborted { start_ts: ts(100) })
    );
}

#[test]
fn status_check_reports_a_commit() {
    let mut store = TxnStore::default();
    committed(&mut store, vec![put("p", "1")], 100, 150);
    assert_eq!(
        store.check_txn_status(b"p", ts(100), ts(10_000)),
        TxnStatus::Committed { commit_ts: ts(150) }
    );
}

#[test]
fn status_check_of_a_transaction_not_yet_prewritten_fences_it_out() {
    // A reader found a secondary lock; the primary's prewrite has not landed
    // (it may be delayed in the network). The check must stop it landing later.
    let mut store = TxnStore::default();
    assert_eq!(store.check_txn_status(b"p", ts(100), ts(100)), TxnStatus::RolledBack);
    assert_eq!(
        store.prewrite(vec![put("p", "1")], b"p", ts(100), 1_000),
        Err(TxnError::Aborted { start_ts: ts(100) })
    );
}

#[test]
fn resolve_rolls_secondaries_forward_or_back() {
    let mut store = TxnStore::default();
    store
        .prewrite(vec![put("s1", "a"), put("s2", "b")], b"p", ts(10), 1_000)
        .unwrap();
    store.resolve(&[key("s1")], ts(10), Some(ts(12)));
    store.resolve(&[key("s2")], ts(10), None);
    assert_eq!(store.get(b"s1", ts(20)).unwrap(), Some(b"a".to_vec()));
    assert_eq!(store.get(b"s2", ts(20)).unwrap(), None);
    assert_eq!(store.lock_count(), 0);
    // Resolving again, or resolving keys locked by someone else, does nothing.
    store.prewrite(vec![put("s1", "c")], b"s1", ts(30), 1_000).unwrap();
    store.resolve(&[key("s1"), key("s2")], ts(10), None);
    assert_eq!(store.lock(b"s1").unwrap().start_ts, ts(30));
}

#[test]
fn scan_merges_locks_and_versions_in_key_order() {
    let mut store = TxnStore::default();
    committed(&mut store, vec![put("a", "1"), put("b", "2"), put("d", "4")], 10, 11);
    committed(&mut store, vec![Mutation::Delete { key: key("b") }], 12, 13);
    let all = store.scan(b"", b"", ts(20), 100).unwrap();
    assert_eq!(all, vec![(key("a"), b"1".to_vec()), (key("d"), b"4".to_vec())]);
    assert_eq!(store.scan(b"", b"", ts(11), 2).unwrap().len(), 2);
    assert_eq!(
        store.scan(b"b", b"d", ts(11), 10).unwrap(),
        vec![(key("b"), b"2".to_vec())]
    );
    // A lock on a key not yet written stops a scan that reaches it.
    store.prewrite(vec![put("c", "3")], b"c", ts(15), 1_000).unwrap();
    assert!(matches!(store.scan(b"", b"", ts(20), 100), Err(TxnError::Locked(_))));
    assert_eq!(store.scan(b"", b"c", ts(20), 100).unwrap().len(), 1);
    // A scan that fills its limit before the lock is not stopped by it.
    assert_eq!(store.scan(b"", b"", ts(20), 1).unwrap().len(), 1);
}

#[test]
fn gc_keeps_what_readers_at_the_safe_point_can_see() {
    let mut store = TxnStore::default();
    committed(&mut store, vec![put("a", "1")], 10, 11);
    committed(&mut store, vec![put("a", "2")], 20, 21);
    committed(&mut store, vec![put("a", "3")], 30, 31);
    committed(&mut store, vec![put("b", "1")], 10, 11);
    committed(&mut store, vec![Mutation::Delete { key: key("b") }], 20, 21);
    store.prewrite(vec![put("c", "1")], b"c", ts(40), 1_000).unwrap();
    store.rollback(&[key("c")], ts(40)).unwrap();
    let dropped = store.gc(ts(25));
    assert_eq!(dropped, 3, "a@11 and b's put and delete go");
    assert_eq!(store.get(b"a", ts(25)).unwrap(), Some(b"2".to_vec()));
    assert_eq!(store.get(b"a", ts(35)).unwrap(), Some(b"3".to_vec()));
    assert_eq!(store.get(b"b", ts(25)).unwrap(), None);
    // The rollback record above the safe point stays.
    assert!(store.prewrite(vec![put("c", "1")], b"c", ts(40), 1_000).is_err());
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let mut store = TxnStore::default();
    assert_eq!(store.prewrite(vec![], b"a", ts(1), 1_000), Err(TxnError::Empty));
    assert_eq!(
        store.prewrite(vec![put("a", "1"), put("a", "2")], b"a", ts(1), 1_000),
        Err(TxnError::DuplicateKey { key: key("a") })
    );
    assert_eq!(
        store.prewrite(vec![put("a", "1")], b"a", ts(1), LOCK_TTL_MS_MAX + 1),
        Err(TxnError::BadTtl {
            ttl_ms: LOCK_TTL_MS_MAX + 1
        })
    );
    let many: Vec<Mutation> = (0..=MUTATIONS_PER_REQUEST_MAX)
        .map(|i| put(&format!("k{i}"), "v"))
        .collect();
    assert_eq!(
        store.prewrite(many, b"k0", ts(1), 1_000),
        Err(TxnError::TooManyMutations {
            count: MUTATIONS_PER_REQUEST_MAX + 1
        })
    );
    store.prewrite(vec![put("a", "1")], b"a", ts(10), 1_000).unwrap();
    assert_eq!(
        store.commit(&[key("a")], ts(10), ts(10)),
        Err(TxnError::BadTimestamps {
            start_ts: ts(10),
            commit_ts: ts(10)
        })
    );
    assert_eq!(store.lock_count(), 1);
}
