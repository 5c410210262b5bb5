//! `zongheng lease`: grant, revoke, keep alive, inspect and list leases, like
//! `etcdctl lease`. Lease ids are hexadecimal, as etcdctl prints them.

use anyhow::{bail, Context};
use futures::StreamExt;
use serde::Serialize;
use zongheng_proto::etcdserverpb::lease_client::LeaseClient;
use zongheng_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
};

use super::client::{display_bytes, json_line, print_output, Client, ClientOptions};
use super::kv::parse_lease_id;

#[derive(Debug, clap::Args)]
pub struct LeaseArgs {
    #[command(subcommand)]
    pub command: LeaseCommand,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, clap::Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease with a TTL in seconds; prints its id.
    Grant { ttl: i64 },
    /// Revoke a lease; its keys are deleted.
    Revoke { id: String },
    /// Keep a lease alive until interrupted (or once with --once).
    Keepalive {
        id: String,
        #[arg(long)]
        once: bool,
    },
    /// Show a lease's remaining TTL (and with --keys its keys).
    Ttl {
        id: String,
        #[arg(long)]
        keys: bool,
    },
    /// List the live leases.
    List,
}

fn hex(id: i64) -> String {
    format!("{id:x}")
}

#[derive(Serialize)]
struct TtlJson {
    id: String,
    ttl: i64,
    granted_ttl: i64,
    keys: Vec<String>,
}

pub async fn run(args: LeaseArgs) -> anyhow::Result<()> {
    let client = Client::connect(&args.client).await?;
    let json = args.client.json;
    let timeout = client.command_timeout();
    let mut lease = LeaseClient::new(client.channel());
    match args.command {
        LeaseCommand::Grant { ttl } => {
            let response = tokio::time::timeout(timeout, lease.lease_grant(LeaseGrantRequest { ttl, id: 0 }))
                .await
                .context("lease grant timed out")??
                .into_inner();
            if json {
                print_output(&json_line(
                    &serde_json::json!({"id": hex(response.id), "ttl": response.ttl}),
                ))
            } else {
                print_output(&format!(
                    "lease {} granted with TTL({}s)\n",
                    hex(response.id),
                    response.ttl
                ))
            }
        }
        LeaseCommand::Revoke { id } => {
            let id = parse_lease_id(&id).map_err(anyhow::Error::msg)?;
            tokio::time::timeout(timeout, lease.lease_revoke(LeaseRevokeRequest { id }))
                .await
                .context("lease revoke timed out")??;
            print_output(&format!("lease {} revoked\n", hex(id)))
        }
        LeaseCommand::Keepalive { id, once } => {
            let id = parse_lease_id(&id).map_err(anyhow::Error::msg)?;
            // One request per third of the TTL, as etcd's client does.
            let (sender, receiver) = tokio::sync::mpsc::channel(1);
            sender.send(LeaseKeepAliveRequest { id }).await.ok();
            let mut responses = lease
                .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver))
                .await
                .context("cannot start keep-alive")?
                .into_inner();
            loop {
                let response = tokio::select! {
                    response = responses.next() => response,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                let Some(response) = response else {
                    bail!("the server closed the keep-alive stream")
                };
                let response = response.context("keep-alive failed")?;
                if response.ttl <= 0 {
                    bail!("lease {} expired or was revoked", hex(id));
                }
                print_output(&format!("lease {} keepalived with TTL({})\n", hex(id), response.ttl))?;
                if once {
                    return Ok(());
                }
                let pause = std::time::Duration::from_millis((response.ttl as u64 * 1000 / 3).max(500));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
                if sender.send(LeaseKeepAliveRequest { id }).await.is_err() {
                    bail!("the keep-alive stream closed");
                }
            }
        }
        LeaseCommand::Ttl { id, keys } => {
            let id = parse_lease_id(&id).map_err(anyhow::Error::msg)?;
            let response = tokio::time::timeout(timeout, lease.lease_time_to_live(LeaseTimeToLiveRequest { id, keys }))
                .await
                .context("lease ttl timed out")??
                .into_inner();
            let key_names: Vec<String> = response
                .keys
                .iter()
                .map(|key| display_bytes(key).into_owned())
                .collect();
            if json {
                return print_output(&json_line(&TtlJson {
                    id: hex(id),
                    ttl: response.ttl,
                    granted_ttl: response.granted_ttl,
                    keys: key_names,
                }));
            }
            if response.ttl < 0 {
                return print_output(&format!("lease {} already expired\n", hex(id)));
            }
            let mut text = format!(
                "lease {} granted with TTL({}s), remaining({}s)",
                hex(id),
                response.granted_ttl,
                response.ttl
            );
            if keys {
                text.push_str(&format!(", attached keys([{}])", key_names.join(" ")));
            }
            text.push('\n');
            print_output(&text)
        }
        LeaseCommand::List => {
            let response = tokio::time::timeout(timeout, lease.lease_leases(LeaseLeasesRequest {}))
                .await
                .context("lease list timed out")??
                .into_inner();
            let ids: Vec<String> = response.leases.iter().map(|status| hex(status.id)).collect();
            if json {
                return print_output(&json_line(&serde_json::json!({"leases": ids})));
            }
            let mut text = format!("found {} leases\n", ids.len());
            for id in ids {
                text.push_str(&id);
                text.push('\n');
            }
            print_output(&text)
        }
    }
}
