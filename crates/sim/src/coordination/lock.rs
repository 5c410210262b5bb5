//! Lock clients: a session, `Lock`, the fencing token, fenced writes to a
//! guarded register, `Unlock`.
//!
//! The register holds `"<token, 20 digits>:<client>:<sequence>"`. A write is
//! one `Txn`: `value(register) < "<my token, 20 digits>;"`, then the put.
//! Byte order makes that "the stored token is at most mine" (`:` sorts
//! before `;`), so a holder may write several times, and a stale holder
//! (whose lock was lost and given to a later key) is refused once the later
//! holder has written. The register is created once, with token 0, by a
//! put-if-absent (a `Value` compare fails on a missing key).
//!
//! One grant in `CoordinationOptions::lock_stall_one_in` is followed by a stall longer than the
//! session's TTL with no keep-alives (Kleppmann's GC pause): the lease
//! expires, the lock passes on, and the stale holder then writes with its
//! old token, so the fence is exercised, not only the lock.

use std::time::Duration;

use rand::Rng;
use zongheng_proto::etcdserverpb::{compare, request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use zongheng_proto::v3lockpb::{LockRequest, UnlockRequest};

use super::lease::Session;
use super::rpc::{call, says, Endpoints};
use super::{now, now_ms, think, ClientContext, LockGrant, RegisterWrite, WriteOutcome, LOCK_NAME, REGISTER_KEY};
use crate::client::RequestError;

/// How much longer than the session TTL a stalled holder stays silent.
const STALL_EXTRA: Duration = Duration::from_millis(1_500);
/// How long a client keeps trying to create the register at the start.
const REGISTER_SETUP_DEADLINE: Duration = Duration::from_secs(30);

/// The register value a holder with `token` writes.
pub fn register_value(token: i64, client: &str, sequence: u64) -> Vec<u8> {
    format!("{token:020}:{client}:{sequence}").into_bytes()
}

/// The token a register value carries.
pub fn register_token(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value.get(..20)?).ok()?.parse().ok()
}

fn put_op(key: &[u8], value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value,
            ..Default::default()
        })),
    }
}

/// Create the register with token 0 unless it exists.
async fn set_up_register(context: &ClientContext, endpoints: &Endpoints, node: &mut usize) {
    let deadline = now() + REGISTER_SETUP_DEADLINE;
    while now() < deadline {
        let (_, rpc) = endpoints.node(*node);
        let mut kv = rpc.kv;
        let request = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Create as i32,
                key: REGISTER_KEY.as_bytes().to_vec(),
                range_end: vec![],
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
            }],
            success: vec![put_op(REGISTER_KEY.as_bytes(), register_value(0, "init", 0))],
            failure: vec![],
        };
        match call(context.options.request_timeout, kv.txn(request)).await {
            Ok(_) => return,
            Err(error) => {
                context.shared.count_failure(&error);
                *node += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// One lock client, until the run stops.
pub async fn run_lock_client(context: &ClientContext) {
    let endpoints = Endpoints::new(&context.nodes);
    let mut rng = context.rng();
    let mut node = rng.gen_range(0..context.nodes.len());
    let options = &context.options;
    set_up_register(context, &endpoints, &mut node).await;
    let mut session: Option<Session> = None;
    let mut sequence = 0u64;
    while now() < context.stop_at {
        think(&mut rng, options.think_time_max).await;
        if session.as_ref().is_none_or(|session| session.keeper.lost()) {
            if session.take().is_some() {
                context.shared.stats(|stats| stats.sessions_lost += 1);
            }
            session = Session::open(context, &endpoints, &mut node).await;
            continue;
        }
        let lease = session.as_ref().map_or(0, Session::lease);
        let (name, rpc) = endpoints.node(node);
        let mut lock = rpc.lock.clone();
        let request = LockRequest {
            name: LOCK_NAME.as_bytes().to_vec(),
            lease,
        };
        let (key, revision) = match call(options.wait_timeout, lock.lock(request)).await {
            Ok(response) => (response.key, response.header.map_or(0, |header| header.revision)),
            Err(error) => {
                context.shared.count_failure(&error);
                if says(&error, "session is expired") || says(&error, "lease not found") {
                    session = None;
                }
                // An unknown outcome leaves the key queued under the
                // session's lease; the next Lock with it takes the same place.
                node += 1;
                continue;
            }
        };
        // The token: the lock key's create revision.
        let mut kv = rpc.kv.clone();
        let token = match call(
            options.request_timeout,
            kv.range(RangeRequest {
                key: key.clone(),
                ..Default::default()
            }),
        )
        .await
        {
            Ok(response) => match response.kvs.first() {
                Some(kv) => kv.create_revision,
                None => {
                    // Lost already (the lease expired): nothing to guard.
                    continue;
                }
            },
            Err(error) => {
                context.shared.count_failure(&error);
                node += 1;
                continue;
            }
        };
        context.shared.update(|record| {
            record.lock_grants.push(LockGrant {
                client: context.host.clone(),
                key: key.clone(),
                token,
                revision,
                at_ms: now_ms(),
            });
            record.stats.lock_grants += 1;
        });
        tracing::debug!(client = %context.host, token, via = %name, "lock granted");
        if options.lock_stall_one_in > 0 && rng.gen_ratio(1, options.lock_stall_one_in) {
            // A stalled holder (a long GC pause): no keep-alives for longer
            // than the session's TTL, so its lease expires and the next
            // waiter takes the lock; then it writes anyway, with its old
            // token, as a real stale holder would. The fence must refuse it
            // once the next holder has written.
            if let Some(session) = session.take() {
                session.keeper.stop();
                context.shared.stats(|stats| stats.sessions_lost += 1);
            }
            tokio::time::sleep(Duration::from_secs(options.session_ttl_seconds as u64) + STALL_EXTRA).await;
        }
        for _ in 0..rng.gen_range(1..=2) {
            sequence += 1;
            let value = register_value(token, &context.host, sequence);
            let request = TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Less as i32,
                    target: compare::CompareTarget::Value as i32,
                    key: REGISTER_KEY.as_bytes().to_vec(),
                    range_end: vec![],
                    target_union: Some(compare::TargetUnion::Value(format!("{token:020};").into_bytes())),
                }],
                success: vec![put_op(REGISTER_KEY.as_bytes(), value.clone())],
                failure: vec![],
            };
            let (_, rpc) = endpoints.node(node);
            let mut kv = rpc.kv;
            let outcome = match call(options.request_timeout, kv.txn(request)).await {
                Ok(response) => {
                    let revision = response.header.map_or(0, |header| header.revision);
                    if response.succeeded {
                        WriteOutcome::Applied { revision }
                    } else {
                        WriteOutcome::NotApplied { revision }
                    }
                }
                Err(error) => {
                    context.shared.count_failure(&error);
                    node += 1;
                    match error {
                        RequestError::Refused { .. } => WriteOutcome::Failed,
                        RequestError::Unknown { .. } => WriteOutcome::Unknown,
                    }
                }
            };
            context.shared.update(|record| {
                match outcome {
                    WriteOutcome::Applied { .. } => record.stats.register_writes_accepted += 1,
                    WriteOutcome::NotApplied { .. } => record.stats.register_writes_fenced += 1,
                    WriteOutcome::Unknown => record.stats.register_writes_unknown += 1,
                    WriteOutcome::Failed => {}
                }
                record.register_writes.push(RegisterWrite {
                    client: context.host.clone(),
                    token,
                    value,
                    outcome: outcome.clone(),
                });
            });
            think(&mut rng, Duration::from_millis(100)).await;
        }
        think(&mut rng, Duration::from_millis(200)).await;
        let (_, rpc) = endpoints.node(node);
        let mut lock = rpc.lock;
        if let Err(error) = call(options.request_timeout, lock.unlock(UnlockRequest { key })).await {
            // The key stays under the session; the next Lock re-enters it.
            context.shared.count_failure(&error);
            node += 1;
        }
    }
    if let Some(session) = session {
        session.keeper.stop();
        super::lease::revoke(&endpoints, node, session.lease(), options.request_timeout).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_compares_tokens_by_bytes() {
        let bound = |token: i64| format!("{token:020};").into_bytes();
        assert!(register_value(5, "lock1", 1) < bound(5));
        assert!(register_value(4, "lock1", 9) < bound(5));
        assert!(register_value(6, "lock1", 1) > bound(5));
        assert_eq!(register_token(&register_value(123, "c", 4)), Some(123));
    }
}
