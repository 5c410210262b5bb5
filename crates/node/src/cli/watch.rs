//! `zongheng watch`: print changes to a key, a range or a prefix as they
//! happen (or from a past revision), like `etcdctl watch`.
//!
//! Readable output prints each event as etcdctl does (`PUT` / `DELETE`, the
//! key, the value; with `--prev-kv` the previous key and value too); `--json`
//! prints one JSON object per event. The watch ends on Ctrl-C, after
//! `--max-events`, or when the server cancels it (for example because the
//! start revision was compacted; the error says so).

use anyhow::{bail, Context};
use futures::StreamExt;
use serde::Serialize;
use zongheng_proto::etcdserverpb::watch_client::WatchClient;
use zongheng_proto::etcdserverpb::watch_request::RequestUnion;
use zongheng_proto::etcdserverpb::{WatchCreateRequest, WatchRequest};
use zongheng_proto::mvccpb::event::EventType;
use zongheng_proto::mvccpb::Event;

use super::client::{display_bytes, json_bytes, json_line, print_output, Client, ClientOptions};
use super::kv::prefix_range_end;

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The key (or the start of the range).
    pub key: String,
    /// End of the range (exclusive).
    pub range_end: Option<String>,
    /// Watch every key with this prefix.
    #[arg(long, conflicts_with_all = ["range_end", "from_key"])]
    pub prefix: bool,
    /// Watch every key from this one on.
    #[arg(long, conflicts_with = "range_end")]
    pub from_key: bool,
    /// Start at this revision (replaying history since then).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Include each key's previous value.
    #[arg(long)]
    pub prev_kv: bool,
    /// Stop after this many events (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub max_events: u64,
    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Serialize)]
struct EventJson {
    r#type: &'static str,
    key: Option<String>,
    key_b64: Option<String>,
    value: Option<String>,
    value_b64: Option<String>,
    mod_revision: i64,
    prev_value: Option<String>,
}

/// Text for one event, as etcdctl prints it.
pub fn format_event(event: &Event, json: bool) -> String {
    let kind = if event.r#type == EventType::Delete as i32 {
        "DELETE"
    } else {
        "PUT"
    };
    let kv = event.kv.clone().unwrap_or_default();
    if json {
        let (key, key_b64) = json_bytes(&kv.key);
        let (value, value_b64) = json_bytes(&kv.value);
        let prev_value = event
            .prev_kv
            .as_ref()
            .map(|prev| display_bytes(&prev.value).into_owned());
        return json_line(&EventJson {
            r#type: kind,
            key,
            key_b64,
            value,
            value_b64,
            mod_revision: kv.mod_revision,
            prev_value,
        });
    }
    let mut text = format!("{kind}\n{}\n{}\n", display_bytes(&kv.key), display_bytes(&kv.value));
    if let Some(prev) = &event.prev_kv {
        text.push_str(&format!(
            "{}\n{}\n",
            display_bytes(&prev.key),
            display_bytes(&prev.value)
        ));
    }
    text
}

pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    let client = Client::connect(&args.client).await?;
    let json = args.client.json;
    let key = args.key.as_bytes().to_vec();
    let range_end = if args.prefix {
        prefix_range_end(&key)
    } else if args.from_key {
        vec![0]
    } else {
        args.range_end.clone().map(String::into_bytes).unwrap_or_default()
    };
    let create = WatchCreateRequest {
        key,
        range_end,
        start_revision: args.rev,
        prev_kv: args.prev_kv,
        ..Default::default()
    };
    let requests = futures::stream::iter(vec![WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    }])
    .chain(futures::stream::pending());
    let mut watch = WatchClient::new(client.channel());
    let mut responses = watch
        .watch(requests)
        .await
        .context("cannot start the watch")?
        .into_inner();
    let mut seen: u64 = 0;
    loop {
        let response = tokio::select! {
            response = responses.next() => response,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(response) = response else {
            bail!("the server closed the watch")
        };
        let response = response.context("watch failed")?;
        if response.canceled {
            let reason = if response.compact_revision > 0 {
                format!(
                    "{} (the oldest revision still available is {})",
                    response.cancel_reason, response.compact_revision
                )
            } else {
                response.cancel_reason.clone()
            };
            bail!("the server cancelled the watch: {reason}");
        }
        for event in &response.events {
            print_output(&format_event(event, json))?;
            seen += 1;
            if args.max_events > 0 && seen >= args.max_events {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zongheng_proto::mvccpb::KeyValue;

    #[test]
    fn events_print_like_etcdctl() {
        let event = Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: b"k".to_vec(),
                value: b"v2".to_vec(),
                mod_revision: 5,
                ..Default::default()
            }),
            prev_kv: Some(KeyValue {
                key: b"k".to_vec(),
                value: b"v1".to_vec(),
                ..Default::default()
            }),
        };
        assert_eq!(format_event(&event, false), "PUT\nk\nv2\nk\nv1\n");
        let line = format_event(&event, true);
        assert!(
            line.contains("\"type\":\"PUT\"") && line.contains("\"mod_revision\":5"),
            "{line}"
        );
        let delete = Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: b"k".to_vec(),
                ..Default::default()
            }),
            prev_kv: None,
        };
        assert_eq!(format_event(&delete, false), "DELETE\nk\n\n");
    }
}
