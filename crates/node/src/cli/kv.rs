//! `zongheng kv`: read and write keys without etcdctl.
//!
//! - `kv put KEY VALUE` writes a key (`--prev-kv`, `--ignore-value`,
//!   `--ignore-lease`, `--lease ID`).
//! - `kv get KEY [RANGE_END]` reads a key or a range (`--prefix`,
//!   `--from-key`, `--rev`, `--limit`, `--sort-by`, `--order`, ...).
//! - `kv del KEY [RANGE_END]` deletes a key or a range.
//! - `kv txn` runs a guarded transaction read from stdin (or `--file`).
//! - `kv compact REV` drops the history before a revision.
//!
//! ## Why it looks like etcdctl
//! The flags, the key-range rules and the txn script grammar are etcdctl's,
//! so commands and scripts move between the two unchanged, and the text
//! output is etcdctl's "simple" format (a key line, then a value line).
//! `--json` prints one JSON object per command for scripts; key and value
//! are strings when they are valid UTF-8 and base64 (`key_b64`,
//! `value_b64`) when not, so nothing is lost.
//!
//! ## Key ranges
//! A request names the range `[key, range_end)`. An empty `range_end` means
//! the single key; `"\0"` means every key from `key` on (`--from-key`);
//! `--prefix` uses the smallest key greater than every key with the prefix
//! (etcd's `GetPrefixRangeEnd`, see [`prefix_range_end`]). An empty key
//! with `--prefix` or `--from-key` means the whole keyspace, as in etcd's
//! client.
//!
//! ## The txn script
//! The same grammar as `etcdctl txn` without `-i`: compares one a line, a
//! blank line, the ops to run if all compares hold, a blank line, the ops
//! to run otherwise. See [`parse_txn_script`]. Two small extensions: lines
//! starting with `#` are comments, and a number in a compare may be written
//! without quotes (`mod("k") > 5`).
//!
//! ## Not yet
//! No `watch` or `lease` commands (the node does not serve them yet), no
//! interactive txn prompt (`etcdctl txn -i`), no reading a put's value from
//! stdin.

use std::ffi::{OsStr, OsString};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Serialize;
use zongheng_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use zongheng_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use zongheng_proto::etcdserverpb::{
    request_op, response_op, CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use zongheng_proto::mvccpb::KeyValue;

use super::client::{display_bytes, json_bytes, json_line, parse_hex_id, print_output, Client, ClientOptions};

/// The largest txn script read, from stdin or `--file`: 4 MiB. A server
/// takes requests of about 1.5 MiB (etcd's default `--max-request-bytes`),
/// so a larger script cannot succeed anyway.
pub const TXN_SCRIPT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// `zongheng kv txn --help`: the script grammar, with an example.
const TXN_LONG_HELP: &str = r#"Run a transaction read from stdin (or --file), as `etcdctl txn` does.

The script is: compares, one a line; a blank line; the ops to run if every
compare holds; a blank line; the ops to run otherwise.

Compares: TARGET("key") OP "value", where TARGET is version (ver), create (c),
mod (m), value (val) or lease (a hexadecimal lease ID), and OP is =, !=, < or >.

Ops: put KEY VALUE, get KEY [RANGE_END] and del KEY [RANGE_END], with the
flags of `kv put`, `kv get` and `kv del` (e.g. --prefix). Quote arguments with
"..." (Go escapes such as \x00 allowed) or '...'. Lines starting with # are
ignored.

Example (set config only if nobody changed it since revision 7):

    mod("config") = "7"

    put config "new value"

    get config

Prints SUCCESS or FAILURE, then the response of each op after a blank line."#;

/// `zongheng kv ...`
#[derive(Debug, clap::Args)]
pub struct KvArgs {
    #[command(subcommand)]
    pub command: KvCommand,

    #[command(flatten)]
    pub client: ClientOptions,
}

#[derive(Debug, clap::Subcommand)]
pub enum KvCommand {
    /// Write a key. Prints OK (and the previous key-value pair with --prev-kv).
    Put(PutOp),
    /// Read a key or a range of keys. Prints each key, then its value.
    Get(GetArgs),
    /// Delete a key or a range of keys. Prints how many were deleted.
    #[command(alias = "delete")]
    Del(DelOp),
    /// Run a transaction read from stdin (or --file), as `etcdctl txn` does.
    #[command(long_about = TXN_LONG_HELP)]
    Txn(TxnArgs),
    /// Drop the history before a revision. Prints the revision compacted.
    Compact(CompactArgs),
}

/// `kv put`, and a `put` line in a txn script.
#[derive(Debug, Clone, clap::Args)]
pub struct PutOp {
    /// The key to write.
    pub key: OsString,

    /// The value to write. Leave it out with --ignore-value.
    #[arg(required_unless_present = "ignore_value", conflicts_with = "ignore_value")]
    pub value: Option<OsString>,

    /// Also return the key-value pair as it was before the put.
    #[arg(long)]
    pub prev_kv: bool,

    /// Keep the current value (change only the lease).
    #[arg(long)]
    pub ignore_value: bool,

    /// Attach the key to this lease, a hexadecimal ID as `etcdctl lease
    /// grant` prints it (0 detaches the key from its lease).
    #[arg(long, value_name = "ID", value_parser = parse_lease_id, conflicts_with = "ignore_lease")]
    pub lease: Option<i64>,

    /// Keep the current lease (change only the value).
    #[arg(long)]
    pub ignore_lease: bool,
}

impl PutOp {
    pub fn to_request(&self) -> PutRequest {
        PutRequest {
            key: os_bytes(&self.key),
            value: self.value.as_deref().map(os_bytes).unwrap_or_default(),
            lease: self.lease.unwrap_or(0),
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        }
    }
}

/// `kv get` without its display flags, and a `get` line in a txn script.
#[derive(Debug, Clone, clap::Args)]
pub struct GetOp {
    /// The key to read (the first key of the range with RANGE_END).
    pub key: OsString,

    /// Read every key from KEY up to, not including, RANGE_END.
    #[arg(conflicts_with_all = ["prefix", "from_key"])]
    pub range_end: Option<OsString>,

    /// Read every key that starts with KEY.
    #[arg(long, conflicts_with = "from_key")]
    pub prefix: bool,

    /// Read every key from KEY on (greater than or equal to it).
    #[arg(long)]
    pub from_key: bool,

    /// Read as of this revision (0, the default, is the latest).
    #[arg(long, value_name = "REV", value_parser = clap::value_parser!(i64).range(0..))]
    pub rev: Option<i64>,

    /// Return at most N keys (0, the default, is no limit).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
    pub limit: Option<i64>,

    /// Return keys without values.
    #[arg(long, conflicts_with = "count_only")]
    pub keys_only: bool,

    /// Return only the number of keys in the range.
    #[arg(long)]
    pub count_only: bool,

    /// Read from the member's local state without asking the leader: served
    /// even without quorum, but may be stale.
    #[arg(long)]
    pub serializable: bool,

    /// Sort the keys by this field (ascending unless --order says otherwise).
    #[arg(long, value_enum, ignore_case = true, value_name = "FIELD")]
    pub sort_by: Option<SortBy>,

    /// Sort order (by key unless --sort-by says otherwise).
    #[arg(long, value_enum, ignore_case = true)]
    pub order: Option<Order>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    Key,
    Version,
    Create,
    Modify,
    Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    Ascend,
    Descend,
}

impl GetOp {
    pub fn to_request(&self) -> RangeRequest {
        let (key, range_end) = key_range(
            os_bytes(&self.key),
            self.range_end.as_deref().map(os_bytes),
            self.prefix,
            self.from_key,
        );
        let sort_target = match self.sort_by {
            None | Some(SortBy::Key) => SortTarget::Key,
            Some(SortBy::Version) => SortTarget::Version,
            Some(SortBy::Create) => SortTarget::Create,
            Some(SortBy::Modify) => SortTarget::Mod,
            Some(SortBy::Value) => SortTarget::Value,
        };
        // As etcdctl: a sort field without an order sorts ascending.
        let sort_order = match (self.order, self.sort_by) {
            (Some(Order::Ascend), _) => SortOrder::Ascend,
            (Some(Order::Descend), _) => SortOrder::Descend,
            (None, Some(_)) => SortOrder::Ascend,
            (None, None) => SortOrder::None,
        };
        RangeRequest {
            key,
            range_end,
            limit: self.limit.unwrap_or(0),
            revision: self.rev.unwrap_or(0),
            sort_order: sort_order as i32,
            sort_target: sort_target as i32,
            serializable: self.serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            ..Default::default()
        }
    }
}

/// `kv get`.
#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub op: GetOp,

    /// Print only the values, one a line.
    #[arg(long, conflicts_with_all = ["keys_only", "count_only"])]
    pub print_value_only: bool,
}

impl GetArgs {
    pub fn view(&self) -> GetView {
        GetView {
            keys_only: self.op.keys_only,
            count_only: self.op.count_only,
            print_value_only: self.print_value_only,
        }
    }
}

/// `kv del`, and a `del` line in a txn script.
#[derive(Debug, Clone, clap::Args)]
pub struct DelOp {
    /// The key to delete (the first key of the range with RANGE_END).
    pub key: OsString,

    /// Delete every key from KEY up to, not including, RANGE_END.
    #[arg(conflicts_with_all = ["prefix", "from_key"])]
    pub range_end: Option<OsString>,

    /// Delete every key that starts with KEY.
    #[arg(long, conflicts_with = "from_key")]
    pub prefix: bool,

    /// Delete every key from KEY on.
    #[arg(long)]
    pub from_key: bool,

    /// Also return (and print) the deleted key-value pairs.
    #[arg(long)]
    pub prev_kv: bool,
}

impl DelOp {
    pub fn to_request(&self) -> DeleteRangeRequest {
        let (key, range_end) = key_range(
            os_bytes(&self.key),
            self.range_end.as_deref().map(os_bytes),
            self.prefix,
            self.from_key,
        );
        DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.prev_kv,
        }
    }
}

/// `kv txn`.
#[derive(Debug, Clone, clap::Args)]
pub struct TxnArgs {
    /// Read the script from this file instead of stdin.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// `kv compact`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompactArgs {
    /// Drop every version of every key older than this revision (keeping
    /// each key's latest version at or before it).
    #[arg(value_name = "REV", value_parser = clap::value_parser!(i64).range(1..))]
    pub revision: i64,

    /// Wait until the compaction is physically applied to the storage.
    #[arg(long)]
    pub physical: bool,
}

/// Runs `zongheng kv ...`: checks the input, connects, sends, prints.
pub async fn run(args: KvArgs) -> anyhow::Result<()> {
    let KvArgs {
        command,
        client: options,
    } = args;
    let json = options.json;
    match command {
        KvCommand::Put(op) => {
            let request = op.to_request();
            let mut client = Client::connect(&options).await?;
            let response = client.put(request).await?;
            print_output(&format_put(&response, json))
        }
        KvCommand::Get(args) => {
            let request = args.op.to_request();
            let mut client = Client::connect(&options).await?;
            let response = client.range(request).await?;
            print_output(&format_range(&response, args.view(), json))?;
            if response.more && !json {
                eprintln!(
                    "({} of {} keys shown; raise --limit to see more)",
                    response.kvs.len(),
                    response.count
                );
            }
            Ok(())
        }
        KvCommand::Del(op) => {
            let request = op.to_request();
            let mut client = Client::connect(&options).await?;
            let response = client.delete_range(request).await?;
            print_output(&format_delete(&response, json))
        }
        KvCommand::Txn(args) => {
            let script = read_txn_script(args.file.as_deref())?;
            let request = parse_txn_script(&script)?;
            let mut client = Client::connect(&options).await?;
            let response = client.txn(request).await?;
            print_output(&format_txn(&response, json))
        }
        KvCommand::Compact(args) => {
            let request = CompactionRequest {
                revision: args.revision,
                physical: args.physical,
            };
            let mut client = Client::connect(&options).await?;
            let response = client.compact(request).await?;
            print_output(&format_compact(&response, args.revision, json))
        }
    }
}

// ---------------------------------------------------------------------------
// Keys and ranges.

/// Parses a lease ID as etcdctl takes it: hexadecimal.
pub fn parse_lease_id(input: &str) -> Result<i64, String> {
    let id = parse_hex_id(input)
        .map_err(|_| format!("{input:?} is not a lease ID; give it in hexadecimal as `etcdctl lease grant` prints it (e.g. 694d77aa9e38260f)"))?;
    i64::try_from(id).map_err(|_| format!("{input:?} is larger than any lease ID (at most 7fffffffffffffff)"))
}

/// The raw bytes of a command line argument (on Unix, exactly the bytes
/// the shell passed, so `$'\xff'` keys work).
fn os_bytes(text: &OsStr) -> Vec<u8> {
    text.as_encoded_bytes().to_vec()
}

/// The end of the range of every key starting with `prefix`: the prefix
/// with trailing 0xff bytes dropped and its last byte incremented. When
/// there is no such key (an empty prefix, or one of 0xff bytes only), the
/// range runs to the end of the keyspace: `"\0"`.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&byte| byte < 0xff) {
        Some(last) => {
            let mut end = prefix[..=last].to_vec();
            end[last] += 1;
            end
        }
        None => vec![0],
    }
}

/// The `(key, range_end)` of a request, from a key, an optional explicit
/// range end and the `--prefix` / `--from-key` flags (which clap keeps
/// apart from each other and from an explicit end).
pub fn key_range(key: Vec<u8>, range_end: Option<Vec<u8>>, prefix: bool, from_key: bool) -> (Vec<u8>, Vec<u8>) {
    if (prefix || from_key) && key.is_empty() {
        // etcd's client does the same: the whole keyspace starts at "\0".
        return (vec![0], vec![0]);
    }
    if prefix {
        let end = prefix_range_end(&key);
        return (key, end);
    }
    if from_key {
        return (key, vec![0]);
    }
    (key, range_end.unwrap_or_default())
}

// ---------------------------------------------------------------------------
// The txn script.

/// A mistake in a txn script, with the line it is on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("txn script{}: {reason}. See `zongheng kv txn --help` for the grammar", line_suffix(*.line, .text))]
pub struct TxnScriptError {
    /// 1-based line number; `None` for mistakes about the whole script.
    pub line: Option<usize>,
    /// The line as written (trimmed).
    pub text: String,
    pub reason: String,
}

fn line_suffix(line: Option<usize>, text: &str) -> String {
    match line {
        Some(line) => format!(" line {line} `{text}`"),
        None => String::new(),
    }
}

fn read_txn_script(file: Option<&Path>) -> anyhow::Result<String> {
    let limit = TXN_SCRIPT_BYTES_MAX as u64 + 1;
    let mut bytes = Vec::new();
    let source = match file {
        Some(path) => {
            let opened = std::fs::File::open(path)
                .map_err(|error| anyhow::anyhow!("could not open the txn script {}: {error}", path.display()))?;
            opened
                .take(limit)
                .read_to_end(&mut bytes)
                .map_err(|error| anyhow::anyhow!("could not read the txn script {}: {error}", path.display()))?;
            path.display().to_string()
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("Reading a txn script from stdin: compares, a blank line, success ops, a blank line, failure ops. End it with Ctrl-D.");
            }
            stdin
                .lock()
                .take(limit)
                .read_to_end(&mut bytes)
                .map_err(|error| anyhow::anyhow!("could not read the txn script from stdin: {error}"))?;
            "stdin".to_string()
        }
    };
    if bytes.len() > TXN_SCRIPT_BYTES_MAX {
        anyhow::bail!(
            "the txn script from {source} is larger than the limit of {TXN_SCRIPT_BYTES_MAX} bytes; split the transaction"
        );
    }
    String::from_utf8(bytes).map_err(|_| {
        anyhow::anyhow!(
            "the txn script from {source} is not UTF-8; write other bytes as \\xNN escapes inside double quotes"
        )
    })
}

/// Parses an etcdctl txn script (see the module docs and `kv txn --help`).
///
/// Blank lines move from compares to success ops to failure ops; a line
/// after the failure ops' closing blank line is an error rather than
/// silently dropped. A script that ends early leaves the later sections
/// empty. Every error names the line.
pub fn parse_txn_script(script: &str) -> Result<TxnRequest, TxnScriptError> {
    #[derive(Clone, Copy)]
    enum Section {
        Compares,
        Success,
        Failure,
        Done,
    }
    let mut section = Section::Compares;
    let mut txn = TxnRequest::default();
    let mut has_content = false;
    for (index, raw_line) in script.lines().enumerate() {
        let line = raw_line.trim();
        if line.starts_with('#') {
            continue;
        }
        if line.is_empty() {
            section = match section {
                Section::Compares => Section::Success,
                Section::Success => Section::Failure,
                Section::Failure | Section::Done => Section::Done,
            };
            continue;
        }
        has_content = true;
        let at_line = |reason: String| TxnScriptError {
            line: Some(index + 1),
            text: line.to_string(),
            reason,
        };
        match section {
            Section::Compares => txn.compare.push(parse_compare(line).map_err(at_line)?),
            Section::Success => txn.success.push(parse_op(line).map_err(at_line)?),
            Section::Failure => txn.failure.push(parse_op(line).map_err(at_line)?),
            Section::Done => {
                return Err(at_line(
                    "unexpected line after the failure ops (a script has three parts separated by blank lines: compares, success ops, failure ops)"
                        .to_string(),
                ))
            }
        }
    }
    if !has_content {
        return Err(TxnScriptError {
            line: None,
            text: String::new(),
            reason: "the script is empty".to_string(),
        });
    }
    Ok(txn)
}

/// Parses one compare: `TARGET("key") OP "value"`.
pub fn parse_compare(line: &str) -> Result<Compare, String> {
    const SHAPE: &str = r#"expected a compare like mod("key") > "5": a target, the key in quotes in parentheses, an operator (=, !=, < or >) and a value"#;
    let Some((target, rest)) = line.split_once('(') else {
        return Err(SHAPE.to_string());
    };
    let target = target.trim();
    let (key, rest) = parse_quoted(rest.trim_start()).map_err(|reason| format!("the key: {reason}"))?;
    let Some(rest) = rest.trim_start().strip_prefix(')') else {
        return Err(format!("expected ')' after the key; {SHAPE}"));
    };
    let rest = rest.trim_start();
    let operator_len = rest
        .find(|c: char| !matches!(c, '=' | '!' | '<' | '>'))
        .unwrap_or(rest.len());
    let (operator, rest) = rest.split_at(operator_len);
    let result = match operator {
        "=" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        "<" => CompareResult::Less,
        ">" => CompareResult::Greater,
        "" => return Err(format!("expected an operator after the key; {SHAPE}")),
        other => return Err(format!("unknown operator {other:?}; use =, !=, < or >")),
    };
    let rest = rest.trim_start();
    if rest.is_empty() {
        return Err(format!("expected a value after the operator; {SHAPE}"));
    }
    let (value, rest) = if rest.starts_with('"') || rest.starts_with('`') {
        parse_quoted(rest).map_err(|reason| format!("the value: {reason}"))?
    } else {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        (rest.as_bytes()[..end].to_vec(), &rest[end..])
    };
    if !rest.trim().is_empty() {
        return Err(format!("unexpected text {:?} after the value", rest.trim()));
    }
    let number = |base: u32, what: &str| -> Result<i64, String> {
        let text = std::str::from_utf8(&value).map_err(|_| format!("{what} must be a number"))?;
        i64::from_str_radix(text, base).map_err(|_| match base {
            16 => format!("{what} must be a hexadecimal lease ID, got {text:?}"),
            _ => format!("{what} must be a decimal integer, got {text:?}"),
        })
    };
    let (target, target_union) = match target {
        "ver" | "version" => (CompareTarget::Version, TargetUnion::Version(number(10, "a version")?)),
        "c" | "create" => (
            CompareTarget::Create,
            TargetUnion::CreateRevision(number(10, "a create revision")?),
        ),
        "m" | "mod" => (
            CompareTarget::Mod,
            TargetUnion::ModRevision(number(10, "a mod revision")?),
        ),
        "val" | "value" => (CompareTarget::Value, TargetUnion::Value(value)),
        "lease" => (CompareTarget::Lease, TargetUnion::Lease(number(16, "a lease")?)),
        other => {
            return Err(format!(
                "unknown compare target {other:?}; use version (ver), create (c), mod (m), value (val) or lease"
            ))
        }
    };
    Ok(Compare {
        result: result as i32,
        target: target as i32,
        key,
        range_end: Vec::new(),
        target_union: Some(target_union),
    })
}

/// The ops a txn script line may hold: the `kv put|get|del` commands with
/// their request flags.
#[derive(Debug, clap::Parser)]
#[command(no_binary_name = true, disable_help_subcommand = true)]
struct TxnOpLine {
    #[command(subcommand)]
    op: TxnOp,
}

#[derive(Debug, clap::Subcommand)]
enum TxnOp {
    Put(PutOp),
    Get(GetOp),
    #[command(alias = "delete")]
    Del(DelOp),
}

/// Parses one op line: `put KEY VALUE`, `get KEY [RANGE_END]` or
/// `del KEY [RANGE_END]`, each with the flags of its `kv` command.
pub fn parse_op(line: &str) -> Result<RequestOp, String> {
    let words = split_words(line)?;
    let parsed = TxnOpLine::try_parse_from(words).map_err(|error| match error.kind() {
        clap::error::ErrorKind::DisplayHelp
        | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        | clap::error::ErrorKind::DisplayVersion => {
            "expected an op: put KEY VALUE, get KEY [RANGE_END] or del KEY [RANGE_END]".to_string()
        }
        _ => clap_error_line(&error),
    })?;
    let request = match parsed.op {
        TxnOp::Put(op) => request_op::Request::RequestPut(op.to_request()),
        TxnOp::Get(op) => request_op::Request::RequestRange(op.to_request()),
        TxnOp::Del(op) => request_op::Request::RequestDeleteRange(op.to_request()),
    };
    Ok(RequestOp { request: Some(request) })
}

/// The first paragraph of a clap error on one line, without the `error: `
/// prefix (the usage and tips after it describe `zongheng`, not the script).
fn clap_error_line(error: &clap::Error) -> String {
    let text = error.to_string();
    let paragraph: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect();
    let joined = paragraph.join(" ");
    joined.strip_prefix("error: ").unwrap_or(&joined).to_string()
}

/// Splits an op line into words as etcdctl does: "double quoted" (with Go
/// escapes), 'single quoted' (as is), or bare words up to whitespace.
pub fn split_words(line: &str) -> Result<Vec<OsString>, String> {
    let mut words = Vec::new();
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        let (word, after) = if rest.starts_with('"') {
            parse_quoted(rest)?
        } else if let Some(quoted) = rest.strip_prefix('\'') {
            let Some(end) = quoted.find('\'') else {
                return Err("unterminated '...' string".to_string());
            };
            (quoted.as_bytes()[..end].to_vec(), &quoted[end + 1..])
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            (rest.as_bytes()[..end].to_vec(), &rest[end..])
        };
        words.push(os_string(word)?);
        rest = after.trim_start();
    }
    Ok(words)
}

#[cfg(unix)]
fn os_string(bytes: Vec<u8>) -> Result<OsString, String> {
    use std::os::unix::ffi::OsStringExt;
    Ok(OsString::from_vec(bytes))
}

#[cfg(not(unix))]
fn os_string(bytes: Vec<u8>) -> Result<OsString, String> {
    String::from_utf8(bytes)
        .map(OsString::from)
        .map_err(|_| "non-UTF-8 bytes in an op are only supported on Unix".to_string())
}

/// Parses a Go-syntax quoted string at the start of `text` (as etcdctl's
/// `%q` does): "double quoted" with escapes (\n, \t, \\, \", \xNN, \NNN,
/// \uNNNN, \UNNNNNNNN, ...) or `back quoted` as is. Returns the bytes and
/// the text after the closing quote.
pub fn parse_quoted(text: &str) -> Result<(Vec<u8>, &str), String> {
    if let Some(raw) = text.strip_prefix('`') {
        let Some(end) = raw.find('`') else {
            return Err("unterminated `...` string".to_string());
        };
        return Ok((raw.as_bytes()[..end].to_vec(), &raw[end + 1..]));
    }
    let Some(body) = text.strip_prefix('"') else {
        return Err("expected a string in double quotes".to_string());
    };
    let mut bytes = Vec::new();
    let mut chars = body.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Ok((bytes, &body[index + 1..])),
            '\\' => {
                let Some((_, escape)) = chars.next() else {
                    break;
                };
                let simple = match escape {
                    'a' => Some(0x07),
                    'b' => Some(0x08),
                    'f' => Some(0x0c),
                    'n' => Some(b'\n'),
                    'r' => Some(b'\r'),
                    't' => Some(b'\t'),
                    'v' => Some(0x0b),
                    '\\' => Some(b'\\'),
                    '\'' => Some(b'\''),
                    '"' => Some(b'"'),
                    _ => None,
                };
                if let Some(byte) = simple {
                    bytes.push(byte);
                    continue;
                }
                let (digits, radix) = match escape {
                    'x' => (2, 16),
                    'u' => (4, 16),
                    'U' => (8, 16),
                    '0'..='7' => (2, 8),
                    other => return Err(format!("unknown escape \\{other} in a quoted string")),
                };
                let mut number = if radix == 8 { escape.to_digit(8).unwrap_or(0) } else { 0 };
                for _ in 0..digits {
                    let digit = chars.next().and_then(|(_, c)| c.to_digit(radix));
                    let Some(digit) = digit else {
                        return Err(format!("bad \\{escape} escape in a quoted string"));
                    };
                    number = number * radix + digit;
                }
                match escape {
                    'x' => bytes.push(number as u8),
                    '0'..='7' => {
                        let byte = u8::try_from(number)
                            .map_err(|_| "octal escape above \\377 in a quoted string".to_string())?;
                        bytes.push(byte);
                    }
                    _ => {
                        let c = char::from_u32(number)
                            .ok_or_else(|| format!("\\{escape} escape is not a Unicode character"))?;
                        let mut buffer = [0u8; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                    }
                }
            }
            c => {
                let mut buffer = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
            }
        }
    }
    Err("unterminated \"...\" string".to_string())
}

// ---------------------------------------------------------------------------
// Output.

/// Which parts of each key-value pair `kv get` prints as text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GetView {
    pub keys_only: bool,
    pub count_only: bool,
    pub print_value_only: bool,
}

#[derive(Debug, Serialize)]
struct HeaderJson {
    cluster_id: u64,
    member_id: u64,
    revision: i64,
    raft_term: u64,
}

fn header_json(header: &Option<ResponseHeader>) -> Option<HeaderJson> {
    header.as_ref().map(|header| HeaderJson {
        cluster_id: header.cluster_id,
        member_id: header.member_id,
        revision: header.revision,
        raft_term: header.raft_term,
    })
}

#[derive(Debug, Serialize)]
struct KeyValueJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_b64: Option<String>,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
}

fn key_value_json(kv: &KeyValue) -> KeyValueJson {
    let (key, key_b64) = json_bytes(&kv.key);
    let (value, value_b64) = json_bytes(&kv.value);
    KeyValueJson {
        key,
        key_b64,
        value,
        value_b64,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

#[derive(Debug, Serialize)]
struct RangeJson {
    header: Option<HeaderJson>,
    kvs: Vec<KeyValueJson>,
    count: i64,
    more: bool,
}

#[derive(Debug, Serialize)]
struct PutJson {
    header: Option<HeaderJson>,
    prev_kv: Option<KeyValueJson>,
}

#[derive(Debug, Serialize)]
struct DeleteJson {
    header: Option<HeaderJson>,
    deleted: i64,
    prev_kvs: Vec<KeyValueJson>,
}

#[derive(Debug, Serialize)]
struct TxnJson {
    header: Option<HeaderJson>,
    succeeded: bool,
    responses: Vec<ResponseJson>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum ResponseJson {
    Range(RangeJson),
    Put(PutJson),
    DeleteRange(DeleteJson),
    Txn(TxnJson),
    /// A response op the server left empty.
    Empty {},
}

#[derive(Debug, Serialize)]
struct CompactJson {
    header: Option<HeaderJson>,
    compacted_revision: i64,
}

fn range_json(response: &RangeResponse) -> RangeJson {
    RangeJson {
        header: header_json(&response.header),
        kvs: response.kvs.iter().map(key_value_json).collect(),
        count: response.count,
        more: response.more,
    }
}

fn put_json(response: &PutResponse) -> PutJson {
    PutJson {
        header: header_json(&response.header),
        prev_kv: response.prev_kv.as_ref().map(key_value_json),
    }
}

fn delete_json(response: &DeleteRangeResponse) -> DeleteJson {
    DeleteJson {
        header: header_json(&response.header),
        deleted: response.deleted,
        prev_kvs: response.prev_kvs.iter().map(key_value_json).collect(),
    }
}

fn txn_json(response: &TxnResponse) -> TxnJson {
    TxnJson {
        header: header_json(&response.header),
        succeeded: response.succeeded,
        responses: response
            .responses
            .iter()
            .map(|op| match &op.response {
                Some(response_op::Response::ResponseRange(range)) => ResponseJson::Range(range_json(range)),
                Some(response_op::Response::ResponsePut(put)) => ResponseJson::Put(put_json(put)),
                Some(response_op::Response::ResponseDeleteRange(delete)) => {
                    ResponseJson::DeleteRange(delete_json(delete))
                }
                Some(response_op::Response::ResponseTxn(txn)) => ResponseJson::Txn(txn_json(txn)),
                None => ResponseJson::Empty {},
            })
            .collect(),
    }
}

/// A key-value pair as etcdctl's simple format prints it: the key on one
/// line, the value on the next.
fn push_key_value(text: &mut String, kv: &KeyValue) {
    text.push_str(&display_bytes(&kv.key));
    text.push('\n');
    text.push_str(&display_bytes(&kv.value));
    text.push('\n');
}

/// `kv get` output. Text: each key, then its value (only keys with
/// `--keys-only`, only values with `--print-value-only`, only the count
/// with `--count-only`).
pub fn format_range(response: &RangeResponse, view: GetView, json: bool) -> String {
    if json {
        return json_line(&range_json(response));
    }
    if view.count_only {
        return format!("{}\n", response.count);
    }
    let mut text = String::new();
    for kv in &response.kvs {
        if !view.print_value_only {
            text.push_str(&display_bytes(&kv.key));
            text.push('\n');
        }
        if !view.keys_only {
            text.push_str(&display_bytes(&kv.value));
            text.push('\n');
        }
    }
    text
}

/// `kv put` output. Text: `OK`, then the previous pair if there was one.
pub fn format_put(response: &PutResponse, json: bool) -> String {
    if json {
        return json_line(&put_json(response));
    }
    let mut text = "OK\n".to_string();
    if let Some(kv) = &response.prev_kv {
        push_key_value(&mut text, kv);
    }
    text
}

/// `kv del` output. Text: the number deleted, then the deleted pairs if
/// asked for with `--prev-kv`.
pub fn format_delete(response: &DeleteRangeResponse, json: bool) -> String {
    if json {
        return json_line(&delete_json(response));
    }
    let mut text = format!("{}\n", response.deleted);
    for kv in &response.prev_kvs {
        push_key_value(&mut text, kv);
    }
    text
}

/// `kv txn` output. Text, as etcdctl: `SUCCESS` or `FAILURE`, then each
/// op's response after a blank line.
pub fn format_txn(response: &TxnResponse, json: bool) -> String {
    if json {
        return json_line(&txn_json(response));
    }
    let mut text = String::new();
    push_txn_text(&mut text, response);
    text
}

fn push_txn_text(text: &mut String, response: &TxnResponse) {
    text.push_str(if response.succeeded { "SUCCESS\n" } else { "FAILURE\n" });
    for op in &response.responses {
        text.push('\n');
        match &op.response {
            Some(response_op::Response::ResponseRange(range)) => {
                for kv in &range.kvs {
                    push_key_value(text, kv);
                }
            }
            Some(response_op::Response::ResponsePut(put)) => text.push_str(&format_put(put, false)),
            Some(response_op::Response::ResponseDeleteRange(delete)) => text.push_str(&format_delete(delete, false)),
            Some(response_op::Response::ResponseTxn(nested)) => push_txn_text(text, nested),
            None => text.push_str("(empty response)\n"),
        }
    }
}

/// `kv compact` output. Text, as etcdctl: `compacted revision N`.
pub fn format_compact(response: &CompactionResponse, revision: i64, json: bool) -> String {
    if json {
        return json_line(&CompactJson {
            header: header_json(&response.header),
            compacted_revision: revision,
        });
    }
    format!("compacted revision {revision}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use zongheng_proto::etcdserverpb::ResponseOp;

    fn txn_ops(script: &str) -> TxnRequest {
        match parse_txn_script(script) {
            Ok(txn) => txn,
            Err(error) => panic!("{script:?} did not parse: {error}"),
        }
    }

    fn put_of(op: &RequestOp) -> &PutRequest {
        match &op.request {
            Some(request_op::Request::RequestPut(put)) => put,
            other => panic!("expected a put, got {other:?}"),
        }
    }

    fn range_of(op: &RequestOp) -> &RangeRequest {
        match &op.request {
            Some(request_op::Request::RequestRange(range)) => range,
            other => panic!("expected a get, got {other:?}"),
        }
    }

    fn delete_of(op: &RequestOp) -> &DeleteRangeRequest {
        match &op.request {
            Some(request_op::Request::RequestDeleteRange(delete)) => delete,
            other => panic!("expected a del, got {other:?}"),
        }
    }

    #[test]
    fn prefix_range_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_range_end(b"foo"), b"fop".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"a\xfe\xff\xff"), b"a\xff".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }

    #[test]
    fn key_ranges_follow_etcds_client() {
        assert_eq!(key_range(b"k".to_vec(), None, false, false), (b"k".to_vec(), vec![]));
        assert_eq!(
            key_range(b"a".to_vec(), Some(b"c".to_vec()), false, false),
            (b"a".to_vec(), b"c".to_vec())
        );
        assert_eq!(
            key_range(b"ab".to_vec(), None, true, false),
            (b"ab".to_vec(), b"ac".to_vec())
        );
        assert_eq!(key_range(b"ab".to_vec(), None, false, true), (b"ab".to_vec(), vec![0]));
        assert_eq!(key_range(vec![], None, true, false), (vec![0], vec![0]));
        assert_eq!(key_range(vec![], None, false, true), (vec![0], vec![0]));
    }

    #[test]
    fn a_full_script_parses_into_compares_and_both_branches() {
        let script = r#"
# compares:
value("k") = "v"
mod("k") > "5"
version("k") < "2"
create("k") = "3"
lease("k") = "0"
ver("k") != 1

# success ops:
put k "new value"
get k --prefix
del a c

# failure ops:
get k
put 'quoted key' v --lease 1f
"#;
        // The leading newline makes the compares section empty, so drop it.
        let txn = txn_ops(script.trim_start_matches('\n'));
        assert_eq!(txn.compare.len(), 6);
        let first = &txn.compare[0];
        assert_eq!(first.key, b"k");
        assert_eq!(first.result, CompareResult::Equal as i32);
        assert_eq!(first.target, CompareTarget::Value as i32);
        assert_eq!(first.target_union, Some(TargetUnion::Value(b"v".to_vec())));
        assert_eq!(txn.compare[1].result, CompareResult::Greater as i32);
        assert_eq!(txn.compare[1].target_union, Some(TargetUnion::ModRevision(5)));
        assert_eq!(txn.compare[2].result, CompareResult::Less as i32);
        assert_eq!(txn.compare[2].target_union, Some(TargetUnion::Version(2)));
        assert_eq!(txn.compare[3].target_union, Some(TargetUnion::CreateRevision(3)));
        assert_eq!(txn.compare[4].target, CompareTarget::Lease as i32);
        assert_eq!(txn.compare[4].target_union, Some(TargetUnion::Lease(0)));
        assert_eq!(txn.compare[5].result, CompareResult::NotEqual as i32);
        assert_eq!(txn.compare[5].target_union, Some(TargetUnion::Version(1)));

        assert_eq!(txn.success.len(), 3);
        assert_eq!(put_of(&txn.success[0]).value, b"new value");
        let get = range_of(&txn.success[1]);
        assert_eq!((get.key.as_slice(), get.range_end.as_slice()), (&b"k"[..], &b"l"[..]));
        let del = delete_of(&txn.success[2]);
        assert_eq!((del.key.as_slice(), del.range_end.as_slice()), (&b"a"[..], &b"c"[..]));

        assert_eq!(txn.failure.len(), 2);
        assert_eq!(range_of(&txn.failure[0]).range_end, b"");
        let put = put_of(&txn.failure[1]);
        assert_eq!((put.key.as_slice(), put.lease), (&b"quoted key"[..], 0x1f));
    }

    #[test]
    fn scripts_may_leave_sections_empty() {
        let txn = txn_ops("\nput k v\n");
        assert!(txn.compare.is_empty());
        assert_eq!(txn.success.len(), 1);
        assert!(txn.failure.is_empty());

        let txn = txn_ops("mod(\"k\") = \"0\"\n\n\nput k created\n\n");
        assert_eq!(txn.compare.len(), 1);
        assert!(txn.success.is_empty());
        assert_eq!(txn.failure.len(), 1);

        // Windows line endings and surrounding spaces are fine.
        let txn = txn_ops("  value(\"k\") = \"v\"  \r\n\r\n  put k w \r\n");
        assert_eq!(txn.compare.len(), 1);
        assert_eq!(txn.success.len(), 1);
    }

    #[test]
    fn quoted_strings_take_go_escapes() {
        let txn = txn_ops("value(\"a\\x00\\xffb\") = `raw\\n`\n\nput \"k\\tk\" \"\\u00e9\\101\"\n");
        assert_eq!(txn.compare[0].key, b"a\x00\xffb");
        assert_eq!(
            txn.compare[0].target_union,
            Some(TargetUnion::Value(b"raw\\n".to_vec()))
        );
        let put = put_of(&txn.success[0]);
        assert_eq!(put.key, b"k\tk");
        assert_eq!(put.value, "éA".as_bytes());
    }

    #[test]
    fn malformed_scripts_name_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("valu(\"k\") = \"v\"\n", 1, "unknown compare target \"valu\""),
            ("value \"k\" = \"v\"\n", 1, "expected a compare like"),
            ("value(k) = \"v\"\n", 1, "the key: expected a string in double quotes"),
            ("value(\"k\" = \"v\"\n", 1, "expected ')' after the key"),
            ("value(\"k\") == \"v\"\n", 1, "unknown operator \"==\""),
            ("value(\"k\") \"v\"\n", 1, "expected an operator"),
            ("mod(\"k\") > \"five\"\n", 1, "must be a decimal integer, got \"five\""),
            ("lease(\"k\") = \"zz\"\n", 1, "hexadecimal lease ID"),
            ("value(\"k\") = \"v\" extra\n", 1, "unexpected text \"extra\""),
            ("value(\"k) = v\n", 1, "the key: unterminated \"...\" string"),
            ("value(\"k\") =\n", 1, "expected a value after the operator"),
            ("value(\"k\") = \"\\q\"\n", 1, "unknown escape \\q"),
            ("value(\"k\") = \"v\"\n\nput k\n", 3, "VALUE"),
            ("value(\"k\") = \"v\"\n\nset k v\n", 3, "unrecognized subcommand 'set'"),
            ("\nget k --prefix --from-key\n", 2, "cannot be used with"),
            ("\nget a b --prefix\n", 2, "cannot be used with"),
            ("\nput k v --lease nothex\n", 2, "not a lease ID"),
            ("\nput k 'v\n", 2, "unterminated '...' string"),
            (
                "\nget k --print-value-only\n",
                2,
                "unexpected argument '--print-value-only'",
            ),
            ("\nput k v --help\n", 2, "expected an op"),
            (
                "\nput k v\n\nget k\n\nget again\n",
                6,
                "unexpected line after the failure ops",
            ),
        ];
        for (script, line, expected) in cases {
            let error = match parse_txn_script(script) {
                Ok(txn) => panic!("{script:?} parsed into {txn:?}"),
                Err(error) => error,
            };
            assert_eq!(error.line, Some(*line), "{script:?}: {error}");
            let text = error.to_string();
            assert!(
                text.contains(expected),
                "{script:?} gave {text:?}, expected {expected:?}"
            );
            assert!(text.starts_with(&format!("txn script line {line} `")), "{text}");
            assert!(text.ends_with("See `zongheng kv txn --help` for the grammar"), "{text}");
        }
    }

    #[test]
    fn an_empty_script_is_an_error() {
        for script in ["", "\n\n", "# only a comment\n"] {
            let error = parse_txn_script(script).unwrap_err();
            assert_eq!(error.line, None);
            assert!(error.to_string().contains("the script is empty"), "{error}");
        }
    }

    #[test]
    fn lease_ids_are_hexadecimal() {
        assert_eq!(parse_lease_id("694d77aa9e38260f"), Ok(0x694d77aa9e38260f));
        assert_eq!(parse_lease_id("0"), Ok(0));
        assert!(parse_lease_id("ffffffffffffffff")
            .unwrap_err()
            .contains("larger than any lease ID"));
        assert!(parse_lease_id("12g").unwrap_err().contains("hexadecimal"));
    }

    fn kv(key: &[u8], value: &[u8], revision: i64) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: revision,
            mod_revision: revision + 1,
            version: 2,
            value: value.to_vec(),
            lease: 0,
        }
    }

    fn header() -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: 14841639068965178418,
            member_id: 10276657743932975437,
            revision: 9,
            raft_term: 2,
        })
    }

    fn sample_range() -> RangeResponse {
        RangeResponse {
            header: header(),
            kvs: vec![kv(b"foo", b"bar", 3), kv(b"\xffbin", b"v\xfe", 5)],
            more: true,
            count: 3,
        }
    }

    #[test]
    fn get_prints_keys_then_values() {
        let response = sample_range();
        assert_eq!(
            format_range(&response, GetView::default(), false),
            "foo\nbar\n\\xffbin\nv\\xfe\n"
        );
        let keys_only = GetView {
            keys_only: true,
            ..GetView::default()
        };
        assert_eq!(format_range(&response, keys_only, false), "foo\n\\xffbin\n");
        let values_only = GetView {
            print_value_only: true,
            ..GetView::default()
        };
        assert_eq!(format_range(&response, values_only, false), "bar\nv\\xfe\n");
        let count_only = GetView {
            count_only: true,
            ..GetView::default()
        };
        assert_eq!(format_range(&response, count_only, false), "3\n");
        assert_eq!(format_range(&RangeResponse::default(), GetView::default(), false), "");
    }

    #[test]
    fn get_json_has_header_kvs_count_more_and_base64_for_binary() {
        let text = format_range(&sample_range(), GetView::default(), true);
        assert_eq!(
            text,
            concat!(
                r#"{"header":{"cluster_id":14841639068965178418,"member_id":10276657743932975437,"revision":9,"raft_term":2},"#,
                r#""kvs":[{"key":"foo","value":"bar","create_revision":3,"mod_revision":4,"version":2,"lease":0},"#,
                r#"{"key_b64":"/2Jpbg==","value_b64":"dv4=","create_revision":5,"mod_revision":6,"version":2,"lease":0}],"#,
                r#""count":3,"more":true}"#,
                "\n"
            )
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["kvs"][0]["key"], "foo");
        // The view flags only shape the text output.
        let count_only = GetView {
            count_only: true,
            ..GetView::default()
        };
        assert_eq!(format_range(&sample_range(), count_only, true), text);
    }

    #[test]
    fn put_del_and_compact_print_like_etcdctl() {
        let put = PutResponse {
            header: header(),
            prev_kv: None,
        };
        assert_eq!(format_put(&put, false), "OK\n");
        let put = PutResponse {
            header: header(),
            prev_kv: Some(kv(b"k", b"old", 1)),
        };
        assert_eq!(format_put(&put, false), "OK\nk\nold\n");
        assert!(format_put(&put, true).contains(r#""prev_kv":{"key":"k","value":"old""#));
        assert!(format_put(&PutResponse::default(), true).contains(r#""header":null,"prev_kv":null"#));

        let delete = DeleteRangeResponse {
            header: header(),
            deleted: 2,
            prev_kvs: vec![kv(b"a", b"1", 1)],
        };
        assert_eq!(format_delete(&delete, false), "2\na\n1\n");
        assert!(format_delete(&delete, true).contains(r#""deleted":2,"prev_kvs":[{"key":"a""#));

        let compact = CompactionResponse { header: header() };
        assert_eq!(format_compact(&compact, 7, false), "compacted revision 7\n");
        assert!(format_compact(&compact, 7, true).ends_with("\"compacted_revision\":7}\n"));
    }

    #[test]
    fn txn_prints_the_outcome_then_each_response() {
        let response = TxnResponse {
            header: header(),
            succeeded: false,
            responses: vec![
                ResponseOp {
                    response: Some(response_op::Response::ResponsePut(PutResponse {
                        header: header(),
                        prev_kv: None,
                    })),
                },
                ResponseOp {
                    response: Some(response_op::Response::ResponseRange(RangeResponse {
                        header: header(),
                        kvs: vec![kv(b"k", b"v", 1)],
                        more: false,
                        count: 1,
                    })),
                },
                ResponseOp {
                    response: Some(response_op::Response::ResponseDeleteRange(DeleteRangeResponse {
                        header: header(),
                        deleted: 0,
                        prev_kvs: vec![],
                    })),
                },
            ],
        };
        assert_eq!(format_txn(&response, false), "FAILURE\n\nOK\n\nk\nv\n\n0\n");
        let json = format_txn(&response, true);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["succeeded"], false);
        assert_eq!(parsed["responses"][1]["range"]["kvs"][0]["value"], "v");
        assert_eq!(parsed["responses"][2]["delete_range"]["deleted"], 0);
    }

    /// `zongheng kv ARGS...` through the real command line.
    fn parse(words: &[&str]) -> Result<KvCommand, String> {
        let line = ["zongheng", "kv"].into_iter().chain(words.iter().copied());
        match crate::cli::Cli::try_parse_from(line) {
            Ok(crate::cli::Cli {
                command: crate::cli::Command::Kv(args),
                ..
            }) => Ok(args.command),
            Ok(other) => panic!("{words:?} parsed as {other:?}"),
            Err(error) => Err(error.to_string()),
        }
    }

    fn parse_ok(words: &[&str]) -> KvCommand {
        parse(words).unwrap_or_else(|error| panic!("{words:?} failed: {error}"))
    }

    fn parse_error(words: &[&str]) -> String {
        match parse(words) {
            Ok(command) => panic!("{words:?} should fail, parsed as {command:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn get_flags_become_a_range_request() {
        let words = [
            "get",
            "k",
            "--prefix",
            "--rev",
            "4",
            "--limit",
            "10",
            "--sort-by",
            "MODIFY",
            "--serializable",
        ];
        let KvCommand::Get(get) = parse_ok(&words) else {
            panic!("not a get")
        };
        let request = get.op.to_request();
        assert_eq!(
            (request.key.as_slice(), request.range_end.as_slice()),
            (&b"k"[..], &b"l"[..])
        );
        assert_eq!((request.revision, request.limit), (4, 10));
        assert_eq!(request.sort_target, SortTarget::Mod as i32);
        assert_eq!(request.sort_order, SortOrder::Ascend as i32);
        assert!(request.serializable);

        let KvCommand::Get(get) = parse_ok(&["get", "k", "--order", "descend", "--keys-only"]) else {
            panic!("not a get")
        };
        let request = get.op.to_request();
        assert_eq!(
            (request.sort_target, request.sort_order),
            (SortTarget::Key as i32, SortOrder::Descend as i32)
        );
        assert!(request.keys_only);
        assert_eq!(
            get.view(),
            GetView {
                keys_only: true,
                ..GetView::default()
            }
        );

        let KvCommand::Get(get) = parse_ok(&["get", "a", "c", "--print-value-only"]) else {
            panic!("not a get")
        };
        assert_eq!(get.op.to_request().range_end, b"c");
        assert_eq!(get.op.to_request().sort_order, SortOrder::None as i32);
        assert!(get.view().print_value_only);

        let KvCommand::Get(get) = parse_ok(&["get", "", "--from-key", "--count-only"]) else {
            panic!("not a get")
        };
        let request = get.op.to_request();
        assert_eq!(
            (request.key, request.range_end, request.count_only),
            (vec![0], vec![0], true)
        );

        for (words, expected) in [
            (&["get", "k", "--prefix", "--from-key"][..], "cannot be used with"),
            (&["get", "a", "b", "--prefix"][..], "cannot be used with"),
            (&["get", "k", "--keys-only", "--count-only"][..], "cannot be used with"),
            (
                &["get", "k", "--print-value-only", "--keys-only"][..],
                "cannot be used with",
            ),
            (&["get", "k", "--rev", "-1"][..], "-1"),
            (&["get", "k", "--sort-by", "size"][..], "possible values"),
        ] {
            let error = parse_error(words);
            assert!(error.contains(expected), "{words:?} gave {error}");
        }
    }

    #[test]
    fn put_needs_a_value_unless_it_keeps_the_old_one() {
        let KvCommand::Put(put) = parse_ok(&["put", "k", "v", "--prev-kv", "--lease", "694d77aa9e38260f"]) else {
            panic!("not a put")
        };
        let request = put.to_request();
        assert_eq!(
            (request.key.as_slice(), request.value.as_slice()),
            (&b"k"[..], &b"v"[..])
        );
        assert!(request.prev_kv);
        assert_eq!(request.lease, 0x694d77aa9e38260f);

        let KvCommand::Put(put) = parse_ok(&["put", "k", "--ignore-value", "--lease", "1"]) else {
            panic!("not a put")
        };
        assert!(put.to_request().ignore_value);

        // A value that looks like a flag goes after `--`, as with etcdctl.
        let KvCommand::Put(put) = parse_ok(&["put", "k", "--", "-1"]) else {
            panic!("not a put")
        };
        assert_eq!(put.to_request().value, b"-1");

        assert!(parse_error(&["put", "k"]).contains("<VALUE>"));
        assert!(parse_error(&["put", "k", "v", "--ignore-value"]).contains("cannot be used with"));
        assert!(parse_error(&["put", "k", "v", "--lease", "1", "--ignore-lease"]).contains("cannot be used with"));
        assert!(parse_error(&["put", "k", "v", "--lease", "xyz"]).contains("hexadecimal"));
    }

    #[test]
    fn del_txn_and_compact_parse() {
        let KvCommand::Del(del) = parse_ok(&["delete", "k", "--prefix", "--prev-kv"]) else {
            panic!("not a del")
        };
        let request = del.to_request();
        assert_eq!((request.range_end, request.prev_kv), (b"l".to_vec(), true));
        let KvCommand::Del(del) = parse_ok(&["del", "a", "c"]) else {
            panic!("not a del")
        };
        assert_eq!(del.to_request().range_end, b"c");

        let KvCommand::Txn(txn) = parse_ok(&["txn", "--file", "script.txt"]) else {
            panic!("not a txn")
        };
        assert_eq!(txn.file.as_deref(), Some(Path::new("script.txt")));
        let KvCommand::Txn(txn) = parse_ok(&["txn"]) else {
            panic!("not a txn")
        };
        assert_eq!(txn.file, None);

        let KvCommand::Compact(compact) = parse_ok(&["compact", "42", "--physical"]) else {
            panic!("not a compact")
        };
        assert_eq!((compact.revision, compact.physical), (42, true));
        assert!(parse_error(&["compact", "0"]).contains("invalid value '0'"));
    }
}
