//! The end of a coordination run: the sentinel, the authoritative history,
//! and the checks of lock, election, watch and lease safety against it (see
//! the module doc of `coordination` for what each check means).
//!
//! The checks are pure functions of the record and the history, so they are
//! tested on hand-made histories below.

use std::collections::BTreeMap;
use std::time::Duration;

use zongheng_proto::etcdserverpb::{request_op, PutRequest, RangeRequest, RequestOp, TxnRequest};

use super::events::{in_range, OwnerTimeline};
use super::lock::register_token;
use super::rpc::{call, Endpoints};
use super::watch::read_history;
use super::{
    now, AckedWrite, ClientContext, CoordinationRecord, EventRecord, WriteOutcome, ELECTION_NAME, LOCK_NAME,
    REGISTER_KEY, SENTINEL_KEYS,
};
use crate::invariants::Invariant;
use crate::trace::Trace;

/// How long the checker waits for the partitioned owner's keys to go.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(60);
/// How long the sentinel write may keep retrying.
const SENTINEL_DEADLINE: Duration = Duration::from_secs(60);
/// How long the watchers may take to reach the sentinel.
const WATCHERS_DEADLINE: Duration = Duration::from_secs(150);
/// How long reading one member's history may take.
const HISTORY_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between two polls.
const POLL: Duration = Duration::from_millis(250);

/// One finding: which invariant, and what was seen.
pub type Finding = (Invariant, String);

/// Run the end of a coordination run and report every finding to the
/// monitor. `context` is the checker's (its host is the nemesis host).
pub async fn final_checks(context: &ClientContext, trace: &Trace) {
    let endpoints = Endpoints::new(&context.nodes);
    let shared = &context.shared;
    while shared.active_clients() > 0 {
        tokio::time::sleep(POLL).await;
    }
    let mut findings = Vec::new();
    let expiring = shared.record().expiring;
    let mut node = 0usize;
    if let Some(expiring) = &expiring {
        let deadline = now() + EXPIRY_DEADLINE;
        loop {
            let mut present = 0;
            let mut answered = true;
            for key in &expiring.keys {
                let (_, rpc) = endpoints.node(node);
                let mut kv = rpc.kv;
                let request = RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                };
                match call(context.options.request_timeout, kv.range(request)).await {
                    Ok(response) => present += response.kvs.len(),
                    Err(_) => {
                        answered = false;
                        node += 1;
                    }
                }
            }
            if answered && present == 0 {
                trace.record(format!(
                    "checker: the partitioned owner's lease {:x} expired",
                    expiring.lease
                ));
                break;
            }
            if now() >= deadline {
                findings.push((
                    Invariant::LeaseSafety,
                    format!(
                        "lease {:x} of {} (partitioned at {} ms, never kept alive since) still has {present} key(s) {} s after healing",
                        expiring.lease,
                        super::lease::EXPIRING_OWNER,
                        expiring.isolated_at_ms,
                        EXPIRY_DEADLINE.as_secs()
                    ),
                ));
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    // The sentinel: one revision in every watched range.
    let deadline = now() + SENTINEL_DEADLINE;
    let mut end_revision = None;
    let mut attempt = 0u64;
    while now() < deadline {
        attempt += 1;
        let (_, rpc) = endpoints.node(node);
        let mut kv = rpc.kv;
        let request = TxnRequest {
            compare: vec![],
            success: SENTINEL_KEYS
                .iter()
                .map(|key| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key.as_bytes().to_vec(),
                        value: format!("end-{attempt}").into_bytes(),
                        ..Default::default()
                    })),
                })
                .collect(),
            failure: vec![],
        };
        match call(context.options.request_timeout, kv.txn(request)).await {
            Ok(response) => {
                end_revision = response.header.map(|header| header.revision);
                break;
            }
            Err(_) => {
                node += 1;
                tokio::time::sleep(POLL).await;
            }
        }
    }
    let Some(end_revision) = end_revision else {
        context.monitor.violation(
            Invariant::NoRecovery,
            format!(
                "the checker could not write the sentinel within {} s",
                SENTINEL_DEADLINE.as_secs()
            ),
        );
        return;
    };
    trace.record(format!("checker: sentinel at revision {end_revision}"));
    shared.set_end_revision(end_revision);
    shared.stats(|stats| stats.end_revision = end_revision);
    let deadline = now() + WATCHERS_DEADLINE;
    while shared.active_watchers() > 0 && now() < deadline {
        tokio::time::sleep(POLL).await;
    }

    // The authoritative history, from every running member.
    let mut histories: Vec<(String, Vec<EventRecord>)> = Vec::new();
    for (index, name) in context.nodes.iter().enumerate() {
        if !context.nemesis.is_configured(name) || !context.nemesis.is_running(name) {
            continue;
        }
        match read_history(context, &endpoints, index, end_revision, now() + HISTORY_DEADLINE).await {
            Ok(events) => histories.push((name.clone(), events)),
            Err(error) => findings.push((Invariant::WatchCompleteness, error)),
        }
    }
    let Some((first_node, history)) = histories.first().cloned() else {
        findings.push((
            Invariant::WatchCompleteness,
            "no member could replay the history".into(),
        ));
        report(context, findings);
        return;
    };
    let history: Vec<EventRecord> = history
        .into_iter()
        .filter(|event| event.revision <= end_revision)
        .collect();
    for (name, events) in &histories[1..] {
        let events: Vec<EventRecord> = events
            .iter()
            .filter(|event| event.revision <= end_revision)
            .cloned()
            .collect();
        if let Some(difference) = first_difference(&history, &events) {
            findings.push((
                Invariant::WatchCompleteness,
                format!("the histories of {first_node} and {name} differ: {difference}"),
            ));
        }
    }
    shared.stats(|stats| stats.history_events = history.len() as u64);
    let record = shared.record();
    let recorded = serde_json::to_vec(&(&record, &history)).expect("records serialize");
    shared.stats(|stats| stats.record_digest = super::fnv1a(&recorded));
    findings.extend(check_acknowledged(&record, &history));
    findings.extend(check_lock(&record, &history));
    findings.extend(check_election(&record, &history));
    findings.extend(check_watchers(&record, &history, end_revision));
    findings.extend(check_expiry(&record, &history));
    trace.record(format!(
        "checker: {} events in the history, {} findings",
        history.len(),
        findings.len()
    ));
    report(context, findings);
}

fn report(context: &ClientContext, findings: Vec<Finding>) {
    for (invariant, detail) in findings {
        context.monitor.violation(invariant, detail);
    }
}

/// The first place two event sequences differ, described.
pub fn first_difference(expected: &[EventRecord], got: &[EventRecord]) -> Option<String> {
    let index = (0..expected.len().max(got.len())).find(|&index| expected.get(index) != got.get(index))?;
    let describe = |event: Option<&EventRecord>| event.map_or("nothing".to_string(), ToString::to_string);
    Some(format!(
        "event {index} (of {} expected, {} received): expected {}, received {}",
        expected.len(),
        got.len(),
        describe(expected.get(index)),
        describe(got.get(index))
    ))
}

/// Every acknowledged put or delete is in the history at its revision.
pub fn check_acknowledged(record: &CoordinationRecord, history: &[EventRecord]) -> Vec<Finding> {
    let mut by_revision: BTreeMap<i64, Vec<&EventRecord>> = BTreeMap::new();
    for event in history {
        by_revision.entry(event.revision).or_default().push(event);
    }
    let mut findings = Vec::new();
    let mut writes: Vec<AckedWrite> = record.acked_writes.clone();
    writes.extend(record.register_writes.iter().filter_map(|write| match write.outcome {
        WriteOutcome::Applied { revision } => Some(AckedWrite {
            client: write.client.clone(),
            key: REGISTER_KEY.as_bytes().to_vec(),
            revision,
            value: Some(write.value.clone()),
        }),
        _ => None,
    }));
    for AckedWrite {
        client,
        key,
        revision,
        value,
    } in writes
    {
        let found = by_revision.get(&revision).is_some_and(|events| {
            events.iter().any(|event| {
                event.key == key
                    && match &value {
                        Some(value) => !event.deleted && event.value == *value,
                        None => event.deleted,
                    }
            })
        });
        if !found {
            findings.push((
                Invariant::WatchCompleteness,
                format!(
                    "{client}'s acknowledged {} of {} at revision {revision} is not in the history",
                    if value.is_some() { "put" } else { "delete" },
                    String::from_utf8_lossy(&key)
                ),
            ));
        }
    }
    findings
}

/// Lock safety (see the module doc of `coordination`).
pub fn check_lock(record: &CoordinationRecord, history: &[EventRecord]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let prefix = format!("{LOCK_NAME}/").into_bytes();
    let owners = OwnerTimeline::build(history, &prefix);
    for grant in &record.lock_grants {
        match owners.owner_at(grant.revision) {
            Some(owner) if owner.key == grant.key && owner.create_revision == grant.token => {}
            owner => findings.push((
                Invariant::LockSafety,
                format!(
                    "{} was granted the lock with {} (token {}) at revision {} ({} ms), but the owner at that revision was {}",
                    grant.client,
                    String::from_utf8_lossy(&grant.key),
                    grant.token,
                    grant.revision,
                    grant.at_ms,
                    owner.map_or("nobody".to_string(), |owner| format!(
                        "{} (created at {})",
                        String::from_utf8_lossy(&owner.key),
                        owner.create_revision
                    ))
                ),
            )),
        }
    }
    // Successive holders: tokens strictly increase with the grant revision
    // (a holder granted again after a lost answer keeps its token).
    let mut grants: Vec<_> = record.lock_grants.iter().collect();
    grants.sort_by_key(|grant| (grant.revision, grant.token));
    for pair in grants.windows(2) {
        let (earlier, later) = (pair[0], pair[1]);
        if later.token < earlier.token || (later.token == earlier.token && later.key != earlier.key) {
            findings.push((
                Invariant::LockSafety,
                format!(
                    "token {} ({}, granted at revision {}) after token {} ({}, granted at revision {})",
                    later.token, later.client, later.revision, earlier.token, earlier.client, earlier.revision
                ),
            ));
        } else if later.token == earlier.token && later.revision == earlier.revision && later.client != earlier.client {
            findings.push((
                Invariant::LockSafety,
                format!(
                    "{} and {} were both granted token {} at revision {}",
                    earlier.client, later.client, later.token, later.revision
                ),
            ));
        }
    }
    // The guarded register's history: accepted tokens never go down, so no
    // earlier holder's write comes after a later holder's.
    let register = REGISTER_KEY.as_bytes();
    let mut last: Option<(i64, i64, String)> = None; // (token, revision, value)
    for event in history.iter().filter(|event| event.key == register && !event.deleted) {
        let value = String::from_utf8_lossy(&event.value).into_owned();
        let Some(token) = register_token(&event.value) else {
            findings.push((
                Invariant::LockSafety,
                format!("the register holds {value:?} at revision {}", event.revision),
            ));
            continue;
        };
        if let Some((last_token, last_revision, last_value)) = &last {
            if token < *last_token {
                findings.push((
                    Invariant::LockSafety,
                    format!(
                        "the register accepted {value:?} (token {token}) at revision {} after {last_value:?} (token {last_token}) at revision {last_revision}: two critical sections interleave",
                        event.revision
                    ),
                ));
            }
        }
        last = Some((token, event.revision, value));
    }
    // Writes their client was told did not apply must not be there.
    let applied: BTreeMap<&[u8], i64> = history
        .iter()
        .filter(|event| event.key == register && !event.deleted)
        .map(|event| (event.value.as_slice(), event.revision))
        .collect();
    for write in &record.register_writes {
        if matches!(write.outcome, WriteOutcome::NotApplied { .. } | WriteOutcome::Failed) {
            if let Some(revision) = applied.get(write.value.as_slice()) {
                findings.push((
                    Invariant::LockSafety,
                    format!(
                        "{}'s register write {:?} was answered {:?} but is in the history at revision {revision}",
                        write.client,
                        String::from_utf8_lossy(&write.value),
                        write.outcome
                    ),
                ));
            }
        }
    }
    findings
}

/// Election safety (see the module doc of `coordination`).
pub fn check_election(record: &CoordinationRecord, history: &[EventRecord]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let prefix = format!("{ELECTION_NAME}/").into_bytes();
    let owners = OwnerTimeline::build(history, &prefix);
    for proclamation in &record.proclamations {
        match owners.owner_at(proclamation.revision) {
            Some(owner)
                if owner.key == proclamation.key
                    && owner.create_revision == proclamation.create_revision
                    && owner.value == proclamation.value => {}
            owner => findings.push((
                Invariant::ElectionSafety,
                format!(
                    "{} proclaimed {:?} with {} (rev {}) at revision {}, but the leader at that revision was {}",
                    proclamation.client,
                    String::from_utf8_lossy(&proclamation.value),
                    String::from_utf8_lossy(&proclamation.key),
                    proclamation.create_revision,
                    proclamation.revision,
                    owner.map_or("nobody".to_string(), |owner| format!(
                        "{} (rev {}) = {:?}",
                        String::from_utf8_lossy(&owner.key),
                        owner.create_revision,
                        String::from_utf8_lossy(&owner.value)
                    ))
                ),
            )),
        }
    }
    let mut last_by_observer: BTreeMap<&str, (i64, u64)> = BTreeMap::new();
    for observation in &record.observations {
        if let Some((last_revision, last_stream)) = last_by_observer.get(observation.observer.as_str()) {
            let backwards = observation.revision < *last_revision
                || (observation.revision == *last_revision && observation.stream == *last_stream);
            if backwards {
                findings.push((
                    Invariant::ElectionSafety,
                    format!(
                        "{} observed revision {} (stream {} via {}) after revision {last_revision} (stream {last_stream})",
                        observation.observer, observation.revision, observation.stream, observation.node
                    ),
                ));
            }
        }
        last_by_observer.insert(&observation.observer, (observation.revision, observation.stream));
        match owners.owner_at(observation.revision) {
            Some(owner)
                if owner.key == observation.key
                    && owner.create_revision == observation.create_revision
                    && owner.value == observation.value => {}
            owner => findings.push((
                Invariant::ElectionSafety,
                format!(
                    "{} observed leader {} (rev {}) = {:?} at revision {} via {}, but the leader at that revision was {}",
                    observation.observer,
                    String::from_utf8_lossy(&observation.key),
                    observation.create_revision,
                    String::from_utf8_lossy(&observation.value),
                    observation.revision,
                    observation.node,
                    owner.map_or("nobody".to_string(), |owner| format!(
                        "{} (rev {}) = {:?}",
                        String::from_utf8_lossy(&owner.key),
                        owner.create_revision,
                        String::from_utf8_lossy(&owner.value)
                    ))
                ),
            )),
        }
    }
    findings
}

/// Watch completeness: each watcher's events equal the history's for its
/// range from its start revision to the sentinel.
pub fn check_watchers(record: &CoordinationRecord, history: &[EventRecord], end_revision: i64) -> Vec<Finding> {
    let mut findings = Vec::new();
    for watcher in &record.watchers {
        if let Some(reason) = &watcher.incomplete {
            findings.push((
                Invariant::WatchCompleteness,
                format!("{} did not reach the sentinel: {reason}", watcher.name),
            ));
        }
        let expected: Vec<EventRecord> = history
            .iter()
            .filter(|event| {
                event.revision >= watcher.start_revision
                    && event.revision <= end_revision
                    && in_range(&event.key, &watcher.key, &watcher.range_end)
            })
            .cloned()
            .collect();
        let received: Vec<EventRecord> = watcher
            .events
            .iter()
            .filter(|event| event.revision <= end_revision)
            .cloned()
            .collect();
        if let Some(difference) = first_difference(&expected, &received) {
            findings.push((
                Invariant::WatchCompleteness,
                format!(
                    "{} (from revision {}, {} re-creations): {difference}",
                    watcher.name, watcher.start_revision, watcher.recreations
                ),
            ));
        }
    }
    findings
}

/// The partitioned owner's keys were deleted after they were created.
pub fn check_expiry(record: &CoordinationRecord, history: &[EventRecord]) -> Vec<Finding> {
    let Some(expiring) = &record.expiring else {
        return Vec::new();
    };
    expiring
        .keys
        .iter()
        .filter(|key| {
            !history
                .iter()
                .any(|event| event.key == **key && event.deleted && event.revision > expiring.created_revision)
        })
        .map(|key| {
            (
                Invariant::LeaseSafety,
                format!(
                    "no delete event for {} of the partitioned owner's lease {:x}",
                    String::from_utf8_lossy(key),
                    expiring.lease
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordination::lock::register_value;
    use crate::coordination::{LockGrant, Observation, RegisterWrite};

    fn put(revision: i64, key: &str, value: &[u8], create_revision: i64) -> EventRecord {
        EventRecord {
            revision,
            key: key.as_bytes().to_vec(),
            deleted: false,
            value: value.to_vec(),
            create_revision,
            lease: 0,
        }
    }

    fn delete(revision: i64, key: &str) -> EventRecord {
        EventRecord {
            deleted: true,
            ..put(revision, key, b"", 0)
        }
    }

    fn grant(client: &str, key: &str, token: i64, revision: i64) -> LockGrant {
        LockGrant {
            client: client.into(),
            key: key.as_bytes().to_vec(),
            token,
            revision,
            at_ms: 0,
        }
    }

    #[test]
    fn a_correct_lock_history_passes() {
        let history = vec![
            put(2, "lock/L/a", b"", 2),
            put(3, "lock/L/b", b"", 3),
            put(4, REGISTER_KEY, &register_value(2, "c1", 1), 4),
            delete(5, "lock/L/a"),
            put(6, REGISTER_KEY, &register_value(3, "c2", 1), 4),
        ];
        let record = CoordinationRecord {
            lock_grants: vec![grant("c1", "lock/L/a", 2, 2), grant("c2", "lock/L/b", 3, 5)],
            ..Default::default()
        };
        assert_eq!(check_lock(&record, &history), vec![]);
    }

    #[test]
    fn a_grant_to_a_waiter_and_an_interleaved_write_fail() {
        let history = vec![
            put(2, "lock/L/a", b"", 2),
            put(3, "lock/L/b", b"", 3),
            put(4, REGISTER_KEY, &register_value(3, "c2", 1), 4),
            put(5, REGISTER_KEY, &register_value(2, "c1", 1), 4),
        ];
        let record = CoordinationRecord {
            lock_grants: vec![grant("c2", "lock/L/b", 3, 3)],
            register_writes: vec![RegisterWrite {
                client: "c1".into(),
                token: 2,
                value: register_value(2, "c1", 1),
                outcome: WriteOutcome::NotApplied { revision: 5 },
            }],
            ..Default::default()
        };
        let findings = check_lock(&record, &history);
        assert_eq!(findings.len(), 3, "{findings:?}");
    }

    #[test]
    fn observers_must_follow_the_owner_forward() {
        let history = vec![
            put(2, "elect/E/a", b"v1", 2),
            put(3, "elect/E/b", b"w", 3),
            put(4, "elect/E/a", b"v2", 2),
        ];
        let observation = |revision: i64, value: &[u8], stream: u64| Observation {
            observer: "o".into(),
            node: "n1".into(),
            stream,
            revision,
            key: b"elect/E/a".to_vec(),
            value: value.to_vec(),
            create_revision: 2,
        };
        let good = CoordinationRecord {
            observations: vec![
                observation(2, b"v1", 1),
                observation(4, b"v2", 1),
                observation(4, b"v2", 2),
            ],
            ..Default::default()
        };
        assert_eq!(check_election(&good, &history), vec![]);
        let bad = CoordinationRecord {
            observations: vec![
                observation(4, b"v2", 1),
                observation(2, b"v1", 2),
                observation(3, b"v2", 2),
            ],
            ..Default::default()
        };
        assert_eq!(check_election(&bad, &history).len(), 2);
    }
}
