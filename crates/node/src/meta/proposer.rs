//! Group commit: the leader packs the writes waiting for the log into one
//! entry.
//!
//! openraft 0.9 makes every `client_write` an entry of its own, with its own
//! log append, flush request, replication notice and apply, so without help
//! every write pays all of those. etcd avoids this by
//! batching proposals between two Raft "ready" rounds; we do the same one
//! level up. Writes queue here; a task takes everything queued (up to
//! [`BATCH_COMMANDS_MAX`] commands or [`BATCH_BYTES_MAX`] bytes) and proposes
//! it as one [`MetaCommand::Batch`] entry, with at most
//! [`PROPOSALS_IN_FLIGHT_MAX`] entries being replicated at once. While those
//! are on their way, new writes gather into the next batch, so the batch
//! grows with the load and one fsync serves many writes. A write that finds
//! nothing else queued is proposed as itself, with no added delay.
//!
//! Applying a batch applies its commands in order, each at its own revision,
//! exactly as if they had been separate entries; each writer gets its own
//! response. A batch is all or nothing in the log: either every command of it
//! is committed or none is, and the outcome each writer sees follows from
//! that (a timeout means unknown, as for a lone write).

use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use prost::Message;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::command::{MetaCommand, MetaResponse};
use super::group::{write_error, MetaError, REQUEST_TIMEOUT};
use super::MetaRaftConfig;

/// Most commands packed into one log entry.
pub const BATCH_COMMANDS_MAX: usize = 512;
/// Most request bytes packed into one log entry (a single larger command,
/// up to the request size limit, still goes alone).
pub const BATCH_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Entries proposed and not yet applied at once; more writes wait and join
/// the next batch. openraft 0.9 pays for each entry on its own (one log
/// append, one flush request, one apply, each with its task wake-ups), so
/// fewer, larger entries cost less CPU per write: measured with
/// `bench/compare.sh` on 2 cores, 1, 2, 4 and 8 entries in flight gave 64
/// writers 0.84×, 0.81×, 0.68× and 0.63× etcd's puts/s. One in flight makes
/// every batch wait for the whole previous round (put-64 p99 1.68× etcd's,
/// against 1.16× with two), so two it is
/// (`bench/results/2026-12-06-9c744c7-proposals-in-flight.md`).
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 2;
/// Writes waiting for a batch; a writer beyond this waits for room (its
/// request deadline still applies).
pub const PROPOSAL_QUEUE_MAX: usize = 8192;
/// How long one entry may stay in flight. openraft 0.9 can leave a
/// `client_write` pending far past any deadline (a leader cut off from the
/// others keeps its entry pending), and an entry in flight holds one of the
/// [`PROPOSALS_IN_FLIGHT_MAX`] slots: without this bound, four such entries
/// stopped every later write on a node that led again after a partition
/// (coordination seed 210; `seed_210_stuck_proposals_do_not_stop_later_writes`). Its writers have given
/// up by then (their own deadline is the same); they are told "timed out",
/// the outcome is unknown, and the entry may still be committed later.
pub const PROPOSAL_IN_FLIGHT_TIMEOUT: Duration = REQUEST_TIMEOUT;

/// The outcome one writer gets: the command's response and the log index of
/// the entry that carried it.
pub type Outcome = Result<(MetaResponse, u64), MetaError>;

struct Proposal {
    command: MetaCommand,
    reply: oneshot::Sender<Outcome>,
}

/// The queue in front of the leader's log. Cheap to share; the batching task
/// stops when the last handle is dropped.
pub struct Proposer {
    queue: mpsc::Sender<Proposal>,
}

impl Proposer {
    /// Start the batching task for `raft` on the current runtime.
    pub fn start(raft: Raft<MetaRaftConfig>) -> Self {
        let (queue, waiting) = mpsc::channel(PROPOSAL_QUEUE_MAX);
        tokio::spawn(run(raft, waiting));
        Self { queue }
    }

    /// Propose `command` (on the leader) and wait for its outcome.
    pub async fn propose(&self, command: MetaCommand) -> Outcome {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Proposal { command, reply })
            .await
            .map_err(|_| MetaError::Stopped)?;
        outcome.await.map_err(|_| MetaError::Stopped)?
    }
}

async fn run(raft: Raft<MetaRaftConfig>, mut waiting: mpsc::Receiver<Proposal>) {
    let in_flight = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_MAX));
    // A command that did not fit the previous batch starts the next one.
    let mut carried: Option<Proposal> = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(proposal) => proposal,
            None => match waiting.recv().await {
                Some(proposal) => proposal,
                None => return,
            },
        };
        let mut bytes = approximate_size(&first.command);
        let mut batch = vec![first];
        while batch.len() < BATCH_COMMANDS_MAX {
            let Ok(next) = waiting.try_recv() else { break };
            let size = approximate_size(&next.command);
            if bytes + size > BATCH_BYTES_MAX {
                carried = Some(next);
                break;
            }
            bytes += size;
            batch.push(next);
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, batch).await;
            drop(permit);
        });
    }
}

/// Propose `batch` as one entry and answer every writer.
async fn propose(raft: &Raft<MetaRaftConfig>, mut batch: Vec<Proposal>) {
    // A writer that gave up (its request timed out or was cancelled) is still
    // proposed: it may already be counted on, and dropping it here would be a
    // second, silent way to lose a write the caller could not tell from a
    // timeout. Its answer is simply not read.
    if batch.len() == 1 {
        let Proposal { command, reply } = batch.pop().expect("one proposal");
        let outcome = match tokio::time::timeout(PROPOSAL_IN_FLIGHT_TIMEOUT, raft.client_write(command)).await {
            Err(_) => {
                tracing::warn!("a proposal stayed unanswered by Raft past its deadline; its slot is freed");
                Err(MetaError::Timeout)
            }
            Ok(written) => written
                .map(|written| (written.data, written.log_id.index))
                .map_err(write_error),
        };
        let _ = reply.send(outcome);
        return;
    }
    let (commands, replies): (Vec<MetaCommand>, Vec<oneshot::Sender<Outcome>>) = batch
        .into_iter()
        .map(|proposal| (proposal.command, proposal.reply))
        .unzip();
    let count = commands.len();
    let written = match tokio::time::timeout(
        PROPOSAL_IN_FLIGHT_TIMEOUT,
        raft.client_write(MetaCommand::Batch(commands)),
    )
    .await
    {
        Ok(written) => written.map_err(write_error),
        Err(_) => {
            tracing::warn!(
                count,
                "a batch stayed unanswered by Raft past its deadline; its slot is freed"
            );
            Err(MetaError::Timeout)
        }
    };
    match written {
        Ok(written) => {
            let index = written.log_id.index;
            match written.data {
                MetaResponse::Batch(responses) if responses.len() == count => {
                    for (reply, response) in replies.into_iter().zip(responses) {
                        let _ = reply.send(Ok((response, index)));
                    }
                }
                other => {
                    let error = MetaError::Internal(format!("a batch of {count} was answered with {other:?}"));
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// About how many bytes `command` takes in the log (its request's protobuf
/// size; small fixed-size commands count a little).
fn approximate_size(command: &MetaCommand) -> usize {
    use crate::store::shard_map::ShardMapCommand;
    const SMALL: usize = 32;
    match command {
        MetaCommand::Put(request) => request.encoded_len(),
        MetaCommand::DeleteRange(request) => request.encoded_len(),
        MetaCommand::Txn(request) => request.encoded_len(),
        MetaCommand::Compact(request) => request.encoded_len(),
        MetaCommand::PublishMember { name, client_urls, .. } => {
            SMALL + name.len() + client_urls.iter().map(String::len).sum::<usize>()
        }
        MetaCommand::Batch(commands) => commands.iter().map(approximate_size).sum(),
        MetaCommand::Store(ShardMapCommand::Create { replicas, .. }) => {
            SMALL + replicas.iter().map(|set| 8 * set.len()).sum::<usize>()
        }
        MetaCommand::Store(ShardMapCommand::ReportReplicas { voters, .. }) => SMALL + 8 * voters.len(),
        MetaCommand::Store(ShardMapCommand::Register { zone, .. }) => SMALL + zone.as_ref().map_or(0, String::len),
        MetaCommand::Store(_)
        | MetaCommand::LeaseGrant { .. }
        | MetaCommand::LeaseRevoke { .. }
        | MetaCommand::ForgetMember { .. }
        | MetaCommand::TimestampMark { .. } => SMALL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetaApp;
    use crate::raft::Application;
    use openraft::{CommittedLeaderId, LogId};
    use zongheng_proto::etcdserverpb::{PutRequest, TxnRequest};

    fn put(key: &str, value: &str) -> MetaCommand {
        MetaCommand::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            prev_kv: true,
            ..Default::default()
        })
    }

    #[test]
    fn a_batch_applies_like_separate_entries() {
        let log_id = |index| LogId::new(CommittedLeaderId::new(1, 1), index);
        let commands = vec![
            put("a", "1"),
            put("a", "2"),
            // Refused (a lease that does not exist): the others still apply.
            MetaCommand::Put(PutRequest {
                key: b"b".to_vec(),
                lease: 42,
                ..Default::default()
            }),
            MetaCommand::Txn(TxnRequest::default()),
            put("b", "3"),
        ];
        let mut one_by_one = MetaApp::default();
        let separate: Vec<MetaResponse> = commands
            .iter()
            .enumerate()
            .map(|(index, command)| one_by_one.apply(&log_id(index as u64 + 1), command))
            .collect();
        let mut batched = MetaApp::default();
        let response = batched.apply(&log_id(1), &MetaCommand::Batch(commands));
        assert_eq!(response, MetaResponse::Batch(separate.clone()));
        assert_eq!(batched, one_by_one);
        assert!(matches!(separate[2], MetaResponse::Refused(_)), "{:?}", separate[2]);
        // Revision 1 is the empty store; three puts add one each. The refused
        // put and the empty (read-only) txn add none, as in etcd.
        assert_eq!(batched.kv.revision(), 4);
    }

    #[test]
    fn a_put_counts_its_key_and_value() {
        let put = MetaCommand::Put(PutRequest {
            key: vec![b'k'; 100],
            value: vec![b'v'; 1000],
            ..Default::default()
        });
        let size = approximate_size(&put);
        assert!((1100..1120).contains(&size), "{size}");
        let batch = MetaCommand::Batch(vec![put.clone(), put]);
        assert_eq!(approximate_size(&batch), 2 * size);
    }
}
