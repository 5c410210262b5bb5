//! `zongheng member`: see and change who is in the cluster, without etcdctl.
//!
//! - `member list` prints every member: ID, started or not, name, peer and
//!   client URLs, learner or voter.
//! - `member add NAME --peer-urls URL[,URL] [--learner]` adds a member and
//!   prints the settings to start it with (`--initial-cluster` and
//!   `--initial-cluster-state existing`), as etcdctl does.
//! - `member remove ID` and `member promote ID` take the hexadecimal ID
//!   that `member list` prints.
//!
//! ## Why add prints start-up settings
//! Adding a member only records it; the cluster then waits for a node with
//! those peer URLs to start and join. That node must be told the cluster it
//! joins and that it is joining rather than bootstrapping; getting either
//! wrong is the usual way a join fails, so the command prints both as
//! environment variables and as flags, ready to paste.
//!
//! A membership change is a write: it is sent once and never retried on
//! another endpoint (see [`super::client`]). If its outcome is unknown,
//! `member list` tells.
//!
//! ## Not yet
//! No `member update` (changing a member's peer URLs).

use serde::Serialize;
use zongheng_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberRemoveRequest, ResponseHeader,
};

use super::client::{format_hex_id, json_line, parse_hex_id, print_output, render_table, Client, ClientOptions};

/// `zongheng member ...`
#[derive(Debug, clap::Args)]
pub struct MemberArgs {
    #[command(subcommand)]
    pub command: MemberCommand,

    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, clap::Subcommand)]
pub enum MemberCommand {
    /// List the members of the cluster.
    List(ListArgs),
    /// Add a member, then print the settings to start it with.
    Add(AddArgs),
    /// Remove a member (by the hexadecimal ID `member list` prints).
    Remove(MemberIdArg),
    /// Promote a learner to a voting member (by its hexadecimal ID).
    Promote(MemberIdArg),
}

/// `member list`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Ask the leader (needs quorum) rather than the member answering,
    /// which may be behind.
    #[arg(long)]
    pub linearizable: bool,
}

/// `member add`.
#[derive(Debug, Clone, clap::Args)]
pub struct AddArgs {
    /// The new member's name: the `--name` it will be started with.
    #[arg(value_parser = parse_member_name)]
    pub name: String,

    /// The new member's peer URLs, comma-separated (e.g. http://10.0.0.4:2380).
    #[arg(long = "peer-urls", value_name = "URL[,URL]", value_delimiter = ',', required = true, value_parser = parse_peer_url)]
    pub peer_urls: Vec<String>,

    /// Add it as a learner: it replicates but does not vote until promoted.
    #[arg(long)]
    pub learner: bool,
}

/// `member remove` and `member promote`.
#[derive(Debug, Clone, clap::Args)]
pub struct MemberIdArg {
    /// The member's ID in hexadecimal, as `member list` prints it.
    #[arg(value_name = "ID", value_parser = parse_member_id)]
    pub id: u64,
}

/// Runs `zongheng member ...`.
pub async fn run(args: MemberArgs) -> anyhow::Result<()> {
    let MemberArgs {
        command,
        client: options,
    } = args;
    let json = options.json;
    let mut client = Client::connect(&options).await?;
    match command {
        MemberCommand::List(list) => {
            let response = client
                .member_list(MemberListRequest {
                    linearizable: list.linearizable,
                })
                .await?;
            print_output(&format_member_list(&response, json))
        }
        MemberCommand::Add(add) => {
            let response = client
                .member_add(MemberAddRequest {
                    peer_ur_ls: add.peer_urls.clone(),
                    is_learner: add.learner,
                })
                .await?;
            print_output(&format_member_added(&response, &add.name, json)?)
        }
        MemberCommand::Remove(target) => {
            let response = client.member_remove(MemberRemoveRequest { id: target.id }).await?;
            print_output(&format_member_changed(
                "removed from",
                target.id,
                &response.header,
                &response.members,
                json,
            ))
        }
        MemberCommand::Promote(target) => {
            let response = client.member_promote(MemberPromoteRequest { id: target.id }).await?;
            print_output(&format_member_changed(
                "promoted in",
                target.id,
                &response.header,
                &response.members,
                json,
            ))
        }
    }
}

/// Parses a member ID as `member list` and etcdctl print it: hexadecimal.
pub fn parse_member_id(input: &str) -> Result<u64, String> {
    parse_hex_id(input)
}

/// A member name goes into `--initial-cluster name=url,...`, so it may not
/// hold the characters that list is built from.
pub fn parse_member_name(input: &str) -> Result<String, String> {
    if input.is_empty() {
        return Err("the member name is empty; give the --name the new node will start with".to_string());
    }
    if input.chars().any(|c| c == '=' || c == ',' || c.is_whitespace()) {
        return Err(format!(
            "{input:?} cannot be a member name: it would break --initial-cluster (no '=', ',' or spaces)"
        ));
    }
    Ok(input.to_string())
}

/// A peer URL needs a scheme, a host and a port.
pub fn parse_peer_url(input: &str) -> Result<String, String> {
    let url = input.trim();
    let Some((scheme, address)) = url.split_once("://") else {
        return Err(format!(
            "{input:?} needs a scheme: give a URL such as http://10.0.0.4:2380"
        ));
    };
    let host_port = address.split('/').next().unwrap_or_default();
    let has_port = host_port
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port != 0));
    if scheme.is_empty() || !has_port {
        return Err(format!(
            "{input:?} is not a peer URL with a host and port, such as http://10.0.0.4:2380"
        ));
    }
    Ok(url.to_string())
}

/// "started" once the member has run and published its name and client
/// URLs; "unstarted" between `member add` and its first start.
pub fn member_status(member: &Member) -> &'static str {
    if member.name.is_empty() && member.client_ur_ls.is_empty() {
        "unstarted"
    } else {
        "started"
    }
}

fn sorted_by_id(members: &[Member]) -> Vec<&Member> {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by_key(|member| member.id);
    sorted
}

#[derive(Debug, Serialize)]
struct HeaderJson {
    cluster_id: u64,
    cluster_id_hex: String,
    member_id: u64,
    member_id_hex: String,
    raft_term: u64,
}

fn header_json(header: &Option<ResponseHeader>) -> Option<HeaderJson> {
    header.as_ref().map(|header| HeaderJson {
        cluster_id: header.cluster_id,
        cluster_id_hex: format_hex_id(header.cluster_id),
        member_id: header.member_id,
        member_id_hex: format_hex_id(header.member_id),
        raft_term: header.raft_term,
    })
}

#[derive(Debug, Serialize)]
struct MemberJson {
    id: u64,
    id_hex: String,
    name: String,
    status: &'static str,
    peer_urls: Vec<String>,
    client_urls: Vec<String>,
    is_learner: bool,
}

fn member_json(member: &Member) -> MemberJson {
    MemberJson {
        id: member.id,
        id_hex: format_hex_id(member.id),
        name: member.name.clone(),
        status: member_status(member),
        peer_urls: member.peer_ur_ls.clone(),
        client_urls: member.client_ur_ls.clone(),
        is_learner: member.is_learner,
    }
}

fn members_json(members: &[Member]) -> Vec<MemberJson> {
    sorted_by_id(members).into_iter().map(member_json).collect()
}

#[derive(Debug, Serialize)]
struct ListJson {
    header: Option<HeaderJson>,
    members: Vec<MemberJson>,
}

#[derive(Debug, Serialize)]
struct AddedJson {
    header: Option<HeaderJson>,
    member: MemberJson,
    members: Vec<MemberJson>,
    initial_cluster: String,
    initial_cluster_state: &'static str,
}

#[derive(Debug, Serialize)]
struct ChangedJson {
    header: Option<HeaderJson>,
    id: u64,
    id_hex: String,
    members: Vec<MemberJson>,
}

fn cell_or_dash(text: String) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text
    }
}

/// `member list` output: a table in ID order, or `{"header", "members"}`.
pub fn format_member_list(response: &MemberListResponse, json: bool) -> String {
    if json {
        return json_line(&ListJson {
            header: header_json(&response.header),
            members: members_json(&response.members),
        });
    }
    let rows: Vec<Vec<String>> = sorted_by_id(&response.members)
        .into_iter()
        .map(|member| {
            vec![
                format_hex_id(member.id),
                member_status(member).to_string(),
                cell_or_dash(member.name.clone()),
                cell_or_dash(member.peer_ur_ls.join(",")),
                cell_or_dash(member.client_ur_ls.join(",")),
                member.is_learner.to_string(),
            ]
        })
        .collect();
    render_table(
        &["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"],
        &rows,
    )
}

/// The `--initial-cluster` value for a new member: every member's
/// `name=peer-url` in ID order, with the new member under `new_name`.
/// Other members that have not started yet have no name and are left out
/// (a `name=url` entry needs a name); they are returned second so the
/// output can say so.
pub fn initial_cluster(members: &[Member], new_id: u64, new_name: &str) -> (String, Vec<u64>) {
    let mut entries = Vec::new();
    let mut unnamed = Vec::new();
    for member in sorted_by_id(members) {
        let name = if member.id == new_id {
            new_name
        } else {
            member.name.as_str()
        };
        if name.is_empty() {
            unnamed.push(member.id);
            continue;
        }
        for url in &member.peer_ur_ls {
            entries.push(format!("{name}={url}"));
        }
    }
    (entries.join(","), unnamed)
}

/// `member add` output: the new ID, then the settings to start the member
/// with, as environment variables and as flags.
pub fn format_member_added(response: &MemberAddResponse, name: &str, json: bool) -> anyhow::Result<String> {
    let Some(member) = &response.member else {
        anyhow::bail!("the server added the member but did not say its ID; find it with `zongheng member list`");
    };
    // Older servers leave the new member out of `members`; put it in.
    let mut members = response.members.clone();
    if !members.iter().any(|known| known.id == member.id) {
        members.push(member.clone());
    }
    let (cluster, unnamed) = initial_cluster(&members, member.id, name);
    if json {
        return Ok(json_line(&AddedJson {
            header: header_json(&response.header),
            member: member_json(member),
            members: members_json(&members),
            initial_cluster: cluster,
            initial_cluster_state: "existing",
        }));
    }
    let id = format_hex_id(member.id);
    let cluster_id = format_hex_id(response.header.as_ref().map_or(0, |header| header.cluster_id));
    let peer_urls = member.peer_ur_ls.join(",");
    let mut text = format!("Member {id} added to cluster {cluster_id}");
    if member.is_learner {
        text.push_str(&format!(
            " as a learner; once it has caught up, promote it with `zongheng member promote {id}`"
        ));
    }
    text.push_str("\n\n");
    text.push_str(&format!("ZONGHENG_NAME=\"{name}\"\n"));
    text.push_str(&format!("ZONGHENG_INITIAL_CLUSTER=\"{cluster}\"\n"));
    text.push_str(&format!("ZONGHENG_INITIAL_ADVERTISE_PEER_URLS=\"{peer_urls}\"\n"));
    text.push_str("ZONGHENG_INITIAL_CLUSTER_STATE=\"existing\"\n\n");
    text.push_str("or, as flags:\n");
    text.push_str(&format!(
        "zongheng node --name {name} --initial-cluster {cluster} --initial-advertise-peer-urls {peer_urls} --initial-cluster-state existing\n"
    ));
    for unnamed_id in unnamed {
        text.push_str(&format!(
            "\nNote: member {} has not started yet and has no name, so it is not in the initial cluster above.\n",
            format_hex_id(unnamed_id)
        ));
    }
    Ok(text)
}

/// `member remove` / `member promote` output, as etcdctl:
/// `Member ID removed from cluster CLUSTER_ID`.
pub fn format_member_changed(
    verb: &str,
    id: u64,
    header: &Option<ResponseHeader>,
    members: &[Member],
    json: bool,
) -> String {
    if json {
        return json_line(&ChangedJson {
            header: header_json(header),
            id,
            id_hex: format_hex_id(id),
            members: members_json(members),
        });
    }
    let cluster_id = header.as_ref().map_or(0, |header| header.cluster_id);
    format!(
        "Member {} {verb} cluster {}\n",
        format_hex_id(id),
        format_hex_id(cluster_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, name: &str, peer: &str, client: &str, is_learner: bool) -> Member {
        Member {
            id,
            name: name.to_string(),
            peer_ur_ls: vec![peer.to_string()],
            client_ur_ls: if client.is_empty() {
                vec![]
            } else {
                vec![client.to_string()]
            },
            is_learner,
        }
    }

    fn header() -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: 0xcdf818194e3a8c32,
            member_id: 0x8e9e05c52164694d,
            revision: 5,
            raft_term: 2,
        })
    }

    fn members() -> Vec<Member> {
        vec![
            member(
                0x91bc3c398fb3c146,
                "n2",
                "http://127.0.0.1:22380",
                "http://127.0.0.1:22379",
                false,
            ),
            member(
                0x8e9e05c52164694d,
                "n1",
                "http://127.0.0.1:2380",
                "http://127.0.0.1:2379",
                false,
            ),
            member(0xfd422379fda50e48, "", "http://127.0.0.1:32380", "", true),
        ]
    }

    #[test]
    fn list_is_a_table_in_id_order() {
        let response = MemberListResponse {
            header: header(),
            members: members(),
        };
        assert_eq!(
            format_member_list(&response, false),
            "ID                STATUS     NAME  PEER ADDRS              CLIENT ADDRS            IS LEARNER\n\
             8e9e05c52164694d  started    n1    http://127.0.0.1:2380   http://127.0.0.1:2379   false\n\
             91bc3c398fb3c146  started    n2    http://127.0.0.1:22380  http://127.0.0.1:22379  false\n\
             fd422379fda50e48  unstarted  -     http://127.0.0.1:32380  -                       true\n"
        );
    }

    #[test]
    fn list_json_has_ids_as_numbers_and_hex() {
        let response = MemberListResponse {
            header: header(),
            members: members(),
        };
        let parsed: serde_json::Value = serde_json::from_str(&format_member_list(&response, true)).unwrap();
        assert_eq!(parsed["members"][0]["id"], 0x8e9e05c52164694du64);
        assert_eq!(parsed["members"][0]["id_hex"], "8e9e05c52164694d");
        assert_eq!(parsed["members"][2]["status"], "unstarted");
        assert_eq!(parsed["members"][2]["is_learner"], true);
        assert_eq!(parsed["header"]["cluster_id_hex"], "cdf818194e3a8c32");
    }

    #[test]
    fn add_prints_how_to_start_the_new_member() {
        let new = member(0xaa, "", "http://127.0.0.1:42380", "", false);
        let mut all = members();
        all.push(new.clone());
        let response = MemberAddResponse {
            header: header(),
            member: Some(new),
            members: all,
        };
        let text = format_member_added(&response, "n4", false).unwrap();
        let cluster = "n4=http://127.0.0.1:42380,n1=http://127.0.0.1:2380,n2=http://127.0.0.1:22380";
        assert_eq!(
            text,
            format!(
                "Member aa added to cluster cdf818194e3a8c32\n\n\
                 ZONGHENG_NAME=\"n4\"\n\
                 ZONGHENG_INITIAL_CLUSTER=\"{cluster}\"\n\
                 ZONGHENG_INITIAL_ADVERTISE_PEER_URLS=\"http://127.0.0.1:42380\"\n\
                 ZONGHENG_INITIAL_CLUSTER_STATE=\"existing\"\n\n\
                 or, as flags:\n\
                 zongheng node --name n4 --initial-cluster {cluster} --initial-advertise-peer-urls http://127.0.0.1:42380 --initial-cluster-state existing\n\n\
                 Note: member fd422379fda50e48 has not started yet and has no name, so it is not in the initial cluster above.\n"
            )
        );
        let parsed: serde_json::Value =
            serde_json::from_str(&format_member_added(&response, "n4", true).unwrap()).unwrap();
        assert_eq!(parsed["member"]["id_hex"], "aa");
        assert_eq!(parsed["initial_cluster"], cluster);
        assert_eq!(parsed["initial_cluster_state"], "existing");
    }

    #[test]
    fn add_of_a_learner_says_how_to_promote_it() {
        let new = member(0xbb, "", "http://10.0.0.4:2380", "", true);
        let response = MemberAddResponse {
            header: header(),
            member: Some(new),
            members: vec![],
        };
        let text = format_member_added(&response, "n5", false).unwrap();
        assert!(text.starts_with("Member bb added to cluster cdf818194e3a8c32 as a learner; once it has caught up, promote it with `zongheng member promote bb`\n"), "{text}");
        assert!(
            text.contains("ZONGHENG_INITIAL_CLUSTER=\"n5=http://10.0.0.4:2380\""),
            "{text}"
        );
        let missing = MemberAddResponse {
            header: header(),
            member: None,
            members: vec![],
        };
        assert!(format_member_added(&missing, "n5", false)
            .unwrap_err()
            .to_string()
            .contains("member list"));
    }

    #[test]
    fn remove_and_promote_print_like_etcdctl() {
        assert_eq!(
            format_member_changed("removed from", 0x8e9e05c52164694d, &header(), &[], false),
            "Member 8e9e05c52164694d removed from cluster cdf818194e3a8c32\n"
        );
        assert_eq!(
            format_member_changed("promoted in", 0xfd, &header(), &[], false),
            "Member fd promoted in cluster cdf818194e3a8c32\n"
        );
        let parsed: serde_json::Value =
            serde_json::from_str(&format_member_changed("removed from", 255, &header(), &members(), true)).unwrap();
        assert_eq!(parsed["id"], 255);
        assert_eq!(parsed["id_hex"], "ff");
        assert_eq!(parsed["members"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn names_and_peer_urls_are_checked_before_sending() {
        assert_eq!(parse_member_name("n4"), Ok("n4".to_string()));
        for bad in ["", "a=b", "a,b", "a b"] {
            assert!(parse_member_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_peer_url("http://10.0.0.4:2380"),
            Ok("http://10.0.0.4:2380".to_string())
        );
        assert!(parse_peer_url("10.0.0.4:2380").unwrap_err().contains("needs a scheme"));
        assert!(parse_peer_url("http://10.0.0.4").unwrap_err().contains("host and port"));
        assert!(parse_member_id("zz").unwrap_err().contains("hexadecimal"));
        assert_eq!(parse_member_id("8e9e05c52164694d"), Ok(0x8e9e05c52164694d));
    }

    fn parse(words: &[&str]) -> Result<MemberCommand, String> {
        use clap::Parser;
        let line = ["zongheng", "member"].into_iter().chain(words.iter().copied());
        match crate::cli::Cli::try_parse_from(line) {
            Ok(crate::cli::Cli {
                command: crate::cli::Command::Member(args),
                ..
            }) => Ok(args.command),
            Ok(other) => panic!("{words:?} parsed as {other:?}"),
            Err(error) => Err(error.to_string()),
        }
    }

    #[test]
    fn member_commands_take_hex_ids_and_peer_urls() {
        let words = [
            "add",
            "n4",
            "--peer-urls",
            "http://10.0.0.4:2380,http://10.0.1.4:2380",
            "--learner",
        ];
        let Ok(MemberCommand::Add(add)) = parse(&words) else {
            panic!("not an add")
        };
        assert_eq!(add.name, "n4");
        assert_eq!(add.peer_urls, ["http://10.0.0.4:2380", "http://10.0.1.4:2380"]);
        assert!(add.learner);

        let Ok(MemberCommand::Remove(remove)) = parse(&["remove", "8e9e05c52164694d"]) else {
            panic!("not a remove")
        };
        assert_eq!(remove.id, 0x8e9e05c52164694d);
        let Ok(MemberCommand::Promote(promote)) = parse(&["promote", "0xff"]) else {
            panic!("not a promote")
        };
        assert_eq!(promote.id, 255);
        let Ok(MemberCommand::List(list)) = parse(&["list", "--linearizable", "--json"]) else {
            panic!("not a list")
        };
        assert!(list.linearizable);

        for (words, expected) in [
            (&["remove", "node-1"][..], "hexadecimal"),
            (&["add", "n4"][..], "--peer-urls"),
            (&["add", "n4", "--peer-urls", "10.0.0.4:2380"][..], "needs a scheme"),
            (
                &["add", "a=b", "--peer-urls", "http://h:1"][..],
                "cannot be a member name",
            ),
        ] {
            let error = parse(words).unwrap_err();
            assert!(error.contains(expected), "{words:?} gave {error}");
        }
    }
}
