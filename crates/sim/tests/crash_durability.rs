//! Storage that survives a simulated crash exactly as fsync would.
//!
//! - The simulated disk ([`MemEngine`]) loses exactly the writes made
//!   without a sync since the last synced write, checked against a model
//!   over a long seeded sequence of writes and crashes.
//! - A whole cluster crashed at once (every node loses its unsynced writes)
//!   and restarted still holds every write it acknowledged, and its nodes'
//!   Raft writes were all synced (the audited disk of every simulated node
//!   reports any that was not; `tests/mutations.rs` shows it catching the
//!   node's `mutation-ack-before-fsync` build).

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zongheng_sim::{SimClient, SimCluster, SimOptions, Trace, CLIENT_HOST};
use zongheng_storage::{Durability, Engine, MemEngine, WriteBatch};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn apply(model: &mut Model, batch: &WriteBatch) {
    for op in batch.ops() {
        match op {
            zongheng_storage::Op::Put { key, value } => {
                model.insert(key.clone(), value.clone());
            }
            zongheng_storage::Op::Delete { key } => {
                model.remove(key);
            }
            zongheng_storage::Op::DeleteRange { start, end } => {
                model.retain(|key, _| key < start || key >= end);
            }
        }
    }
}

fn contents(engine: &MemEngine) -> Model {
    engine
        .scan(&[], None, 65_536)
        .expect("in-memory scans do not fail")
        .into_iter()
        .collect()
}

/// 20 000 random batches (puts, deletes, range deletes over 64 keys), a
/// quarter of them synced, with a crash every ~200 writes: after each crash
/// the disk holds exactly what a model of "everything up to the last synced
/// write" holds, and reads before a crash see every write.
#[test]
fn a_crash_loses_exactly_the_writes_made_since_the_last_sync() {
    let mut rng = StdRng::seed_from_u64(20_261_122);
    let engine = MemEngine::new();
    let mut visible = Model::new();
    let mut durable = Model::new();
    let mut pending: Vec<WriteBatch> = Vec::new();
    let mut crashes = 0;
    for step in 0..20_000 {
        let mut batch = WriteBatch::new();
        for _ in 0..rng.gen_range(1..4) {
            let key = vec![b'k', rng.gen_range(0..64u8)];
            match rng.gen_range(0..10) {
                0 => {
                    let end = vec![b'k', key[1].saturating_add(rng.gen_range(1..8))];
                    batch.delete_range(key..end);
                }
                1 | 2 => {
                    batch.delete(key);
                }
                _ => {
                    batch.put(key, format!("v{step}").into_bytes());
                }
            }
        }
        let durability = if rng.gen_ratio(1, 4) {
            Durability::Sync
        } else {
            Durability::Buffered
        };
        apply(&mut visible, &batch);
        pending.push(batch.clone());
        engine.write(batch, durability).expect("valid batches are written");
        if durability == Durability::Sync {
            for batch in pending.drain(..) {
                apply(&mut durable, &batch);
            }
        }
        assert_eq!(contents(&engine), visible, "step {step}: reads see every write");
        if rng.gen_ratio(1, 200) {
            engine.crash();
            crashes += 1;
            pending.clear();
            visible = durable.clone();
            assert_eq!(
                contents(&engine),
                durable,
                "step {step}: a crash keeps exactly the synced writes"
            );
        }
    }
    assert!(crashes > 50, "the sequence should crash often ({crashes})");
}

/// Every node of a 3-node cluster crashes (unsynced writes lost) right after
/// the client's last acknowledged write, and restarts: every acknowledged
/// write is still there, on every node, and no node wrote a Raft entry or
/// vote without a sync.
#[test]
fn acknowledged_writes_survive_a_crash_of_every_node() {
    let cluster = SimCluster::new(SimOptions::new(11));
    let mut sim = cluster.build_sim();
    let nemesis = cluster.nemesis();
    let names = cluster.names().to_vec();
    let trace = Trace::default();
    let client_trace = trace.clone();
    sim.client(CLIENT_HOST, async move {
        let mut client = SimClient::new(&names);
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        client
            .agreed_leader(&all, Duration::from_secs(10))
            .await
            .map_err(|error| error.to_string())?;
        let mut acknowledged = Vec::new();
        for index in 0..40 {
            let key = format!("key/{index:02}");
            let (node, response) = client
                .put(&key, &format!("value-{index}"))
                .await
                .map_err(|error| format!("{key}: {error}"))?;
            let revision = response.header.map_or(0, |header| header.revision);
            client_trace.record(format!("put {key} via {node}: revision {revision}"));
            acknowledged.push(key);
        }
        for name in &names {
            nemesis.crash(name).await;
        }
        client_trace.record("crashed every node");
        tokio::time::sleep(Duration::from_secs(1)).await;
        for name in &names {
            nemesis.restart(name).await;
        }
        client_trace.record("restarted every node");
        let (revision, pairs) = client
            .converged_prefix(&all, "key/", Duration::from_secs(60))
            .await
            .map_err(|error| error.to_string())?;
        let keys: Vec<String> = pairs.into_iter().map(|(key, _)| key).collect();
        client_trace.record(format!("converged at revision {revision} with {} keys", keys.len()));
        if keys != acknowledged {
            return Err(
                format!("after the crash the nodes hold {keys:?}, not the acknowledged {acknowledged:?}").into(),
            );
        }
        Ok(())
    });
    let result = cluster.run(&mut sim);
    for event in trace.events() {
        println!("{event}");
    }
    result.expect("the scenario passes");
    let violations = cluster.monitor().violations();
    assert!(violations.is_empty(), "invariants broken: {violations:?}");
}
