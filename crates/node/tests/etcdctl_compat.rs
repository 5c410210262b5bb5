//! etcdctl compatibility: one scripted etcdctl session, run against a real
//! etcd 3.4 and against zongheng, must print the same thing.
//!
//! Both servers start fresh as 3-member clusters, so both start at revision
//! 1 and every revision in the transcript must match exactly. What legitimately
//! differs between two clusters is taken out before comparing (see
//! [`normalize_json`] and the `Render` variants): member and cluster ids, raft
//! terms and indexes, timestamps and durations, ports (replaced by
//! `<n1.client>`-style placeholders), db sizes and server versions. What stays
//! is what a client relies on: keys, values, revisions, versions, counts,
//! `more`, branch taken, and error messages.
//!
//! The etcd side runs when `etcd` and `etcdctl` are installed (Debian's
//! `etcd-server` and `etcd-client`); the zongheng side runs whenever `etcdctl`
//! is installed (`ZONGHENG_PROCESS_TESTS=0` turns it off). Each transcript is also
//! written to `$CARGO_TARGET_TMPDIR/etcdctl_compat/<kind>.transcript` to read
//! side by side.

mod common;

use common::{base64_decode, etcd_available, etcdctl_available, zongheng_enabled, Cluster, Kind};
use serde_json::{json, Map, Value};

/// How a step's output is made comparable across clusters.
#[derive(Clone, Copy, Debug)]
enum Render {
    /// stdout and the user-facing stderr lines as they are, ports replaced.
    Text,
    /// `-w json`: headers reduced to their revision, keys and values decoded.
    Json,
    /// `member list -w json`: members sorted by name, ids masked.
    MemberListJson,
    /// `member list`: ids masked, lines sorted.
    MemberListText,
    /// `endpoint status -w json`: only the shape (fields present), and
    /// whether all endpoints agree on one leader among them.
    StatusJsonShape,
    /// `endpoint status`: only the shape of each line and the leader count.
    StatusTextShape,
    /// `endpoint health -w json`: endpoint and health, sorted; no durations.
    HealthJson,
    /// `endpoint health`: lines sorted, durations masked.
    HealthText,
}

struct Step {
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
    /// Shown in the transcript instead of the stdin bytes.
    stdin_label: Option<String>,
    render: Render,
}

fn step(args: &[&str], render: Render) -> Step {
    Step {
        args: args.iter().map(|arg| arg.to_string()).collect(),
        stdin: None,
        stdin_label: None,
        render,
    }
}

fn text(args: &[&str]) -> Step {
    step(args, Render::Text)
}

fn json(args: &[&str]) -> Step {
    let mut args = args.to_vec();
    args.extend(["-w", "json"]);
    step(&args, Render::Json)
}

/// A non-interactive `etcdctl txn`: compares, then success ops, then failure
/// ops, each block ended by an empty line (etcdctl fails with `EOF` without
/// the last one).
fn txn<S: AsRef<str>>(compares: &[&str], success: &[S], failure: &[&str], write_json: bool) -> Step {
    let success: Vec<&str> = success.iter().map(AsRef::as_ref).collect();
    let mut input = String::new();
    for block in [compares, &success, failure] {
        for line in block {
            input.push_str(line);
            input.push('\n');
        }
        input.push('\n');
    }
    let label = if success.len() > 8 {
        format!(
            "{} ops: {} .. {}",
            success.len(),
            success[0],
            success[success.len() - 1]
        )
    } else {
        input.trim_end().replace('\n', " | ")
    };
    let (args, render) = if write_json {
        (vec!["txn", "-w", "json"], Render::Json)
    } else {
        (vec!["txn"], Render::Text)
    };
    Step {
        stdin_label: Some(label),
        stdin: Some(input.into_bytes()),
        ..step(&args, render)
    }
}

/// The scripted session. Comments give the revision after each write: a
/// fresh cluster is at revision 1, every write (put, delete of something,
/// txn with a write, compaction does not count) adds one.
fn script() -> Vec<Step> {
    let mut steps = vec![
        // Plain put and get.
        json(&["get", "foo"]),         // rev 1, nothing there
        text(&["put", "foo", "bar"]),  // 2
        text(&["put", "foo", "bar2"]), // 3
        text(&["get", "foo"]),
        json(&["get", "foo"]),
        text(&["get", "missing"]),
        json(&["get", "missing"]),
        // Four keys under s/ whose create revision, mod revision, version and
        // value all order them differently, so every sort target has one answer.
        text(&["put", "s/c", "val-x"]),                // 4: c created
        text(&["put", "s/a", "val-q"]),                // 5: a created (version 1 at the end)
        text(&["put", "s/d", "val-d1"]),               // 6: d created
        text(&["put", "s/b", "val-b1"]),               // 7: b created
        text(&["put", "s/c", "val-z"]),                // 8: c version 2
        text(&["put", "s/d", "val-d2"]),               // 9
        text(&["put", "s/b", "val-b2"]),               // 10
        text(&["put", "s/d", "val-d3"]),               // 11
        text(&["put", "s/b", "val-m"]),                // 12: b version 3
        text(&["put", "s/d", "val-a"]),                // 13: d version 4
        text(&["put", "s0", "outside the s/ prefix"]), // 14
        text(&["put", "t", "tee"]),                    // 15
        // Ranges.
        text(&["get", "--prefix", "s/"]),
        json(&["get", "--prefix", "s/"]),
        text(&["get", "--from-key", "s/c"]),
        json(&["get", "--from-key", "s/c"]),
        text(&["get", "s/b", "s/d"]),
        json(&["get", "s/b", "s/d"]),
        text(&["get", "s/", "s0"]),
        text(&["get", "--prefix", "", "--keys-only"]),
        // History.
        text(&["get", "--rev=6", "--prefix", "s/"]),
        json(&["get", "--rev=6", "--prefix", "s/"]),
        json(&["get", "--rev=3", "foo"]),
        json(&["get", "--rev=2", "foo"]),
        // Limits, projections.
        text(&["get", "--prefix", "s/", "--limit=2"]),
        json(&["get", "--prefix", "s/", "--limit=2"]),
        json(&["get", "--prefix", "s/", "--limit=4"]),
        text(&["get", "--prefix", "s/", "--keys-only"]),
        json(&["get", "--prefix", "s/", "--keys-only"]),
        text(&["get", "--print-value-only", "s/a"]),
        text(&["get", "--prefix", "s/", "--print-value-only"]),
    ];
    // Every sort target, both orders.
    for target in ["CREATE", "KEY", "MODIFY", "VALUE", "VERSION"] {
        for order in ["ASCEND", "DESCEND"] {
            let sort_by = format!("--sort-by={target}");
            let order = format!("--order={order}");
            steps.push(text(&["get", "--prefix", "s/", &sort_by, &order]));
        }
    }
    steps.extend([
        text(&["get", "--prefix", "s/", "--order=DESCEND"]),
        json(&[
            "get",
            "--prefix",
            "s/",
            "--sort-by=VALUE",
            "--order=ASCEND",
            "--limit=2",
        ]),
        // Without --order, etcdctl sends sort order NONE; etcd 3.4 then takes
        // the first `limit` keys in key order and only sorts those by value
        // (its server defaults the order to ASCEND after deciding the limit).
        json(&["get", "--prefix", "s/", "--sort-by=VALUE", "--limit=2"]),
        json(&[
            "get",
            "--prefix",
            "s/",
            "--sort-by=MODIFY",
            "--order=DESCEND",
            "--limit=1",
        ]),
        // Transactions: each compare kind, both branches.
        txn(
            &[r#"value("foo") = "bar2""#],
            &["put txn/1 yes"],
            &["put txn/1 no"],
            false,
        ), // 16
        txn(
            &[r#"value("foo") = "nope""#],
            &["put txn/2 yes"],
            &["put txn/2 no", "get foo"],
            false,
        ), // 17
        txn(&[r#"version("s/d") = "4""#], &["get s/d"], &["get s/a"], false), // read only: 17
        txn(&[r#"version("s/d") > "4""#], &["get s/d"], &["get s/a"], false), // read only: 17
        txn(
            &[r#"create("s/c") = "4""#, r#"mod("s/b") = "12""#],
            &["put txn/3 both"],
            &["put txn/3 neither"],
            false,
        ), // 18
        txn(
            &[r#"mod("s/b") > "100""#],
            &["put txn/4 newer"],
            &["put txn/4 older"],
            false,
        ), // 19
        txn(&[r#"create("s/a") < "5""#], &["put txn/5 lt"], &["put txn/5 ge"], false), // 20
        txn(
            &[r#"version("nokey") = "0""#, r#"value("foo") != "bar""#],
            &["put txn/6 absent"],
            &[],
            false,
        ), // 21
        txn(
            &[r#"value("foo") = "bar2""#],
            &["put txn/7 x", "get txn/1", "del txn/2"],
            &[],
            true,
        ), // 22
        txn(
            &[r#"value("foo") > "zzz""#],
            &["put txn/8 x"],
            &["get --prefix txn/", "del txn/7"],
            true,
        ), // 23
        txn(&[], &["put txn/9 unconditional"], &["put txn/9 never"], false),  // 24
        text(&["get", "--prefix", "txn/"]),
        // Deletes.
        text(&["del", "s0"]),                   // 25
        text(&["del", "s0"]),                   // nothing deleted: 25
        text(&["del", "--prev-kv", "txn/1"]),   // 26
        json(&["del", "--prev-kv", "txn/3"]),   // 27
        text(&["del", "--prefix", "txn/"]),     // 28
        text(&["del", "--prefix", "nothing/"]), // 28
        json(&["get", "--prefix", ""]),
        // Compaction and history bounds.
        text(&["compaction", "10"]),
        text(&["get", "--rev=9", "foo"]),
        text(&["get", "--rev=10", "foo"]),
        json(&["get", "--rev=10", "--prefix", "s/"]),
        text(&["compaction", "5"]),
        text(&["compaction", "1000"]),
        text(&["get", "--rev=1000", "foo"]),
        text(&["get", "--rev=29", "foo"]),
        // Limits and bad input.
        Step {
            stdin: Some(vec![b'x'; 1_600_000]),
            stdin_label: Some("1600000 bytes of 'x'".to_string()),
            ..text(&["put", "big"])
        },
        Step {
            stdin: Some(vec![b'y'; 1_000_000]),
            stdin_label: Some("1000000 bytes of 'y'".to_string()),
            ..text(&["put", "big"])
        }, // 29
        json(&["get", "big", "--keys-only"]),
        text(&["del", "big"]), // 30
        text(&["put", "", "empty key"]),
        // etcd's --max-txn-ops is 128: one more is refused, exactly 128 pass.
        txn(
            &[],
            &(1..=129).map(|n| format!("put ops/{n:03} v")).collect::<Vec<_>>(),
            &[],
            false,
        ),
        txn(
            &[],
            &(1..=128).map(|n| format!("put ops/{n:03} v")).collect::<Vec<_>>(),
            &[],
            false,
        ), // 31
        text(&["del", "--prefix", "ops/"]), // 32
        txn(&[], &["put dup 1", "put dup 2"], &[], false),
        text(&["member", "remove", "1234abcd"]),
        json(&["get", "foo"]),
        // Cluster views.
        step(&["member", "list", "-w", "json"], Render::MemberListJson),
        step(&["member", "list"], Render::MemberListText),
        step(&["endpoint", "status", "-w", "json"], Render::StatusJsonShape),
        step(&["endpoint", "status"], Render::StatusTextShape),
        step(&["endpoint", "health", "-w", "json"], Render::HealthJson),
        step(&["endpoint", "health"], Render::HealthText),
    ]);
    steps
}

/// Runs the script on a fresh 3-member cluster of `kind`; returns one
/// normalized block per step.
fn run_script(kind: Kind) -> Vec<String> {
    let cluster = Cluster::start(kind, 3);
    let ports = cluster.port_placeholders();
    let mut blocks = Vec::new();
    for step in script() {
        let args: Vec<&str> = step.args.iter().map(String::as_str).collect();
        let output = match &step.stdin {
            Some(input) => cluster.etcdctl_stdin(&args, input),
            None => cluster.etcdctl(&args),
        };
        let mut block = format!("$ etcdctl {}", quote_args(&step.args));
        if let Some(label) = &step.stdin_label {
            block.push_str(&format!(" <<< {label}"));
        }
        block.push('\n');
        let stdout = replace_ports(&output.stdout, &ports);
        let rendered = match step.render {
            Render::Text => stdout,
            _ if !output.success() => stdout,
            Render::Json => pretty(&normalize_json(output.json(), &ports)),
            Render::MemberListJson => pretty(&member_list_json(output.json(), &ports)),
            Render::MemberListText => member_list_text(&stdout),
            Render::StatusJsonShape => pretty(&status_json_shape(output.json(), &ports)),
            Render::StatusTextShape => status_text_shape(&stdout),
            Render::HealthJson => pretty(&health_json(output.json(), &ports)),
            // etcdctl 3.4 prints "is healthy" lines on stderr, in completion order.
            Render::HealthText => health_text(&format!("{stdout}{}", replace_ports(&output.errors(), &ports))),
        };
        block.push_str(&rendered);
        if !block.ends_with('\n') {
            block.push('\n');
        }
        let errors = match step.render {
            Render::HealthText => String::new(),
            _ => replace_ports(&output.errors(), &ports),
        };
        for line in errors.lines() {
            block.push_str(&format!("! {line}\n"));
        }
        if !output.success() {
            block.push_str(&format!("[exit {:?}]\n", output.code));
        }
        blocks.push(block);
    }
    blocks
}

fn quote_args(args: &[String]) -> String {
    args.iter()
        .map(|arg| {
            if arg.is_empty() || arg.contains(' ') {
                format!("'{arg}'")
            } else {
                arg.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn replace_ports(text: &str, ports: &[(String, String)]) -> String {
    let mut text = text.to_string();
    for (address, placeholder) in ports {
        text = text.replace(address, placeholder);
    }
    text
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON prints") + "\n"
}

/// Shows bytes from `-w json` (base64) as text when they are UTF-8.
fn decode_bytes(value: &Value) -> Value {
    match value.as_str().and_then(base64_decode) {
        Some(bytes) => match String::from_utf8(bytes) {
            Ok(text) if text.len() <= 200 => Value::String(text),
            Ok(text) => Value::String(format!("<{} bytes starting {:?}>", text.len(), &text[..20])),
            Err(_) => value.clone(),
        },
        None => value.clone(),
    }
}

/// Makes etcdctl's JSON comparable across clusters: every response header
/// keeps only its revision, ids/terms/sizes are masked, ports replaced, and
/// keys and values decoded from base64.
fn normalize_json(value: Value, ports: &[(String, String)]) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (name, field) in map {
                let normalized = match name.as_str() {
                    "header" => {
                        json!({ "revision": field.get("revision").cloned().unwrap_or(Value::Null) })
                    }
                    "cluster_id" | "member_id" | "raft_term" | "ID" | "leader" | "raftIndex" | "raftTerm"
                    | "raftAppliedIndex" | "dbSize" | "dbSizeInUse" | "took" => Value::String("<masked>".into()),
                    "version" if field.is_string() => Value::String("<masked>".into()),
                    "key" | "value" => decode_bytes(&field),
                    _ => normalize_json(field, ports),
                };
                out.insert(name, normalized);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(|item| normalize_json(item, ports)).collect()),
        Value::String(text) => Value::String(replace_ports(&text, ports)),
        other => other,
    }
}

fn member_list_json(value: Value, ports: &[(String, String)]) -> Value {
    let mut members: Vec<Value> = value["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|member| normalize_json(member, ports))
        .collect();
    members.sort_by_key(|member| member["name"].as_str().unwrap_or_default().to_string());
    json!({ "member_count": members.len(), "members": members })
}

fn member_list_text(stdout: &str) -> String {
    let mut lines: Vec<String> = stdout
        .lines()
        .map(|line| match line.split_once(", ") {
            Some((_id, rest)) => format!("<id>, {rest}"),
            None => line.to_string(),
        })
        .collect();
    lines.sort();
    lines.join("\n") + "\n"
}

/// `endpoint status -w json` reduced to its shape: which endpoints answered
/// and with which fields, and whether they agree on a leader among them.
fn status_json_shape(value: Value, ports: &[(String, String)]) -> Value {
    let entries = value.as_array().cloned().unwrap_or_default();
    let mut shapes = Vec::new();
    let mut leaders = std::collections::BTreeSet::new();
    let mut member_ids = std::collections::BTreeSet::new();
    for entry in &entries {
        let status = &entry["Status"];
        let fields: Vec<&String> = status.as_object().map(|map| map.keys().collect()).unwrap_or_default();
        let header: Vec<&String> = status["header"]
            .as_object()
            .map(|map| map.keys().collect())
            .unwrap_or_default();
        leaders.insert(status["leader"].as_u64());
        member_ids.insert(status["header"]["member_id"].as_u64());
        shapes.push(json!({
            "Endpoint": replace_ports(entry["Endpoint"].as_str().unwrap_or_default(), ports),
            "Status fields": fields,
            "header fields": header,
        }));
    }
    shapes.sort_by_key(|shape| shape["Endpoint"].as_str().unwrap_or_default().to_string());
    let leader = leaders.iter().next().copied().flatten();
    json!({
        "endpoints": shapes,
        "one leader agreed by all": leaders.len() == 1,
        "leader is one of them": leader.is_some() && member_ids.contains(&leader),
        "distinct member ids": member_ids.len(),
    })
}

/// `endpoint status` (table-like text): endpoint, field count, learner flag
/// and error column kept; how many lines claim leadership.
fn status_text_shape(stdout: &str) -> String {
    let mut lines = Vec::new();
    let mut leaders = 0;
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split(", ").collect();
        if fields.len() < 10 {
            lines.push(format!("unexpected line: {line}"));
            continue;
        }
        if fields[4] == "true" {
            leaders += 1;
        }
        lines.push(format!(
            "{}, <id>, <version>, <db size>, <is leader>, {}, <term>, <index>, <applied index>, {}",
            fields[0],
            fields[5],
            fields[9..].join(", ")
        ));
    }
    lines.sort();
    lines.push(format!("lines claiming leadership: {leaders}"));
    lines.join("\n") + "\n"
}

fn health_json(value: Value, ports: &[(String, String)]) -> Value {
    let mut entries: Vec<Value> = value
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|entry| {
            let mut entry = normalize_json(entry, ports);
            if let Some(map) = entry.as_object_mut() {
                map.remove("took");
            }
            entry
        })
        .collect();
    entries.sort_by_key(|entry| entry["endpoint"].as_str().unwrap_or_default().to_string());
    Value::Array(entries)
}

fn health_text(output: &str) -> String {
    let mut lines: Vec<String> = output
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| match line.split_once("took = ") {
            Some((head, _)) => format!("{head}took = <duration>"),
            None => line.to_string(),
        })
        .collect();
    lines.sort();
    lines.join("\n") + "\n"
}

/// Writes a transcript where a person can read it next to the other one.
fn save_transcript(kind: Kind, blocks: &[String]) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("etcdctl_compat");
    let path = dir.join(format!("{}.transcript", kind.label()));
    let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, blocks.concat()));
    match written {
        Ok(()) => println!("{} transcript: {}", kind.label(), path.display()),
        Err(error) => println!("cannot write {}: {error}", path.display()),
    }
}

/// Things the reference transcript must show; if etcd does not print them,
/// the script (not zongheng) is wrong.
fn check_reference(blocks: &[String]) {
    let all = blocks.concat();
    for expected in [
        "! Error: etcdserver: mvcc: required revision has been compacted",
        "! Error: etcdserver: mvcc: required revision is a future revision",
        "! Error: etcdserver: request is too large",
        "! Error: etcdserver: too many operations in txn request",
        "! Error: etcdserver: duplicate key given in txn request",
        "! Error: etcdserver: key is not provided",
        "! Error: etcdserver: member not found",
        "compacted revision 10",
        "SUCCESS",
        "FAILURE",
        "\"more\": true",
        "\"one leader agreed by all\": true",
        "lines claiming leadership: 1",
    ] {
        assert!(
            all.contains(expected),
            "reference transcript lacks {expected:?}:\n{all}"
        );
    }
    assert!(!all.contains("Error: EOF"), "a txn step is malformed:\n{all}");
    assert!(
        !all.contains("unexpected line"),
        "endpoint status changed shape:\n{all}"
    );
    let health = blocks.last().expect("script has steps");
    assert_eq!(
        health.matches("is healthy").count(),
        3,
        "every endpoint healthy:\n{health}"
    );
}

#[test]
fn etcdctl_session_matches_etcd() {
    if !etcdctl_available() {
        return;
    }
    let reference = if etcd_available() {
        let blocks = run_script(Kind::Etcd);
        save_transcript(Kind::Etcd, &blocks);
        check_reference(&blocks);
        Some(blocks)
    } else {
        None
    };
    if !zongheng_enabled() {
        return;
    }
    let ours = run_script(Kind::Zongheng);
    save_transcript(Kind::Zongheng, &ours);
    let Some(reference) = reference else {
        println!("zongheng transcript recorded; nothing to compare it with without etcd");
        return;
    };
    let differences: Vec<String> = reference
        .iter()
        .zip(&ours)
        .filter(|(theirs, ours)| theirs != ours)
        .map(|(theirs, ours)| format!("--- etcd\n{theirs}+++ zongheng\n{ours}"))
        .collect();
    assert!(
        differences.is_empty() && reference.len() == ours.len(),
        "{} of {} steps differ from etcd:\n{}",
        differences.len(),
        reference.len(),
        differences.join("\n")
    );
}

#[test]
fn base64_decodes_what_etcdctl_prints() {
    assert_eq!(base64_decode("YQ==").unwrap(), b"a");
    assert_eq!(base64_decode("dmFsLXE=").unwrap(), b"val-q");
    assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
    assert_eq!(base64_decode("").unwrap(), b"");
    assert!(base64_decode("a").is_none());
    assert!(base64_decode("a?==").is_none());
}
