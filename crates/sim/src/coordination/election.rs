//! Campaigners and observers of one election.
//!
//! A campaigner opens a session, campaigns with a value of its own, and once
//! elected proclaims one to three new values and resigns. Every successful
//! proclamation is recorded with the revision it landed at: the checker
//! requires the campaigner's key to own the election at that revision, so a
//! `Campaign` that answered before its key's turn shows up as a proclamation
//! by a non-owner.
//!
//! An observer keeps one `Observe` stream open and records each answer;
//! when the stream breaks, or says nothing for [`OBSERVE_SILENCE`] (a node
//! partitioned away is silent, not closed), it opens a new one on the next
//! node. Its answers must never go back in revision, across streams.

use std::time::Duration;

use rand::Rng;
use zongheng_proto::v3electionpb::{CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest};

use super::lease::Session;
use super::rpc::{call, says, Endpoints};
use super::{now, think, ClientContext, Observation, Proclamation, ELECTION_NAME};

/// How long an observer waits for an answer before re-opening its stream
/// elsewhere (elections change often in this workload).
const OBSERVE_SILENCE: Duration = Duration::from_secs(5);

/// One campaigner, until the run stops.
pub async fn run_campaigner(context: &ClientContext) {
    let endpoints = Endpoints::new(&context.nodes);
    let mut rng = context.rng();
    let mut node = rng.gen_range(0..context.nodes.len());
    let options = &context.options;
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
        sequence += 1;
        let (_, rpc) = endpoints.node(node);
        let mut election = rpc.election;
        let request = CampaignRequest {
            name: ELECTION_NAME.as_bytes().to_vec(),
            lease,
            value: format!("{}-{sequence}", context.host).into_bytes(),
        };
        let leader = match call(options.wait_timeout, election.campaign(request)).await {
            Ok(response) => match response.leader {
                Some(leader) => leader,
                None => continue,
            },
            Err(error) => {
                context.shared.count_failure(&error);
                if says(&error, "session is expired") || says(&error, "lease not found") {
                    session = None;
                }
                node += 1;
                continue;
            }
        };
        context.shared.stats(|stats| stats.campaigns_won += 1);
        for round in 0..rng.gen_range(1..=3) {
            let value = format!("{}-{sequence}-p{round}", context.host).into_bytes();
            let (_, rpc) = endpoints.node(node);
            let mut election = rpc.election;
            let request = ProclaimRequest {
                leader: Some(leader.clone()),
                value: value.clone(),
            };
            match call(options.request_timeout, election.proclaim(request)).await {
                Ok(response) => {
                    let revision = response.header.map_or(0, |header| header.revision);
                    context.shared.update(|record| {
                        record.proclamations.push(Proclamation {
                            client: context.host.clone(),
                            key: leader.key.clone(),
                            create_revision: leader.rev,
                            value,
                            revision,
                        });
                        record.stats.proclaims += 1;
                    });
                }
                Err(error) => {
                    context.shared.count_failure(&error);
                    node += 1;
                    break;
                }
            }
            think(&mut rng, Duration::from_millis(150)).await;
        }
        let (_, rpc) = endpoints.node(node);
        let mut election = rpc.election;
        if let Err(error) = call(
            options.request_timeout,
            election.resign(ResignRequest { leader: Some(leader) }),
        )
        .await
        {
            context.shared.count_failure(&error);
            node += 1;
        }
    }
    if let Some(session) = session {
        session.keeper.stop();
        super::lease::revoke(&endpoints, node, session.lease(), options.request_timeout).await;
    }
}

/// One observer, until the run stops.
pub async fn run_observer(context: &ClientContext) {
    let endpoints = Endpoints::new(&context.nodes);
    let mut rng = context.rng();
    let mut node = rng.gen_range(0..context.nodes.len());
    let mut stream_number = 0u64;
    while now() < context.stop_at {
        let (name, rpc) = endpoints.node(node);
        let mut election = rpc.election;
        stream_number += 1;
        context.shared.stats(|stats| stats.observe_streams += 1);
        let request = LeaderRequest {
            name: ELECTION_NAME.as_bytes().to_vec(),
        };
        let mut stream = match tokio::time::timeout(context.options.request_timeout, election.observe(request)).await {
            Ok(Ok(response)) => response.into_inner(),
            _ => {
                node += 1;
                think(&mut rng, Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let left = context.stop_at.saturating_sub(now());
            if left.is_zero() {
                return;
            }
            match tokio::time::timeout(OBSERVE_SILENCE.min(left), stream.message()).await {
                Ok(Ok(Some(response))) => {
                    let revision = response.header.map_or(0, |header| header.revision);
                    let kv = response.kv.unwrap_or_default();
                    context.shared.update(|record| {
                        record.observations.push(Observation {
                            observer: context.host.clone(),
                            node: name.clone(),
                            stream: stream_number,
                            revision,
                            key: kv.key,
                            value: kv.value,
                            create_revision: kv.create_revision,
                        });
                        record.stats.observations += 1;
                    });
                }
                _ => break,
            }
        }
        node += 1;
    }
}
