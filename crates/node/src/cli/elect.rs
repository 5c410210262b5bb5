//! `zongheng elect NAME PROPOSAL` and `zongheng elect NAME --listen`: leader
//! election, like `etcdctl elect` and `etcdctl elect -l`.
//!
//! - Campaigning grants a session lease (`--ttl`, kept alive in the
//!   background: see [`super::lock::Session`]), calls the v3election
//!   `Campaign` RPC, which waits until every candidate that campaigned
//!   earlier is gone, and then prints the leader key and the proposal (two
//!   lines, as etcdctl prints them). It stays leader until Ctrl-C or SIGTERM,
//!   then resigns and revokes the lease, so the next candidate takes over at
//!   once. If the session is lost (no renewal acknowledged for most of the
//!   TTL, the lease revoked, the leader key deleted) it exits non-zero: it is
//!   no longer the leader and must not act as one.
//! - `--listen` prints the current leader (key and proposal) and every
//!   change after it (a new leader or a new proclamation), in revision
//!   order, until Ctrl-C. A broken stream is opened again, on another
//!   endpoint if need be, without printing a leader twice.
//!
//! The leader key's create revision (`"revision"` in `--json`) is the
//! leader's fencing token, exactly like a lock's (see `server::election`).

use std::time::Duration;

use anyhow::bail;
use futures::StreamExt;
use zongheng_proto::mvccpb::KeyValue;
use zongheng_proto::v3electionpb::election_client::ElectionClient;
use zongheng_proto::v3electionpb::{CampaignRequest, LeaderKey, LeaderRequest, ResignRequest};

use super::client::{display_bytes, json_line, print_output, Client, ClientOptions};
use super::lock::{bounded, parse_ttl, server_error, Session, StopSignals, SESSION_TTL_SECONDS_DEFAULT};

/// Pause before an observer opens its stream again after it broke.
pub const OBSERVE_RECONNECT_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, clap::Args)]
pub struct ElectArgs {
    /// The election's name; candidates' keys are `NAME/<lease id in hex>`.
    pub name: String,
    /// The value to proclaim once elected (required unless --listen).
    #[arg(required_unless_present = "listen")]
    pub proposal: Option<String>,
    /// Observe: print each leader as it changes, do not campaign.
    #[arg(short = 'l', long, conflicts_with = "proposal")]
    pub listen: bool,
    /// Seconds the session lease lives without renewal: how long a leader
    /// that vanished keeps the leadership.
    #[arg(long, default_value_t = SESSION_TTL_SECONDS_DEFAULT, value_parser = parse_ttl)]
    pub ttl: i64,
    #[command(flatten)]
    pub client: ClientOptions,
}

pub async fn run(args: ElectArgs) -> anyhow::Result<()> {
    if args.name.is_empty() {
        bail!("the election name is empty; give the election a name");
    }
    let client = Client::connect(&args.client).await?;
    let mut signals = StopSignals::install()?;
    match args.proposal.clone() {
        Some(proposal) if !args.listen => campaign(client, &args, &proposal, &mut signals).await,
        _ => listen(client, &args, &mut signals).await,
    }
}

/// A leader as printed: two lines (key, value) or one JSON object.
fn format_leader(kv: &KeyValue, json: bool) -> String {
    if json {
        return json_line(&serde_json::json!({
            "key": display_bytes(&kv.key),
            "value": display_bytes(&kv.value),
            "revision": kv.create_revision,
            "mod_revision": kv.mod_revision,
            "lease": format!("{:x}", kv.lease),
        }));
    }
    format!("{}\n{}\n", display_bytes(&kv.key), display_bytes(&kv.value))
}

async fn campaign(client: Client, args: &ElectArgs, proposal: &str, signals: &mut StopSignals) -> anyhow::Result<()> {
    let mut session = Session::grant(&client, &args.client, args.ttl).await?;
    let request = CampaignRequest {
        name: args.name.as_bytes().to_vec(),
        lease: session.lease,
        value: proposal.as_bytes().to_vec(),
    };
    // No timeout: waiting for the turn is the point.
    let mut elections = ElectionClient::new(client.channel());
    let campaigned = tokio::select! {
        answer = elections.campaign(request) => {
            answer.map_err(|status| server_error("campaign", &client, &status))
        }
        reason = session.lost() => Err(anyhow::anyhow!("lost the session while campaigning in {}: {reason}", args.name)),
        signal = signals.recv() => Err(anyhow::anyhow!("{signal} while campaigning in {}; gave up", args.name)),
    };
    let leader = match campaigned.map(|answer| answer.into_inner().leader) {
        Ok(Some(leader)) => leader,
        Ok(None) => {
            session.close(&client).await;
            bail!("the server answered the campaign without a leader key")
        }
        Err(error) => {
            // Revoking the lease withdraws the candidacy.
            session.close(&client).await;
            return Err(error);
        }
    };
    session.guard_key(client.channel(), leader.key.clone(), leader.rev);
    let kv = KeyValue {
        key: leader.key.clone(),
        value: proposal.as_bytes().to_vec(),
        create_revision: leader.rev,
        mod_revision: leader.rev,
        lease: leader.lease,
        ..Default::default()
    };
    print_output(&format_leader(&kv, args.client.json))?;
    let lost = tokio::select! {
        reason = session.lost() => Some(reason),
        _ = signals.recv() => None,
    };
    match lost {
        None => {
            resign(&client, leader).await;
            session.close(&client).await;
            Ok(())
        }
        Some(reason) => {
            session.close(&client).await;
            bail!(
                "lost the leadership of {} (leader key {}, fencing token {}): {reason}",
                args.name,
                display_bytes(&leader.key),
                leader.rev
            )
        }
    }
}

async fn resign(client: &Client, leader: LeaderKey) {
    let mut elections = ElectionClient::new(client.channel());
    let resign = elections.resign(ResignRequest { leader: Some(leader) });
    if let Err(error) = bounded("resign", client, resign).await {
        eprintln!("zongheng elect: {error:#}; revoking the lease ends the leadership anyway");
    }
}

async fn listen(mut client: Client, args: &ElectArgs, signals: &mut StopSignals) -> anyhow::Result<()> {
    let json = args.client.json;
    // The last leader printed, by key and revision of its proclamation, so
    // a re-opened stream (which starts with the current leader) does not
    // print it again.
    let mut last: Option<(Vec<u8>, i64)> = None;
    loop {
        let request = LeaderRequest {
            name: args.name.as_bytes().to_vec(),
        };
        let mut elections = ElectionClient::new(client.channel());
        let opened = tokio::select! {
            opened = elections.observe(request) => opened,
            _ = signals.recv() => return Ok(()),
        };
        match opened {
            Ok(responses) => {
                let mut responses = responses.into_inner();
                loop {
                    let next = tokio::select! {
                        next = responses.next() => next,
                        _ = signals.recv() => return Ok(()),
                    };
                    let response = match next {
                        Some(Ok(response)) => response,
                        Some(Err(status)) if status.code() != tonic::Code::Unavailable => {
                            return Err(server_error("observe", &client, &status))
                        }
                        _ => break,
                    };
                    let Some(kv) = response.kv else { continue };
                    let seen = (kv.key.clone(), kv.mod_revision);
                    if last
                        .as_ref()
                        .is_some_and(|(key, revision)| *key == seen.0 && *revision >= seen.1)
                    {
                        continue;
                    }
                    print_output(&format_leader(&kv, json))?;
                    last = Some(seen);
                }
            }
            Err(status) if status.code() != tonic::Code::Unavailable => {
                return Err(server_error("observe", &client, &status))
            }
            Err(_) => {}
        }
        // The node went away: observe again, on another endpoint if needed.
        tokio::select! {
            _ = tokio::time::sleep(OBSERVE_RECONNECT_PAUSE) => {}
            _ = signals.recv() => return Ok(()),
        }
        if let Ok(fresh) = Client::connect(&args.client).await {
            client = fresh;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<ElectArgs, clap::Error> {
        use clap::Parser;
        match crate::cli::Cli::try_parse_from(std::iter::once("zongheng").chain(words.iter().copied()))? {
            crate::cli::Cli {
                command: crate::cli::Command::Elect(args),
                ..
            } => Ok(args),
            other => panic!("{words:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn campaign_needs_a_proposal_and_listen_takes_none() {
        let args = parse(&["elect", "web", "node-a"]).unwrap();
        assert_eq!(
            (args.name.as_str(), args.proposal.as_deref(), args.listen),
            ("web", Some("node-a"), false)
        );
        let args = parse(&["elect", "web", "-l"]).unwrap();
        assert!(args.listen && args.proposal.is_none());
        assert!(parse(&["elect", "web", "--listen"]).unwrap().listen);
        assert!(parse(&["elect", "web"]).is_err());
        assert!(parse(&["elect", "web", "p", "--listen"]).is_err());
        assert_eq!(parse(&["elect", "web", "p", "--ttl", "3"]).unwrap().ttl, 3);
    }

    #[test]
    fn leaders_print_like_etcdctl() {
        let kv = KeyValue {
            key: b"web/1f".to_vec(),
            value: b"node-a".to_vec(),
            create_revision: 5,
            mod_revision: 6,
            lease: 0x1f,
            ..Default::default()
        };
        assert_eq!(format_leader(&kv, false), "web/1f\nnode-a\n");
        let json: serde_json::Value = serde_json::from_str(&format_leader(&kv, true)).unwrap();
        assert_eq!(json["revision"], 5);
        assert_eq!(json["lease"], "1f");
    }
}
