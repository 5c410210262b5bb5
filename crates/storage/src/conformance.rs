//! The conformance suite every [`Engine`] must pass, in the spirit of openraft's
//! `testing` suite: the contract of the trait written as executable checks, so the
//! in-memory engine the simulator uses cannot drift from redb, and a new engine knows
//! what it must do.
//!
//! It is public and behind no feature so that other crates' tests (a wrapper engine
//! that injects faults, say) can run it too:
//!
//! ```
//! zongheng_storage::conformance::run_all(zongheng_storage::MemEngine::new);
//! ```
//!
//! * [`run_all`]: the named checks, each on a fresh engine.
//! * [`run_restart`]: `Sync` writes survive a restart (redb: close and reopen the file).
//! * [`run_crash`]: the exact crash model of [`MemEngine`](crate::MemEngine): buffered
//!   writes are lost, `Sync` ones kept, and a `Sync` write makes earlier buffered ones
//!   durable. A real disk may keep more than this after a crash, so it is for engines
//!   that simulate crashes, not for redb.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::engine::{Durability, Engine, KeyValue};
use crate::keys::Key;
use crate::limits::{
    BATCH_OPS_MAX, BATCH_SIZE_BYTES_MAX, GET_MANY_KEYS_MAX, KEY_SIZE_BYTES_MAX, SCAN_LIMIT_MAX, VALUE_SIZE_BYTES_MAX,
};
use crate::{StorageError, WriteBatch};

type Pairs = Vec<KeyValue>;

/// One named check, run on a fresh engine.
struct Check<E> {
    name: &'static str,
    run: fn(&E),
}

/// Runs every named check, each on a fresh engine from `make`, and panics naming
/// every check that failed (after running all of them).
pub fn run_all<E: Engine>(make: impl Fn() -> E) {
    let checks: [Check<E>; 17] = [
        Check {
            name: "get_put_delete",
            run: get_put_delete::<E>,
        },
        Check {
            name: "overwrite",
            run: overwrite::<E>,
        },
        Check {
            name: "empty_values_and_empty_key",
            run: empty_values_and_empty_key::<E>,
        },
        Check {
            name: "delete_range_boundaries",
            run: delete_range_boundaries::<E>,
        },
        Check {
            name: "scan_bounds_and_limit",
            run: scan_bounds_and_limit::<E>,
        },
        Check {
            name: "scan_rev",
            run: scan_rev::<E>,
        },
        Check {
            name: "batch_order",
            run: batch_order::<E>,
        },
        Check {
            name: "batch_atomic_on_limit_error",
            run: batch_atomic_on_limit_error::<E>,
        },
        Check {
            name: "buffered_writes_visible",
            run: buffered_writes_visible::<E>,
        },
        Check {
            name: "large_values_up_to_the_limit",
            run: large_values_up_to_the_limit::<E>,
        },
        Check {
            name: "limit_errors",
            run: limit_errors::<E>,
        },
        Check {
            name: "bytes_0x00_and_0xff_in_keys",
            run: bytes_0x00_and_0xff_in_keys::<E>,
        },
        Check {
            name: "size_bytes_grows",
            run: size_bytes_grows::<E>,
        },
        Check {
            name: "raft_log_layout",
            run: raft_log_layout::<E>,
        },
        Check {
            name: "concurrent_batches_are_atomic",
            run: concurrent_batches_are_atomic::<E>,
        },
        Check {
            name: "empty_batches",
            run: empty_batches::<E>,
        },
        Check {
            name: "get_many_matches_get",
            run: get_many_matches_get::<E>,
        },
    ];
    let mut failed = Vec::new();
    for check in &checks {
        let engine = make();
        match catch_unwind(AssertUnwindSafe(|| (check.run)(&engine))) {
            Ok(()) => eprintln!("conformance {}: ok", check.name),
            Err(_) => {
                eprintln!("conformance {}: FAILED", check.name);
                failed.push(check.name);
            }
        }
    }
    assert!(failed.is_empty(), "storage conformance checks failed: {failed:?}");
}

/// Checks that `Sync` writes (puts, deletes, range deletes) survive `restart`, which
/// takes the engine and returns it after a restart: for redb, drop it and reopen the
/// same file; for the in-memory engine, crash it.
pub fn run_restart<E: Engine>(engine: E, restart: impl Fn(E) -> E) {
    let mut batch = WriteBatch::new();
    for n in 0u8..10 {
        batch.put(vec![b'k', n], vec![n; 100]);
    }
    batch.put(b"gone".to_vec(), b"x".to_vec());
    engine.write(batch, Durability::Sync).unwrap();
    let mut batch = WriteBatch::new();
    batch
        .delete(b"gone".to_vec())
        .delete_range(vec![b'k', 2]..vec![b'k', 5])
        .put(b"empty".to_vec(), Vec::new());
    engine.write(batch, Durability::Sync).unwrap();
    let expected = engine.scan(b"", None, SCAN_LIMIT_MAX).unwrap();
    assert_eq!(expected.len(), 8);

    let engine = restart(engine);
    assert_eq!(engine.scan(b"", None, SCAN_LIMIT_MAX).unwrap(), expected);
    assert_eq!(engine.get(b"gone").unwrap(), None);
    assert_eq!(engine.get(b"empty").unwrap(), Some(Vec::new()));

    put(&engine, b"after", b"restart", Durability::Sync);
    let engine = restart(engine);
    assert_eq!(engine.get(b"after").unwrap(), Some(b"restart".to_vec()));
    assert_eq!(engine.scan(b"", None, SCAN_LIMIT_MAX).unwrap().len(), 9);
}

/// Checks the exact crash model of a simulated engine: `crash` loses every write not
/// made durable by a `Sync` write and returns the engine as it restarts.
pub fn run_crash<E: Engine>(engine: E, crash: impl Fn(E) -> E) {
    put(&engine, b"a", b"1", Durability::Sync);
    put(&engine, b"b", b"1", Durability::Buffered);
    assert_eq!(engine.get(b"b").unwrap(), Some(b"1".to_vec()), "buffered is visible");
    let engine = crash(engine);
    assert_eq!(engine.get(b"a").unwrap(), Some(b"1".to_vec()), "sync write kept");
    assert_eq!(engine.get(b"b").unwrap(), None, "buffered write lost");

    // Overwrites and deletes that were only buffered are undone.
    put(&engine, b"a", b"2", Durability::Buffered);
    let engine = crash(engine);
    assert_eq!(engine.get(b"a").unwrap(), Some(b"1".to_vec()));
    delete(&engine, b"a", Durability::Buffered);
    let mut batch = WriteBatch::new();
    batch.delete_range(b"".to_vec()..b"z".to_vec());
    engine.write(batch, Durability::Buffered).unwrap();
    assert_eq!(engine.get(b"a").unwrap(), None);
    let engine = crash(engine);
    assert_eq!(engine.get(b"a").unwrap(), Some(b"1".to_vec()));

    // A Sync write makes the buffered writes before it durable, in order.
    put(&engine, b"c", b"1", Durability::Buffered);
    put(&engine, b"c", b"2", Durability::Buffered);
    delete(&engine, b"a", Durability::Buffered);
    put(&engine, b"d", b"1", Durability::Sync);
    put(&engine, b"e", b"1", Durability::Buffered);
    let engine = crash(engine);
    assert_eq!(
        engine.scan(b"", None, 10).unwrap(),
        vec![(b"c".to_vec(), b"2".to_vec()), (b"d".to_vec(), b"1".to_vec()),]
    );

    // An empty Sync batch is a flush.
    put(&engine, b"f", b"1", Durability::Buffered);
    engine.write(WriteBatch::new(), Durability::Sync).unwrap();
    let engine = crash(engine);
    assert_eq!(engine.get(b"f").unwrap(), Some(b"1".to_vec()));

    // Crashing twice in a row loses nothing more.
    let engine = crash(engine);
    assert_eq!(engine.scan(b"", None, 10).unwrap().len(), 3);
}

// ---- helpers ----

fn put<E: Engine>(engine: &E, key: &[u8], value: &[u8], durability: Durability) {
    let mut batch = WriteBatch::new();
    batch.put(key.to_vec(), value.to_vec());
    engine.write(batch, durability).unwrap();
}

fn delete<E: Engine>(engine: &E, key: &[u8], durability: Durability) {
    let mut batch = WriteBatch::new();
    batch.delete(key.to_vec());
    engine.write(batch, durability).unwrap();
}

fn delete_range<E: Engine>(engine: &E, start: &[u8], end: &[u8]) {
    let mut batch = WriteBatch::new();
    batch.delete_range(start.to_vec()..end.to_vec());
    engine.write(batch, Durability::Sync).unwrap();
}

fn keys_of(pairs: &Pairs) -> Vec<Vec<u8>> {
    pairs.iter().map(|(key, _)| key.clone()).collect()
}

fn all<E: Engine>(engine: &E) -> Pairs {
    engine.scan(b"", None, SCAN_LIMIT_MAX).unwrap()
}

fn fill<E: Engine>(engine: &E, keys: &[&[u8]]) {
    let mut batch = WriteBatch::new();
    for key in keys {
        batch.put(key.to_vec(), [b"v:", *key].concat());
    }
    engine.write(batch, Durability::Sync).unwrap();
}

fn to_vecs(keys: &[&[u8]]) -> Vec<Vec<u8>> {
    keys.iter().map(|key| key.to_vec()).collect()
}

#[track_caller]
fn assert_limit<T: std::fmt::Debug>(result: Result<T, StorageError>, limit_name: &str) {
    match result {
        Err(error @ StorageError::Limit { .. }) => {
            assert_eq!(error.code(), "STORAGE_LIMIT");
            assert!(error.is_invalid_input());
            assert!(error.to_string().contains(limit_name), "{error}");
        }
        other => panic!("expected a {limit_name} limit error, got {other:?}"),
    }
}

// ---- the checks ----

fn get_put_delete<E: Engine>(engine: &E) {
    assert_eq!(engine.get(b"k").unwrap(), None);
    put(engine, b"k", b"v", Durability::Sync);
    assert_eq!(engine.get(b"k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(engine.get(b"k\0").unwrap(), None, "no prefix match");
    assert_eq!(engine.get(b"").unwrap(), None);
    delete(engine, b"k", Durability::Sync);
    assert_eq!(engine.get(b"k").unwrap(), None);
    delete(engine, b"never-written", Durability::Sync);
    assert_eq!(all(engine), Vec::new());
}

fn get_many_matches_get<E: Engine>(engine: &E) {
    assert_eq!(engine.get_many(&[]).unwrap(), Vec::<Option<Vec<u8>>>::new());
    put(engine, b"a", b"1", Durability::Sync);
    put(engine, b"c", b"", Durability::Sync);
    put(engine, b"d", b"4", Durability::Buffered);
    let keys: Vec<Vec<u8>> = [&b"d"[..], b"a", b"b", b"c", b"a", b""]
        .iter()
        .map(|key| key.to_vec())
        .collect();
    let each: Vec<Option<Vec<u8>>> = keys.iter().map(|key| engine.get(key).unwrap()).collect();
    assert_eq!(
        engine.get_many(&keys).unwrap(),
        each,
        "in the keys' order, duplicates and all"
    );
    assert_eq!(
        each,
        vec![
            Some(b"4".to_vec()),
            Some(b"1".to_vec()),
            None,
            Some(Vec::new()),
            Some(b"1".to_vec()),
            None
        ]
    );
    let too_many = vec![b"a".to_vec(); GET_MANY_KEYS_MAX + 1];
    assert_limit(engine.get_many(&too_many), "GET_MANY_KEYS_MAX");
    let with_long_key = vec![b"a".to_vec(), vec![b'k'; KEY_SIZE_BYTES_MAX + 1]];
    assert_limit(engine.get_many(&with_long_key), "KEY_SIZE_BYTES_MAX");
}

fn overwrite<E: Engine>(engine: &E) {
    put(engine, b"k", b"first", Durability::Sync);
    put(engine, b"k", b"second, and longer", Durability::Sync);
    assert_eq!(engine.get(b"k").unwrap(), Some(b"second, and longer".to_vec()));
    put(engine, b"k", b"3", Durability::Buffered);
    assert_eq!(engine.get(b"k").unwrap(), Some(b"3".to_vec()));
    assert_eq!(all(engine).len(), 1);
}

fn empty_values_and_empty_key<E: Engine>(engine: &E) {
    put(engine, b"empty", b"", Durability::Sync);
    assert_eq!(engine.get(b"empty").unwrap(), Some(Vec::new()), "empty, not absent");
    put(engine, b"", b"empty key", Durability::Sync);
    assert_eq!(engine.get(b"").unwrap(), Some(b"empty key".to_vec()));
    assert_eq!(
        all(engine),
        vec![(Vec::new(), b"empty key".to_vec()), (b"empty".to_vec(), Vec::new()),]
    );
    delete(engine, b"", Durability::Sync);
    assert_eq!(engine.get(b"").unwrap(), None);
    assert_eq!(engine.get(b"empty").unwrap(), Some(Vec::new()));
}

fn delete_range_boundaries<E: Engine>(engine: &E) {
    let keys: [&[u8]; 7] = [b"a", b"b", b"b\0", b"ba", b"c", b"c\0", b"d"];
    fill(engine, &keys);

    // [b, c): start included, end excluded, keys extending the start included.
    delete_range(engine, b"b", b"c");
    let after: [&[u8]; 4] = [b"a", b"c", b"c\0", b"d"];
    assert_eq!(keys_of(&all(engine)), to_vecs(&after));

    // Empty, inverted and key-free ranges delete nothing.
    delete_range(engine, b"c", b"c");
    delete_range(engine, b"d", b"a");
    delete_range(engine, b"a\0", b"b");
    delete_range(engine, b"e", b"z");
    assert_eq!(keys_of(&all(engine)), to_vecs(&after));

    // An end bound just above a key keeps that key out only if it is the bound itself.
    delete_range(engine, b"c", b"c\0");
    let after: [&[u8]; 3] = [b"a", b"c\0", b"d"];
    assert_eq!(keys_of(&all(engine)), to_vecs(&after));

    // Everything, from the empty key up.
    delete_range(engine, b"", &[0xFF; 4]);
    assert_eq!(all(engine), Vec::new());
}

fn scan_bounds_and_limit<E: Engine>(engine: &E) {
    let keys: [&[u8]; 6] = [b"a", b"b", b"b\0", b"ba", b"c", b"d"];
    fill(engine, &keys);

    let scanned = engine.scan(b"b", Some(b"c"), 100).unwrap();
    let expected: [&[u8]; 3] = [b"b", b"b\0", b"ba"];
    assert_eq!(keys_of(&scanned), to_vecs(&expected));
    // A keys-only scan returns the same keys, for every bound and limit.
    for (start, end, limit) in [
        (&b"b"[..], Some(&b"c"[..]), 100),
        (b"bb", None, 100),
        (b"", None, 2),
        (b"", None, 0),
        (b"c", Some(b"b"), 100),
        (b"d", Some(b"d\0"), 100),
    ] {
        assert_eq!(
            engine.scan_keys(start, end, limit).unwrap(),
            keys_of(&engine.scan(start, end, limit).unwrap()),
            "{start:?}..{end:?} limit {limit}"
        );
    }
    assert_limit(engine.scan_keys(b"", None, SCAN_LIMIT_MAX + 1), "SCAN_LIMIT_MAX");
    assert_eq!(scanned[0].1, b"v:b".to_vec(), "values come with their keys");

    let expected: [&[u8]; 2] = [b"c", b"d"];
    assert_eq!(keys_of(&engine.scan(b"bb", None, 100).unwrap()), to_vecs(&expected));
    assert_eq!(keys_of(&engine.scan(b"", None, 2).unwrap()), to_vecs(&keys[..2]));
    assert_eq!(engine.scan(b"", None, 0).unwrap(), Vec::new());
    assert_eq!(engine.scan(b"", None, SCAN_LIMIT_MAX).unwrap().len(), keys.len());
    assert_eq!(engine.scan(b"b", Some(b"b"), 100).unwrap(), Vec::new());
    assert_eq!(engine.scan(b"c", Some(b"b"), 100).unwrap(), Vec::new());
    assert_eq!(engine.scan(b"e", None, 100).unwrap(), Vec::new());
    assert_eq!(engine.scan(b"", Some(b""), 100).unwrap(), Vec::new());
    let expected: [&[u8]; 1] = [b"d"];
    assert_eq!(
        keys_of(&engine.scan(b"d", Some(b"d\0"), 100).unwrap()),
        to_vecs(&expected)
    );

    // Paging with the last key plus a zero byte as the next start visits every key once.
    let mut paged = Vec::new();
    let mut start = Vec::new();
    loop {
        let page = engine.scan(&start, None, 2).unwrap();
        let Some((last, _)) = page.last() else { break };
        start = [last.as_slice(), &[0]].concat();
        paged.extend(keys_of(&page));
    }
    assert_eq!(paged, to_vecs(&keys));
}

fn scan_rev<E: Engine>(engine: &E) {
    let keys: [&[u8]; 6] = [b"a", b"b", b"b\0", b"ba", b"c", b"d"];
    fill(engine, &keys);

    let expected: [&[u8]; 3] = [b"ba", b"b\0", b"b"];
    let scanned = engine.scan_rev(b"b", Some(b"c"), 100).unwrap();
    assert_eq!(keys_of(&scanned), to_vecs(&expected));
    assert_eq!(scanned[0].1, b"v:ba".to_vec());

    // The limit keeps the largest keys.
    let expected: [&[u8]; 2] = [b"d", b"c"];
    assert_eq!(keys_of(&engine.scan_rev(b"", None, 2).unwrap()), to_vecs(&expected));
    let expected: [&[u8]; 1] = [b"ba"];
    assert_eq!(
        keys_of(&engine.scan_rev(b"", Some(b"c"), 1).unwrap()),
        to_vecs(&expected)
    );

    let mut reversed = to_vecs(&keys);
    reversed.reverse();
    assert_eq!(keys_of(&engine.scan_rev(b"", None, SCAN_LIMIT_MAX).unwrap()), reversed);
    assert_eq!(engine.scan_rev(b"", None, 0).unwrap(), Vec::new());
    assert_eq!(engine.scan_rev(b"b", Some(b"b"), 100).unwrap(), Vec::new());
    assert_eq!(engine.scan_rev(b"c", Some(b"b"), 100).unwrap(), Vec::new());
    assert_eq!(engine.scan_rev(b"e", None, 100).unwrap(), Vec::new());
    let expected: [&[u8]; 1] = [b"a"];
    assert_eq!(
        keys_of(&engine.scan_rev(b"", Some(b"b"), 100).unwrap()),
        to_vecs(&expected)
    );
}

fn batch_order<E: Engine>(engine: &E) {
    put(engine, b"existing", b"old", Durability::Sync);
    let mut batch = WriteBatch::new();
    batch
        // put then delete: gone
        .put(b"k1".to_vec(), b"v".to_vec())
        .delete(b"k1".to_vec())
        // delete then put: present
        .delete(b"k2".to_vec())
        .put(b"k2".to_vec(), b"v2".to_vec())
        // two puts: the last wins
        .put(b"k3".to_vec(), b"first".to_vec())
        .put(b"k3".to_vec(), b"last".to_vec())
        // a range delete removes what the batch wrote before it, not after
        .put(b"r1".to_vec(), b"x".to_vec())
        .put(b"r2".to_vec(), b"x".to_vec())
        .delete_range(b"r".to_vec()..b"s".to_vec())
        .put(b"r3".to_vec(), b"kept".to_vec())
        // and what was there before the batch
        .delete_range(b"existing".to_vec()..b"existing\0".to_vec());
    engine.write(batch, Durability::Sync).unwrap();
    assert_eq!(
        all(engine),
        vec![
            (b"k2".to_vec(), b"v2".to_vec()),
            (b"k3".to_vec(), b"last".to_vec()),
            (b"r3".to_vec(), b"kept".to_vec()),
        ]
    );
}

fn batch_atomic_on_limit_error<E: Engine>(engine: &E) {
    put(engine, b"k", b"before", Durability::Sync);
    let before = all(engine);
    let mut batch = WriteBatch::new();
    batch
        .put(b"k".to_vec(), b"after".to_vec())
        .delete_range(b"".to_vec()..b"z".to_vec())
        .put(b"new".to_vec(), vec![0; VALUE_SIZE_BYTES_MAX + 1])
        .put(b"other".to_vec(), b"x".to_vec());
    assert_limit(engine.write(batch.clone(), Durability::Sync), "VALUE_SIZE_BYTES_MAX");
    assert_limit(engine.write(batch, Durability::Buffered), "VALUE_SIZE_BYTES_MAX");
    assert_eq!(all(engine), before, "a refused batch changes nothing");
}

fn buffered_writes_visible<E: Engine>(engine: &E) {
    put(engine, b"a", b"1", Durability::Buffered);
    put(engine, b"b", b"2", Durability::Buffered);
    assert_eq!(engine.get(b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(engine.scan(b"", None, 10).unwrap().len(), 2);
    assert_eq!(engine.scan_rev(b"", None, 1).unwrap()[0].0, b"b".to_vec());
    delete(engine, b"a", Durability::Buffered);
    assert_eq!(engine.get(b"a").unwrap(), None);
    put(engine, b"c", b"3", Durability::Sync);
    assert_eq!(keys_of(&all(engine)), vec![b"b".to_vec(), b"c".to_vec()]);
}

fn large_values_up_to_the_limit<E: Engine>(engine: &E) {
    let key = vec![0xA5; KEY_SIZE_BYTES_MAX];
    let mut value = vec![0x5A; VALUE_SIZE_BYTES_MAX];
    value[0] = 1;
    value[VALUE_SIZE_BYTES_MAX / 2] = 2;
    value[VALUE_SIZE_BYTES_MAX - 1] = 3;
    let mut batch = WriteBatch::new();
    batch.put(key.clone(), value.clone());
    engine.write(batch, Durability::Sync).unwrap();
    let read = engine.get(&key).unwrap().expect("the largest value is stored");
    assert!(read == value, "the largest value reads back unchanged");
    drop(read);
    assert_eq!(engine.scan(&key, None, 1).unwrap()[0].1.len(), VALUE_SIZE_BYTES_MAX);

    // Many medium values in one batch, up to the batch size limit's order of magnitude.
    let mut batch = WriteBatch::new();
    for n in 0u16..64 {
        batch.put(n.to_be_bytes().to_vec(), vec![n as u8; 64 * 1024]);
    }
    engine.write(batch, Durability::Sync).unwrap();
    let scanned = engine.scan(b"", Some(&[0xA5]), 100).unwrap();
    assert_eq!(scanned.len(), 64);
    assert!(scanned
        .iter()
        .enumerate()
        .all(|(n, (_, value))| value == &vec![n as u8; 64 * 1024]));

    delete(engine, &key, Durability::Sync);
    assert_eq!(engine.get(&key).unwrap(), None);
}

fn limit_errors<E: Engine>(engine: &E) {
    put(engine, b"k", b"v", Durability::Sync);
    let before = all(engine);
    let long_key = vec![b'k'; KEY_SIZE_BYTES_MAX + 1];

    let mut batch = WriteBatch::new();
    batch.put(long_key.clone(), b"v".to_vec());
    assert_limit(engine.write(batch, Durability::Sync), "KEY_SIZE_BYTES_MAX");
    let mut batch = WriteBatch::new();
    batch.put(b"k".to_vec(), vec![0; VALUE_SIZE_BYTES_MAX + 1]);
    assert_limit(engine.write(batch, Durability::Sync), "VALUE_SIZE_BYTES_MAX");
    let mut batch = WriteBatch::new();
    batch.delete(long_key.clone());
    assert_limit(engine.write(batch, Durability::Sync), "KEY_SIZE_BYTES_MAX");
    let mut batch = WriteBatch::new();
    batch.delete_range(Vec::new()..long_key.clone());
    assert_limit(engine.write(batch, Durability::Sync), "KEY_SIZE_BYTES_MAX");

    let mut batch = WriteBatch::new();
    for _ in 0..=BATCH_OPS_MAX {
        batch.delete(b"k".to_vec());
    }
    assert_limit(engine.write(batch, Durability::Sync), "BATCH_OPS_MAX");

    // Each value within its limit, the sum above the batch's.
    let values_needed = BATCH_SIZE_BYTES_MAX / VALUE_SIZE_BYTES_MAX + 1;
    let mut batch = WriteBatch::new();
    for n in 0..values_needed {
        batch.put(vec![b'b', n as u8], vec![0; VALUE_SIZE_BYTES_MAX]);
    }
    assert_limit(engine.write(batch, Durability::Sync), "BATCH_SIZE_BYTES_MAX");

    assert_limit(engine.get(&long_key), "KEY_SIZE_BYTES_MAX");
    assert_limit(engine.scan(b"", None, SCAN_LIMIT_MAX + 1), "SCAN_LIMIT_MAX");
    assert_limit(engine.scan_rev(b"", None, usize::MAX), "SCAN_LIMIT_MAX");
    assert_limit(engine.scan(&long_key, None, 1), "KEY_SIZE_BYTES_MAX");
    assert_limit(engine.scan_rev(b"", Some(&long_key), 1), "KEY_SIZE_BYTES_MAX");

    assert_eq!(all(engine), before, "refused requests change nothing");

    // Exactly at the limits is fine.
    let mut batch = WriteBatch::new();
    for _ in 0..BATCH_OPS_MAX {
        batch.delete(b"absent".to_vec());
    }
    engine.write(batch, Durability::Sync).unwrap();
    let key = vec![b'k'; KEY_SIZE_BYTES_MAX];
    put(engine, &key, b"longest key", Durability::Sync);
    assert_eq!(engine.get(&key).unwrap(), Some(b"longest key".to_vec()));
    assert_eq!(engine.scan(&key, Some(&key), 1).unwrap(), Vec::new());
    assert_eq!(engine.scan_rev(b"", Some(&key), SCAN_LIMIT_MAX).unwrap(), before);
}

fn bytes_0x00_and_0xff_in_keys<E: Engine>(engine: &E) {
    // Written out of order; bytewise order is what comes back.
    let unordered: [&[u8]; 10] = [
        &[0xFF, 0xFF],
        &[0x00],
        b"a\xff",
        &[],
        b"a",
        &[0x00, 0x00],
        b"a\x00",
        &[0xFF],
        &[0x7F, 0xFF],
        &[0x80],
    ];
    let mut batch = WriteBatch::new();
    for key in unordered {
        batch.put(key.to_vec(), key.to_vec());
    }
    engine.write(batch, Durability::Sync).unwrap();
    let mut sorted = to_vecs(&unordered);
    sorted.sort();
    let scanned = all(engine);
    assert_eq!(keys_of(&scanned), sorted);
    assert!(scanned.iter().all(|(key, value)| key == value));
    for key in unordered {
        assert_eq!(engine.get(key).unwrap(), Some(key.to_vec()), "{key:?}");
    }
    let expected: [&[u8]; 2] = [&[0xFF], &[0xFF, 0xFF]];
    assert_eq!(keys_of(&engine.scan(&[0xFF], None, 10).unwrap()), to_vecs(&expected));
    let expected: [&[u8]; 3] = [&[0x00, 0x00], &[0x00], &[]];
    assert_eq!(
        keys_of(&engine.scan_rev(b"", Some(&[0x01]), 10).unwrap()),
        to_vecs(&expected)
    );
    delete_range(engine, &[0x00], &[0x00, 0x00, 0x00]);
    let expected: [&[u8]; 1] = [&[]];
    assert_eq!(
        keys_of(&engine.scan(b"", Some(&[0x01]), 10).unwrap()),
        to_vecs(&expected)
    );
    delete_range(engine, &[0xFF], &[0xFF, 0xFF, 0x00]);
    assert_eq!(engine.scan(&[0xFF], None, 10).unwrap(), Vec::new());
}

fn size_bytes_grows<E: Engine>(engine: &E) {
    let before = engine.size_bytes().unwrap();
    let mut batch = WriteBatch::new();
    for n in 0u32..256 {
        batch.put(n.to_be_bytes().to_vec(), vec![n as u8; 4096]);
    }
    engine.write(batch, Durability::Sync).unwrap();
    let after = engine.size_bytes().unwrap();
    assert!(
        after >= before + 1024 * 1024,
        "size_bytes {before} -> {after} after writing 1 MiB"
    );
}

fn raft_log_layout<E: Engine>(engine: &E) {
    let groups = [0, 1, 2, u64::MAX];
    let mut batch = WriteBatch::new();
    for group in groups {
        batch.put(Key::RaftVote { group }.encode(), b"vote".to_vec());
        batch.put(Key::RaftPurged { group }.encode(), b"purged".to_vec());
        batch.put(Key::SnapshotMeta { group }.encode(), b"meta".to_vec());
        batch.put(
            Key::StateMachine {
                group,
                key: b"x".to_vec(),
            }
            .encode(),
            b"sm".to_vec(),
        );
        // Written in descending index order: storage order must not depend on it.
        for index in (1..=300u64).rev() {
            batch.put(Key::RaftLog { group, index }.encode(), index.to_be_bytes().to_vec());
        }
    }
    engine.write(batch, Durability::Sync).unwrap();

    let log_indexes = |group: u64| -> Vec<u64> {
        let (start, end) = Key::raft_log_range(group);
        engine
            .scan(&start, Some(&end), SCAN_LIMIT_MAX)
            .unwrap()
            .into_iter()
            .map(|(key, _)| match Key::decode(&key).unwrap() {
                Key::RaftLog { group: g, index } if g == group => index,
                other => panic!("{other:?} in the log range of group {group}"),
            })
            .collect()
    };
    for group in groups {
        assert_eq!(log_indexes(group), (1..=300).collect::<Vec<u64>>(), "group {group}");
        let (start, end) = Key::raft_log_range(group);
        let last = engine.scan_rev(&start, Some(&end), 1).unwrap();
        assert_eq!(Key::decode(&last[0].0).unwrap(), Key::RaftLog { group, index: 300 });
    }

    // Purge a prefix and truncate a suffix of group 1 only.
    let mut batch = WriteBatch::new();
    let (start, end) = Key::raft_log_range_upto(1, 255);
    batch.delete_range(start..end);
    let (start, end) = Key::raft_log_range_from(1, 257);
    batch.delete_range(start..end);
    engine.write(batch, Durability::Sync).unwrap();
    assert_eq!(log_indexes(1), vec![256]);
    for group in [0, 2, u64::MAX] {
        assert_eq!(log_indexes(group).len(), 300, "group {group} untouched");
    }
    assert_eq!(
        engine.get(&Key::RaftPurged { group: 1 }.encode()).unwrap(),
        Some(b"purged".to_vec())
    );
    assert_eq!(
        engine.get(&Key::SnapshotMeta { group: 1 }.encode()).unwrap(),
        Some(b"meta".to_vec())
    );
}

fn concurrent_batches_are_atomic<E: Engine>(engine: &E) {
    const WRITERS: u8 = 4;
    const BATCHES: u8 = 50;
    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            scope.spawn(move || {
                for n in 0..BATCHES {
                    let mut batch = WriteBatch::new();
                    batch.put(vec![writer, n, 0], vec![n]);
                    batch.put(vec![writer, n, 1], vec![n]);
                    let durability = if n % 10 == 9 {
                        Durability::Sync
                    } else {
                        Durability::Buffered
                    };
                    engine.write(batch, durability).unwrap();
                }
            });
        }
        scope.spawn(|| {
            for _ in 0..50 {
                let pairs = all(engine);
                for (key, _) in &pairs {
                    let partner = [key[0], key[1], 1 - key[2]];
                    assert!(
                        pairs.iter().any(|(other, _)| other.as_slice() == partner),
                        "saw {key:?} without {partner:?}: a batch was half applied"
                    );
                }
                let rev = engine.scan_rev(b"", None, SCAN_LIMIT_MAX).unwrap();
                assert_eq!(rev.len() % 2, 0);
            }
        });
    });
    assert_eq!(all(engine).len(), usize::from(WRITERS) * usize::from(BATCHES) * 2);
}

fn empty_batches<E: Engine>(engine: &E) {
    put(engine, b"k", b"v", Durability::Buffered);
    engine.write(WriteBatch::new(), Durability::Buffered).unwrap();
    engine.write(WriteBatch::new(), Durability::Sync).unwrap();
    assert_eq!(all(engine), vec![(b"k".to_vec(), b"v".to_vec())]);
}
