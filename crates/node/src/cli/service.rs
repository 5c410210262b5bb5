//! `zongheng service`: a service registry on the coordination store.
//!
//! ## Data model (usable from any etcd client)
//! Each running instance of service `NAME` is one key,
//! `/zongheng/services/NAME/<instance>`, where `<instance>` is the hex id of
//! the lease that keeps it alive, and whose value is JSON:
//! `{"addr": "10.0.0.5:8080", "meta": {"zone": "a"}}`. The key is attached to
//! the lease, so when the registering process stops keeping the lease alive
//! (it exits, crashes or is cut off for longer than the TTL) the key is
//! deleted and every watcher sees the instance go. With etcdctl:
//! `etcdctl get --prefix /zongheng/services/NAME/` lists instances and
//! `etcdctl watch --prefix /zongheng/services/NAME/` follows them.
//!
//! - `register NAME ADDR [--ttl S] [--meta k=v]...` registers and keeps the
//!   lease alive until interrupted; on Ctrl-C or SIGTERM it revokes the lease
//!   so the instance disappears at once. If the lease is lost (a partition
//!   longer than the TTL), it registers again under a new lease.
//! - `list NAME` prints the instances; `watch NAME` prints them, then `+`/`-`
//!   lines as instances come and go.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use zongheng_proto::etcdserverpb::lease_client::LeaseClient;
use zongheng_proto::etcdserverpb::watch_client::WatchClient;
use zongheng_proto::etcdserverpb::watch_request::RequestUnion;
use zongheng_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest, WatchCreateRequest,
    WatchRequest,
};
use zongheng_proto::mvccpb::event::EventType;

use super::client::{display_bytes, json_line, print_output, render_table, Client, ClientOptions};
use super::kv::prefix_range_end;

/// Where instances live in the key space.
pub const SERVICE_PREFIX: &str = "/zongheng/services/";
/// Longest service name accepted.
pub const SERVICE_NAME_BYTES_MAX: usize = 256;

#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub command: ServiceCommand,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Register an instance and keep it registered while this runs.
    Register {
        name: String,
        addr: String,
        /// Seconds after which a silent instance disappears.
        #[arg(long, default_value_t = 10)]
        ttl: i64,
        /// Metadata, `key=value` (repeatable).
        #[arg(long = "meta", value_parser = parse_meta)]
        meta: Vec<(String, String)>,
    },
    /// List the instances of a service.
    List { name: String },
    /// Print the instances, then follow them as they come and go.
    Watch { name: String },
}

/// The stored value of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub addr: String,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

fn parse_meta(input: &str) -> Result<(String, String), String> {
    let (key, value) = input
        .split_once('=')
        .ok_or_else(|| format!("--meta {input:?}: expected key=value"))?;
    if key.is_empty() {
        return Err(format!("--meta {input:?}: the key is empty"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// The key prefix of service `name`, checked.
pub fn service_prefix(name: &str) -> anyhow::Result<String> {
    if name.is_empty() || name.len() > SERVICE_NAME_BYTES_MAX || name.contains('/') {
        bail!("a service name is 1 to {SERVICE_NAME_BYTES_MAX} bytes without '/', got {name:?}");
    }
    Ok(format!("{SERVICE_PREFIX}{name}/"))
}

pub async fn run(args: ServiceArgs) -> anyhow::Result<()> {
    let client = Client::connect(&args.client).await?;
    let json = args.client.json;
    match args.command {
        ServiceCommand::Register { name, addr, ttl, meta } => {
            let prefix = service_prefix(&name)?;
            let instance = Instance {
                addr,
                meta: meta.into_iter().collect(),
            };
            register(client, &prefix, &name, &instance, ttl).await
        }
        ServiceCommand::List { name } => {
            let prefix = service_prefix(&name)?;
            let (instances, _) = list(&client, &prefix).await?;
            print_output(&format_instances(&instances, json))
        }
        ServiceCommand::Watch { name } => {
            let prefix = service_prefix(&name)?;
            watch(&client, &prefix, json).await
        }
    }
}

async fn list(client: &Client, prefix: &str) -> anyhow::Result<(Vec<(String, Instance)>, i64)> {
    let request = RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_range_end(prefix.as_bytes()),
        ..Default::default()
    };
    let response = tokio::time::timeout(client.command_timeout(), client.kv().range(request))
        .await
        .context("listing instances timed out")??
        .into_inner();
    let mut instances = Vec::new();
    for kv in response.kvs {
        let id = display_bytes(&kv.key[prefix.len()..]).into_owned();
        match serde_json::from_slice::<Instance>(&kv.value) {
            Ok(instance) => instances.push((id, instance)),
            Err(error) => eprintln!("skipping {}: not an instance record ({error})", display_bytes(&kv.key)),
        }
    }
    let revision = response.header.map(|header| header.revision).unwrap_or(0);
    Ok((instances, revision))
}

fn format_instances(instances: &[(String, Instance)], json: bool) -> String {
    if json {
        let rows: Vec<_> = instances
            .iter()
            .map(|(id, instance)| serde_json::json!({"instance": id, "addr": instance.addr, "meta": instance.meta}))
            .collect();
        return json_line(&rows);
    }
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|(id, instance)| {
            let meta: Vec<String> = instance.meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![id.clone(), instance.addr.clone(), meta.join(",")]
        })
        .collect();
    render_table(&["INSTANCE", "ADDR", "META"], &rows)
}

async fn register(client: Client, prefix: &str, name: &str, instance: &Instance, ttl: i64) -> anyhow::Result<()> {
    let value = serde_json::to_vec(instance)?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let mut leases = LeaseClient::new(client.channel());
        let lease = leases
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await
            .context("granting a lease")?
            .into_inner();
        let key = format!("{prefix}{:x}", lease.id);
        let put = PutRequest {
            key: key.clone().into_bytes(),
            value: value.clone(),
            lease: lease.id,
            ..Default::default()
        };
        client.kv().put(put).await.context("registering the instance")?;
        println!(
            "registered {name} at {} as instance {:x} (TTL {} s); Ctrl-C to deregister",
            instance.addr, lease.id, lease.ttl
        );
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        let mut responses = leases
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
            .context("starting keep-alive")?
            .into_inner();
        let pause = Duration::from_millis((lease.ttl.max(1) as u64 * 1000) / 3);
        let lost = loop {
            if sender.send(LeaseKeepAliveRequest { id: lease.id }).await.is_err() {
                break "the keep-alive stream closed".to_string();
            }
            match tokio::time::timeout(pause.max(Duration::from_millis(500)), responses.next()).await {
                Ok(Some(Ok(response))) if response.ttl > 0 => {}
                Ok(Some(Ok(_))) => break "the lease expired".to_string(),
                Ok(Some(Err(status))) => break format!("keep-alive failed: {}", status.message()),
                Ok(None) => break "the keep-alive stream ended".to_string(),
                Err(_) => break "no keep-alive answer in time".to_string(),
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = tokio::signal::ctrl_c() => return deregister(&client, lease.id).await,
                _ = terminate.recv() => return deregister(&client, lease.id).await,
            }
        };
        eprintln!("instance {:x}: {lost}; registering again", lease.id);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn deregister(client: &Client, lease: i64) -> anyhow::Result<()> {
    let mut leases = LeaseClient::new(client.channel());
    leases
        .lease_revoke(LeaseRevokeRequest { id: lease })
        .await
        .context("revoking the lease")?;
    println!("deregistered instance {lease:x}");
    Ok(())
}

async fn watch(client: &Client, prefix: &str, json: bool) -> anyhow::Result<()> {
    let (instances, revision) = list(client, prefix).await?;
    print_output(&format_instances(&instances, json))?;
    let create = WatchCreateRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_range_end(prefix.as_bytes()),
        start_revision: revision + 1,
        ..Default::default()
    };
    let requests = futures::stream::iter(vec![WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    }])
    .chain(futures::stream::pending());
    let mut responses = WatchClient::new(client.channel()).watch(requests).await?.into_inner();
    loop {
        let response = tokio::select! {
            response = responses.next() => response,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(response) = response else {
            bail!("the server closed the watch")
        };
        let response = response?;
        if response.canceled {
            bail!("the server cancelled the watch: {}", response.cancel_reason);
        }
        for event in response.events {
            let kv = event.kv.unwrap_or_default();
            let id = display_bytes(&kv.key[prefix.len().min(kv.key.len())..]).into_owned();
            let line = if event.r#type == EventType::Delete as i32 {
                if json {
                    json_line(&serde_json::json!({"event": "down", "instance": id}))
                } else {
                    format!("- {id}\n")
                }
            } else {
                let instance: Option<Instance> = serde_json::from_slice(&kv.value).ok();
                let addr = instance.map(|instance| instance.addr).unwrap_or_default();
                if json {
                    json_line(&serde_json::json!({"event": "up", "instance": id, "addr": addr}))
                } else {
                    format!("+ {id} {addr}\n")
                }
            };
            print_output(&line)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_meta_are_checked() {
        assert_eq!(service_prefix("web").unwrap(), "/zongheng/services/web/");
        assert!(service_prefix("").is_err());
        assert!(service_prefix("a/b").is_err());
        assert_eq!(parse_meta("zone=a").unwrap(), ("zone".to_string(), "a".to_string()));
        assert!(parse_meta("novalue").is_err());
        assert!(parse_meta("=x").is_err());
    }

    #[test]
    fn instances_round_trip_and_print() {
        let instance = Instance {
            addr: "127.0.0.1:8080".into(),
            meta: [("zone".to_string(), "a".to_string())].into(),
        };
        let bytes = serde_json::to_vec(&instance).unwrap();
        assert_eq!(serde_json::from_slice::<Instance>(&bytes).unwrap(), instance);
        let table = format_instances(&[("1f".into(), instance)], false);
        assert!(table.contains("127.0.0.1:8080") && table.contains("zone=a"), "{table}");
    }
}
