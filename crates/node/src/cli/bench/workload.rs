//! The key-value scenarios: `put`, `range`, `txn-put` and `mixed`, one
//! [`Worker`] per client. Each holds its own KV client (a handle on one of
//! the run's shared connections) and its own seeded random generator, so a
//! run with the same `--seed` sends the same keys.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use zongheng_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use zongheng_proto::etcdserverpb::kv_client::KvClient;
use zongheng_proto::etcdserverpb::{request_op, response_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};

use super::report::{OpError, Recorder};
use super::{call, key_of, request, value_of, Consistency, LoadOptions, MixedArgs, PutArgs, RangeArgs, Worker};
use crate::cli::client::RESPONSE_BYTES_MAX;
use crate::cli::kv::prefix_range_end;

pub fn kv_client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX)
}

/// A per-client generator: the run's seed mixed with the client's index.
fn client_rng(seed: u64, client: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (client as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

pub struct PutWorker {
    kv: KvClient<Channel>,
    rng: StdRng,
    key_space: u64,
    sequential: bool,
    key_size: usize,
    value: Vec<u8>,
    timeout: Duration,
}

impl PutWorker {
    pub fn new(channel: Channel, client: usize, args: &PutArgs, load: &LoadOptions, timeout: Duration) -> PutWorker {
        PutWorker {
            kv: kv_client(channel),
            rng: client_rng(load.seed, client),
            key_space: args.key_space_size,
            sequential: args.sequential_keys,
            key_size: load.key_size,
            value: value_of(load.value_size),
            timeout,
        }
    }
}

impl Worker for PutWorker {
    async fn op(&mut self, index: u64, _extra: &mut Recorder) -> Result<(), OpError> {
        let key_index = if self.sequential {
            index % self.key_space
        } else {
            self.rng.gen_range(0..self.key_space)
        };
        let put = PutRequest {
            key: key_of(key_index, self.key_size),
            value: self.value.clone(),
            ..Default::default()
        };
        call(self.timeout, self.kv.put(request(put, self.timeout))).await?;
        Ok(())
    }
}

/// The `(key, range_end)` a `range` run reads.
pub fn range_of(args: &RangeArgs, key_size: usize) -> (Vec<u8>, Vec<u8>) {
    let key = match &args.key {
        Some(key) => key.clone().into_bytes(),
        None => key_of(0, key_size),
    };
    let range_end = if args.prefix {
        prefix_range_end(&key)
    } else {
        args.range_end.clone().map(String::into_bytes).unwrap_or_default()
    };
    (key, range_end)
}

pub struct RangeWorker {
    kv: KvClient<Channel>,
    range: RangeRequest,
    timeout: Duration,
}

impl RangeWorker {
    pub fn new(channel: Channel, key: Vec<u8>, range_end: Vec<u8>, args: &RangeArgs, timeout: Duration) -> RangeWorker {
        RangeWorker {
            kv: kv_client(channel),
            range: RangeRequest {
                key,
                range_end,
                limit: args.limit,
                serializable: args.consistency == Consistency::Serializable,
                ..Default::default()
            },
            timeout,
        }
    }
}

impl Worker for RangeWorker {
    async fn op(&mut self, _index: u64, _extra: &mut Recorder) -> Result<(), OpError> {
        call(self.timeout, self.kv.range(request(self.range.clone(), self.timeout))).await?;
        Ok(())
    }
}

/// Compare-and-set on mod revision. The worker remembers the mod revision
/// it last saw for each of its keys (0: the key does not exist) and sends
/// `if mod_revision(k) == seen { put k } else { get k }`; a failed compare
/// (another client wrote k, or k existed before the run) is a conflict,
/// counted, and teaches the worker the current revision.
pub struct TxnPutWorker {
    kv: KvClient<Channel>,
    client: u64,
    clients: u64,
    key_space: u64,
    key_size: usize,
    value: Vec<u8>,
    seen: HashMap<u64, i64>,
    sent: u64,
    timeout: Duration,
}

impl TxnPutWorker {
    pub fn new(channel: Channel, client: usize, key_space: u64, load: &LoadOptions, timeout: Duration) -> TxnPutWorker {
        TxnPutWorker {
            kv: kv_client(channel),
            client: client as u64,
            clients: load.clients as u64,
            key_space,
            key_size: load.key_size,
            value: value_of(load.value_size),
            seen: HashMap::new(),
            sent: 0,
            timeout,
        }
    }
}

impl Worker for TxnPutWorker {
    async fn op(&mut self, _index: u64, extra: &mut Recorder) -> Result<(), OpError> {
        // Client c cycles over keys c, c + clients, ...: with one key per
        // client, a key is never written by two clients.
        let key_index = (self.client + self.sent * self.clients) % self.key_space;
        self.sent += 1;
        let key = key_of(key_index, self.key_size);
        let expected = self.seen.get(&key_index).copied().unwrap_or(0);
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: key.clone(),
                range_end: vec![],
                target_union: Some(TargetUnion::ModRevision(expected)),
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key.clone(),
                    value: self.value.clone(),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key,
                    ..Default::default()
                })),
            }],
        };
        let response = call(self.timeout, self.kv.txn(request(txn, self.timeout))).await?;
        if response.succeeded {
            let revision = response.header.map(|header| header.revision).unwrap_or(0);
            self.seen.insert(key_index, revision);
            extra.count("txn_succeeded", 1);
        } else {
            let current = response
                .responses
                .iter()
                .find_map(|op| match &op.response {
                    Some(response_op::Response::ResponseRange(range)) => Some(range.kvs.first()?.mod_revision),
                    _ => None,
                })
                .unwrap_or(0);
            self.seen.insert(key_index, current);
            extra.count("txn_conflicts", 1);
        }
        Ok(())
    }
}

/// Reads with probability `read_ratio`, otherwise writes; keys at random.
pub struct MixedWorker {
    kv: KvClient<Channel>,
    rng: StdRng,
    read_ratio: f64,
    key_space: u64,
    key_size: usize,
    serializable: bool,
    value: Vec<u8>,
    timeout: Duration,
}

impl MixedWorker {
    pub fn new(
        channel: Channel,
        client: usize,
        args: &MixedArgs,
        load: &LoadOptions,
        timeout: Duration,
    ) -> MixedWorker {
        MixedWorker {
            kv: kv_client(channel),
            rng: client_rng(load.seed, client),
            read_ratio: args.read_ratio,
            key_space: args.key_space_size,
            key_size: load.key_size,
            serializable: args.consistency == Consistency::Serializable,
            value: value_of(load.value_size),
            timeout,
        }
    }
}

impl Worker for MixedWorker {
    async fn op(&mut self, _index: u64, extra: &mut Recorder) -> Result<(), OpError> {
        let key = key_of(self.rng.gen_range(0..self.key_space), self.key_size);
        let started = Instant::now();
        if self.rng.gen_bool(self.read_ratio) {
            let range = RangeRequest {
                key,
                serializable: self.serializable,
                ..Default::default()
            };
            call(self.timeout, self.kv.range(request(range, self.timeout))).await?;
            extra.phase("read", started.elapsed());
            extra.count("reads", 1);
        } else {
            let put = PutRequest {
                key,
                value: self.value.clone(),
                ..Default::default()
            };
            call(self.timeout, self.kv.put(request(put, self.timeout))).await?;
            extra.phase("write", started.elapsed());
            extra.count("writes", 1);
        }
        Ok(())
    }
}
