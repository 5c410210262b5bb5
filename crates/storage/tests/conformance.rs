//! Runs the conformance suite on both engines, plus what only one engine can show:
//! redb across a reopen and across a real process crash, `MemEngine` across a
//! simulated crash.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use zongheng_storage::conformance::{run_all, run_crash, run_restart};
use zongheng_storage::{Durability, Engine, MemEngine, RedbEngine, WriteBatch};

fn put(engine: &impl Engine, key: &[u8], value: &[u8], durability: Durability) {
    let mut batch = WriteBatch::new();
    batch.put(key.to_vec(), value.to_vec());
    engine.write(batch, durability).unwrap();
}

#[test]
fn mem_engine_passes_the_suite() {
    run_all(MemEngine::new);
}

#[test]
fn redb_engine_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let files = AtomicUsize::new(0);
    run_all(|| {
        let n = files.fetch_add(1, Ordering::Relaxed);
        RedbEngine::open(dir.path().join(format!("engine-{n}.redb"))).unwrap()
    });
}

#[test]
fn an_engine_behind_arc_dyn_passes_the_suite() {
    run_all(|| Arc::new(MemEngine::new()) as Arc<dyn Engine>);
}

#[test]
fn redb_sync_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reopen.redb");
    run_restart(RedbEngine::open(&path).unwrap(), |engine| {
        drop(engine);
        RedbEngine::open(&path).unwrap()
    });
}

#[test]
fn redb_clean_close_keeps_buffered_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("close.redb");
    let engine = RedbEngine::open(&path).unwrap();
    put(&engine, b"buffered", b"1", Durability::Buffered);
    drop(engine);
    let engine = RedbEngine::open(&path).unwrap();
    assert_eq!(engine.get(b"buffered").unwrap(), Some(b"1".to_vec()));
}

#[test]
fn mem_engine_sync_writes_survive_a_restart() {
    run_restart(MemEngine::new(), |engine| {
        engine.crash();
        // The simulator keeps a handle and gives a clone to the restarted node.
        let restarted = engine.clone();
        drop(engine);
        restarted
    });
}

#[test]
fn mem_engine_crash_loses_exactly_the_buffered_writes() {
    run_crash(MemEngine::new(), |engine| {
        engine.crash();
        engine
    });
}

#[test]
fn redb_refuses_a_second_open_of_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.redb");
    let _engine = RedbEngine::open(&path).unwrap();
    let error = RedbEngine::open(&path).unwrap_err();
    assert_eq!(error.code(), "STORAGE_LOCKED", "{error}");
    assert!(error.to_string().contains("locked.redb"), "{error}");
}

#[test]
fn redb_refuses_a_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-db.redb");
    std::fs::write(&path, vec![0x42; 64 * 1024]).unwrap();
    let error = RedbEngine::open(&path).unwrap_err();
    assert_eq!(error.code(), "STORAGE_INCOMPATIBLE", "{error}");
}

#[test]
fn redb_open_in_a_missing_directory_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let error = RedbEngine::open(dir.path().join("missing").join("db.redb")).unwrap_err();
    assert_eq!(error.code(), "STORAGE_IO", "{error}");
    assert!(error.to_string().contains("data directory exists"), "{error}");
}

/// Set in the child process of [`redb_sync_writes_survive_a_process_crash`]: the file
/// it writes to before exiting without closing the database.
const CRASH_CHILD_ENV: &str = "ZONGHENG_STORAGE_CRASH_CHILD_DB";

/// Exit status of the child, to tell its deliberate crash from a failure.
const CRASH_CHILD_EXIT_CODE: i32 = 42;

/// The child half of [`redb_sync_writes_survive_a_process_crash`]; does nothing when
/// run as an ordinary test.
#[test]
fn redb_crash_child() {
    let Some(path) = std::env::var_os(CRASH_CHILD_ENV) else {
        return;
    };
    let engine = RedbEngine::open(PathBuf::from(path)).unwrap();
    put(&engine, b"synced", b"1", Durability::Sync);
    put(&engine, b"buffered-then-synced", b"1", Durability::Buffered);
    put(&engine, b"synced-later", b"1", Durability::Sync);
    put(&engine, b"only-buffered", b"1", Durability::Buffered);
    // Leave without closing the database or running any destructor, as a killed
    // process would.
    std::process::exit(CRASH_CHILD_EXIT_CODE);
}

fn run_crash_child(path: &Path) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "redb_crash_child", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_ENV, path)
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(CRASH_CHILD_EXIT_CODE),
        "the child failed before its crash"
    );
}

#[test]
fn redb_sync_writes_survive_a_process_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    run_crash_child(&path);

    // Reopening repairs the file after the unclean exit.
    let engine = RedbEngine::open(&path).unwrap();
    assert_eq!(engine.get(b"synced").unwrap(), Some(b"1".to_vec()));
    assert_eq!(
        engine.get(b"buffered-then-synced").unwrap(),
        Some(b"1".to_vec()),
        "a Sync write makes earlier buffered writes durable"
    );
    assert_eq!(engine.get(b"synced-later").unwrap(), Some(b"1".to_vec()));
    // `only-buffered` may or may not be there: redb promises only that a crash rolls
    // back to the last durable commit or a later buffered one. Either way the
    // database is whole and writable.
    put(&engine, b"after-crash", b"1", Durability::Sync);
    drop(engine);
    let engine = RedbEngine::open(&path).unwrap();
    assert_eq!(engine.get(b"after-crash").unwrap(), Some(b"1".to_vec()));
}
