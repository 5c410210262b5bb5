//! `zongheng status`: one row per endpoint, to see at a glance who leads,
//! whether the members agree on the term, and how far each has applied.
//!
//! Unlike the other client commands, this asks *every* endpoint in
//! `--endpoints` (all at once, each with its own connection and timeouts)
//! rather than the first one that answers: the point is to compare them.
//! An endpoint that does not answer gets a row with its error, so a down
//! node shows up instead of vanishing from the table; the command fails
//! only when no endpoint answered.
//!
//! Rows are in `--endpoints` order, whatever order the answers came in.
//!
//! ## Reading the table
//! A healthy cluster has exactly one row with IS LEADER true, the same RAFT
//! TERM everywhere, and RAFT APPLIED INDEX close to RAFT INDEX on every row.
//! A member whose applied index lags far behind is slow or catching up.

use serde::Serialize;
use zongheng_proto::etcdserverpb::StatusResponse;

use super::client::{
    format_hex_id, human_bytes, json_line, print_output, render_table, Client, ClientError, ClientOptions,
};

/// `zongheng status`
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientOptions,
}

/// The answer of one endpoint, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointStatus {
    /// The endpoint as given in `--endpoints`.
    pub endpoint: String,
    pub outcome: Result<StatusResponse, String>,
}

/// Runs `zongheng status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let options = args.client;
    let endpoints = options.parsed_endpoints()?;
    let dial_timeout = options.dial_timeout();
    let command_timeout = options.command_timeout();
    let statuses = futures::future::join_all(endpoints.iter().map(|endpoint| async move {
        let outcome = async {
            let mut client = Client::connect_to(vec![endpoint.clone()], dial_timeout, command_timeout).await?;
            client.status().await
        }
        .await
        .map_err(|error| short_error(&error));
        EndpointStatus {
            endpoint: endpoint.display.clone(),
            outcome,
        }
    }))
    .await;
    print_output(&format_status(&statuses, options.json))?;
    if statuses.iter().all(|status| status.outcome.is_err()) {
        anyhow::bail!(
            "no endpoint answered ({} tried; see the ERRORS column). Check that the nodes are running and that --endpoints (or ZONGHENG_ENDPOINTS) lists their client addresses",
            statuses.len()
        );
    }
    Ok(())
}

/// An error short enough for a table cell: the cause, without the advice
/// the full message adds (the command prints that once at the end).
fn short_error(error: &ClientError) -> String {
    match error {
        ClientError::Unreachable { attempts, .. } | ClientError::AllEndpointsFailed { attempts, .. } => attempts
            .iter()
            .map(|(_, reason)| reason.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        ClientError::Server { failure, .. } => failure.to_string(),
        other => other.to_string(),
    }
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum StatusJson {
    Answered {
        endpoint: String,
        member_id: u64,
        member_id_hex: String,
        cluster_id: u64,
        version: String,
        db_size: i64,
        db_size_in_use: i64,
        leader: u64,
        leader_hex: String,
        is_leader: bool,
        is_learner: bool,
        raft_term: u64,
        raft_index: u64,
        raft_applied_index: u64,
        revision: i64,
        errors: Vec<String>,
    },
    Failed {
        endpoint: String,
        error: String,
    },
}

fn status_json(status: &EndpointStatus) -> StatusJson {
    match &status.outcome {
        Ok(response) => {
            let header = response.header.unwrap_or_default();
            StatusJson::Answered {
                endpoint: status.endpoint.clone(),
                member_id: header.member_id,
                member_id_hex: format_hex_id(header.member_id),
                cluster_id: header.cluster_id,
                version: response.version.clone(),
                db_size: response.db_size,
                db_size_in_use: response.db_size_in_use,
                leader: response.leader,
                leader_hex: format_hex_id(response.leader),
                is_leader: is_leader(response),
                is_learner: response.is_learner,
                raft_term: response.raft_term,
                raft_index: response.raft_index,
                raft_applied_index: response.raft_applied_index,
                revision: header.revision,
                errors: response.errors.clone(),
            }
        }
        Err(error) => StatusJson::Failed {
            endpoint: status.endpoint.clone(),
            error: error.clone(),
        },
    }
}

/// Whether the answering member is the leader it reports.
pub fn is_leader(response: &StatusResponse) -> bool {
    let member_id = response.header.as_ref().map_or(0, |header| header.member_id);
    response.leader != 0 && response.leader == member_id
}

/// The table (or, with `--json`, an array with one object per endpoint).
pub fn format_status(statuses: &[EndpointStatus], json: bool) -> String {
    if json {
        let objects: Vec<StatusJson> = statuses.iter().map(status_json).collect();
        return json_line(&objects);
    }
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|status| match &status.outcome {
            Ok(response) => {
                let member_id = response.header.as_ref().map_or(0, |header| header.member_id);
                vec![
                    status.endpoint.clone(),
                    format_hex_id(member_id),
                    response.version.clone(),
                    human_bytes(u64::try_from(response.db_size).unwrap_or(0)),
                    is_leader(response).to_string(),
                    response.is_learner.to_string(),
                    response.raft_term.to_string(),
                    response.raft_index.to_string(),
                    response.raft_applied_index.to_string(),
                    response.errors.join(", "),
                ]
            }
            Err(error) => {
                let mut row = vec![status.endpoint.clone()];
                row.extend(std::iter::repeat_n("-".to_string(), 8));
                row.push(error.clone());
                row
            }
        })
        .collect();
    render_table(
        &[
            "ENDPOINT",
            "ID",
            "VERSION",
            "DB SIZE",
            "IS LEADER",
            "IS LEARNER",
            "RAFT TERM",
            "RAFT INDEX",
            "RAFT APPLIED INDEX",
            "ERRORS",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use zongheng_proto::etcdserverpb::ResponseHeader;

    fn answer(member_id: u64, leader: u64, db_size: i64) -> StatusResponse {
        StatusResponse {
            header: Some(ResponseHeader {
                cluster_id: 7,
                member_id,
                revision: 12,
                raft_term: 3,
            }),
            version: "3.5.0".to_string(),
            db_size,
            leader,
            raft_index: 40,
            raft_term: 3,
            raft_applied_index: 39,
            errors: vec![],
            db_size_in_use: db_size / 2,
            is_learner: false,
            ..Default::default()
        }
    }

    fn statuses() -> Vec<EndpointStatus> {
        vec![
            EndpointStatus {
                endpoint: "127.0.0.1:2379".into(),
                outcome: Ok(answer(0xa1, 0xa1, 20_480)),
            },
            EndpointStatus {
                endpoint: "127.0.0.1:22379".into(),
                outcome: Ok(StatusResponse {
                    errors: vec!["NOSPACE".into(), "CORRUPT".into()],
                    ..answer(0xb2, 0xa1, 1_500)
                }),
            },
            EndpointStatus {
                endpoint: "127.0.0.1:32379".into(),
                outcome: Err("transport error: Connection refused".into()),
            },
        ]
    }

    #[test]
    fn the_table_has_a_row_per_endpoint_errors_included() {
        assert_eq!(
            format_status(&statuses(), false),
            "ENDPOINT         ID  VERSION  DB SIZE  IS LEADER  IS LEARNER  RAFT TERM  RAFT INDEX  RAFT APPLIED INDEX  ERRORS\n\
             127.0.0.1:2379   a1  3.5.0    20 kB    true       false       3          40          39\n\
             127.0.0.1:22379  b2  3.5.0    1.5 kB   false      false       3          40          39                  NOSPACE, CORRUPT\n\
             127.0.0.1:32379  -   -        -        -          -           -          -           -                   transport error: Connection refused\n"
        );
    }

    #[test]
    fn json_is_an_array_in_endpoint_order() {
        let parsed: serde_json::Value = serde_json::from_str(&format_status(&statuses(), true)).unwrap();
        let rows = parsed.as_array().unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["endpoint"], "127.0.0.1:2379");
        assert_eq!(rows[0]["is_leader"], true);
        assert_eq!(rows[0]["member_id_hex"], "a1");
        assert_eq!(rows[0]["db_size"], 20_480);
        assert_eq!(rows[1]["is_leader"], false);
        assert_eq!(rows[1]["errors"][1], "CORRUPT");
        assert_eq!(rows[2]["error"], "transport error: Connection refused");
        assert!(rows[2].get("member_id").is_none());
    }

    #[test]
    fn no_leader_is_never_shown_as_leader() {
        assert!(!is_leader(&answer(0, 0, 0)));
        assert!(!is_leader(&StatusResponse::default()));
        assert!(is_leader(&answer(5, 5, 0)));
    }

    #[test]
    fn status_takes_the_connection_flags() {
        use clap::Parser;
        let line = ["zongheng", "status", "--endpoints", "a:1,b:2,c:3", "--json"];
        let Ok(crate::cli::Cli {
            command: crate::cli::Command::Status(args),
            ..
        }) = crate::cli::Cli::try_parse_from(line)
        else {
            panic!("not a status")
        };
        assert_eq!(args.client.parsed_endpoints().map(|list| list.len()).ok(), Some(3));
        assert!(args.client.json);
    }
}
