//! openraft's own storage conformance suite, run against our log store and
//! state machine on both engines. It checks what openraft relies on: log
//! state after appends, truncation and purges, vote persistence, membership
//! recovery from log and snapshot, snapshot install and re-apply of
//! committed entries.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use zongheng::meta::{MetaApp, MetaRaftConfig};
use zongheng::raft::log_store::LogStore;
use zongheng::raft::state_machine::StateMachineStore;
use zongheng::raft::META_GROUP;
use zongheng_storage::wal::{DirFiles, MemFiles, Wal};
use zongheng_storage::{Engine, MemEngine, RedbEngine};

type Log = LogStore<MetaRaftConfig>;
type Machine = StateMachineStore<MetaApp>;

struct MemBuilder;

impl StoreBuilder<MetaRaftConfig, Log, Machine, ()> for MemBuilder {
    async fn build(&self) -> Result<((), Log, Machine), StorageError<u64>> {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let wal = Arc::new(Wal::open(Arc::new(MemFiles::new())).expect("open an in-memory log"));
        Ok((
            (),
            LogStore::new(
                zongheng::raft::group_commit::GroupCommit::start(wal, engine.clone()),
                META_GROUP,
            ),
            StateMachineStore::open(engine, META_GROUP)?,
        ))
    }
}

struct RedbBuilder;

impl StoreBuilder<MetaRaftConfig, Log, Machine, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, Log, Machine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine: Arc<dyn Engine> = Arc::new(RedbEngine::open(dir.path().join("db.redb")).expect("open redb"));
        let files = DirFiles::open(dir.path().join("wal")).expect("open the log directory");
        let wal = Arc::new(Wal::open(Arc::new(files)).expect("open the log"));
        Ok((
            dir,
            LogStore::new(
                zongheng::raft::group_commit::GroupCommit::start(wal, engine.clone()),
                META_GROUP,
            ),
            StateMachineStore::open(engine, META_GROUP)?,
        ))
    }
}

#[test]
fn openraft_suite_on_the_memory_engine_and_log() {
    Suite::test_all(MemBuilder).unwrap();
}

#[test]
fn openraft_suite_on_redb_and_log_files() {
    Suite::test_all(RedbBuilder).unwrap();
}
