//! The data-store scenarios: `store-put` (a one-key transaction per
//! operation: a start timestamp, a prewrite, a commit timestamp, the
//! primary's commit) and `store-get` (a snapshot read of one key: a start
//! timestamp and a read at the partition's leader). Keys are `bench/` plus
//! the run's zero-padded key; the client is the one `zongheng store` uses
//! ([`RemoteStore`], caching the shard map and sending each request straight
//! to its partition's leader), shared by every bench client.
//!
//! Around the measured phase the bench asks every endpoint for its node's
//! counters (`Store.NodeStats`) and reports how many synced writes the
//! cluster's Raft groups made and how many fsyncs carried them: the
//! group-commit effect (`fsyncs` below `synced_writes`).

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zongheng_proto::store::store_client::StoreClient;
use zongheng_proto::store::NodeStatsRequest;

use super::report::{OpError, Recorder};
use super::{key_of, value_of, LoadOptions, Worker};
use crate::store::client::{StoreError, Transaction, TxnOptions};
use crate::store::remote::RemoteStore;

/// Keys written per transaction by `--prefill`.
const PREFILL_BATCH: u64 = 256;

#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Keys are drawn from 0..N (use --prefill N so `store-get` finds them).
    #[arg(long, default_value_t = 100_000)]
    pub key_space_size: u64,
}

fn store_key(index: u64, key_size: usize) -> Vec<u8> {
    let mut key = b"bench/".to_vec();
    key.extend(key_of(index, key_size));
    key
}

fn op_error(error: StoreError) -> OpError {
    OpError::new(error.code().to_string(), &error.to_string())
}

pub struct StorePutWorker {
    store: Arc<RemoteStore>,
    rng: StdRng,
    key_space: u64,
    key_size: usize,
    value: Vec<u8>,
}

impl StorePutWorker {
    pub fn new(store: Arc<RemoteStore>, client: usize, args: &StoreArgs, load: &LoadOptions) -> Self {
        Self {
            store,
            rng: StdRng::seed_from_u64(load.seed ^ (client as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            key_space: args.key_space_size,
            key_size: load.key_size,
            value: value_of(load.value_size),
        }
    }
}

impl Worker for StorePutWorker {
    async fn op(&mut self, _index: u64, _extra: &mut Recorder) -> Result<(), OpError> {
        let key = store_key(self.rng.gen_range(0..self.key_space), self.key_size);
        let mut txn = Transaction::begin(&*self.store, TxnOptions::default())
            .await
            .map_err(op_error)?;
        txn.put(key, self.value.clone());
        txn.commit().await.map(|_| ()).map_err(op_error)
    }
}

pub struct StoreGetWorker {
    store: Arc<RemoteStore>,
    rng: StdRng,
    key_space: u64,
    key_size: usize,
}

impl StoreGetWorker {
    pub fn new(store: Arc<RemoteStore>, client: usize, args: &StoreArgs, load: &LoadOptions) -> Self {
        Self {
            store,
            rng: StdRng::seed_from_u64(load.seed ^ (client as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            key_space: args.key_space_size,
            key_size: load.key_size,
        }
    }
}

impl Worker for StoreGetWorker {
    async fn op(&mut self, _index: u64, extra: &mut Recorder) -> Result<(), OpError> {
        let key = store_key(self.rng.gen_range(0..self.key_space), self.key_size);
        let txn = Transaction::begin(&*self.store, TxnOptions::default())
            .await
            .map_err(op_error)?;
        match txn.get(&key).await.map_err(op_error)? {
            Some(_) => extra.count("found", 1),
            None => extra.count("missing", 1),
        }
        Ok(())
    }
}

/// Write keys `0..count` (not measured), `PREFILL_BATCH` per transaction.
pub async fn prefill(store: &RemoteStore, count: u64, load: &LoadOptions) -> anyhow::Result<()> {
    let value = value_of(load.value_size);
    let mut next = 0;
    while next < count {
        let end = (next + PREFILL_BATCH).min(count);
        let mut txn = Transaction::begin(store, TxnOptions::default()).await?;
        for index in next..end {
            txn.put(store_key(index, load.key_size), value.clone());
        }
        txn.commit().await?;
        next = end;
    }
    Ok(())
}

/// Counters summed over the nodes behind `channels` (each endpoint one
/// node), or `None` if one did not answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterCounters {
    pub synced_writes: u64,
    pub fsyncs: u64,
    pub raft_messages: u64,
    pub raft_batches: u64,
}

pub async fn cluster_counters(channels: &[tonic::transport::Channel]) -> Option<ClusterCounters> {
    let mut sum = ClusterCounters::default();
    for channel in channels {
        let mut client = StoreClient::new(channel.clone());
        let reply = client.node_stats(NodeStatsRequest {}).await.ok()?.into_inner();
        sum.synced_writes += reply.synced_writes;
        sum.fsyncs += reply.syncs;
        sum.raft_messages += reply.raft_messages;
        sum.raft_batches += reply.raft_batches;
    }
    Some(sum)
}
