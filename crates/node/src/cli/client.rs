//! The connection shared by `zongheng kv`, `zongheng member` and
//! `zongheng status`: endpoints, timeouts, failover, errors and the small
//! output helpers every command prints with.
//!
//! ## Why it is built this way
//! These commands are for people who do not have etcdctl, so the flags are
//! etcdctl's (`--endpoints`, `--dial-timeout`, `--command-timeout`) and the
//! errors are the server's own etcd messages, shown as they are, with the
//! gRPC code and zongheng's stable `x-zongheng-error` code next to them.
//!
//! [`Client::connect`] tries the endpoints in the order given and keeps the
//! first one that accepts a connection within `--dial-timeout`. Every call
//! then runs under `--command-timeout` (sent to the server as `grpc-timeout`
//! too, so it can give up at the same time).
//!
//! ## Failover, and why writes are never retried
//! A call classed [`Retry::Idempotent`] (range, a read-only txn, member
//! list, status) that fails with `Unavailable`, or gets no answer in time,
//! moves on to the next endpoint. A write ([`Retry::AtMostOnce`]: put, delete,
//! a txn that writes, compact, member changes) is not retried: once the
//! request left this process, an `Unavailable` or a timeout does not say
//! whether the cluster applied it (the leader may have committed it before
//! the connection broke). Retrying could apply it twice; reporting it as
//! failed could be a lie. So the error says the outcome is unknown and how
//! to check. This is the same rule as the client oracle in the style guide:
//! a timed-out write is *unknown*, never *failed*.
//!
//! Failing over before any request was sent is safe for every call: the
//! dial in `connect` tries every endpoint, and a call whose connection
//! could not be re-established (tonic reports a connect error, so nothing
//! left this process) moves on to the next endpoint even if it is a write.
//!
//! ## Not yet
//! No TLS (`https://` endpoints are refused with a clear error), no
//! authentication tokens, no endpoint discovery from the member list: the
//! client talks to exactly the endpoints it is given.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use zongheng_proto::etcdserverpb::cluster_client::ClusterClient;
use zongheng_proto::etcdserverpb::kv_client::KvClient;
use zongheng_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use zongheng_proto::etcdserverpb::{
    request_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, MemberAddRequest,
    MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest, MemberPromoteResponse,
    MemberRemoveRequest, MemberRemoveResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, StatusRequest,
    StatusResponse, TxnRequest, TxnResponse,
};

/// Where the client looks when `--endpoints` is not given: a node started
/// with default flags on this machine.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:2379";

/// At most this many endpoints in `--endpoints`. A cluster has a handful of
/// members; a longer list is almost certainly a mistake (a pasted file).
pub const ENDPOINTS_MAX: usize = 64;

/// The longest `--dial-timeout` or `--command-timeout` accepted: one hour.
/// A command line call that waits longer than that is better off failing.
pub const TIMEOUT_MS_MAX: u64 = 3_600_000;

/// The largest response the client decodes: 256 MiB. tonic's default is
/// 4 MiB, which a `get --prefix` over a modest keyspace exceeds; etcd's own
/// client has no limit. Past this, page with `--limit` instead.
pub const RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// The metadata key in which a zongheng server puts its stable error code
/// (`ZH_...`), next to etcd's message.
pub const ERROR_CODE_METADATA: &str = "x-zongheng-error";

/// Connection options flattened into every client command. They are global,
/// so they may come before or after the subcommand
/// (`zongheng kv --endpoints a:2379 get k` or `zongheng kv get k --endpoints a:2379`).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOptions {
    /// Comma-separated client endpoints, `host:port` or `http://host:port`,
    /// tried in order.
    #[arg(
        long,
        global = true,
        env = "ZONGHENG_ENDPOINTS",
        default_value = DEFAULT_ENDPOINTS,
        value_name = "HOST:PORT,..."
    )]
    pub endpoints: String,

    /// How long to wait for each endpoint to accept a connection, in
    /// milliseconds (`2s` and `500ms` are accepted too).
    #[arg(
        long = "dial-timeout",
        global = true,
        default_value = "2000",
        value_name = "MS",
        value_parser = parse_timeout_ms
    )]
    pub dial_timeout_ms: u64,

    /// How long to wait for each call's answer, in milliseconds (`5s` and
    /// `500ms` are accepted too).
    #[arg(
        long = "command-timeout",
        global = true,
        default_value = "5000",
        value_name = "MS",
        value_parser = parse_timeout_ms
    )]
    pub command_timeout_ms: u64,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ClientOptions {
    /// The endpoints, parsed and checked.
    pub fn parsed_endpoints(&self) -> Result<Vec<ParsedEndpoint>, ClientError> {
        parse_endpoints(&self.endpoints)
    }

    pub fn dial_timeout(&self) -> Duration {
        Duration::from_millis(self.dial_timeout_ms)
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }
}

/// Parses a timeout flag: plain milliseconds (`2000`), or a number with a
/// unit as etcdctl users type it (`500ms`, `2s`, `1m`).
pub fn parse_timeout_ms(input: &str) -> Result<u64, String> {
    let text = input.trim();
    let (digits, scale_ms) = if let Some(digits) = text.strip_suffix("ms") {
        (digits, 1)
    } else if let Some(digits) = text.strip_suffix('s') {
        (digits, 1_000)
    } else if let Some(digits) = text.strip_suffix('m') {
        (digits, 60_000)
    } else {
        (text, 1)
    };
    let count: u64 = digits.trim().parse().map_err(|_| {
        format!("{input:?} is not a duration; give milliseconds (e.g. 2000) or a number with ms, s or m (e.g. 2s)")
    })?;
    let timeout_ms = count.saturating_mul(scale_ms);
    if timeout_ms == 0 {
        return Err("a timeout of 0 would fail every call; give at least 1 ms".to_string());
    }
    if timeout_ms > TIMEOUT_MS_MAX {
        return Err(format!(
            "{input:?} is longer than the limit of {TIMEOUT_MS_MAX} ms (one hour)"
        ));
    }
    Ok(timeout_ms)
}

/// One endpoint of `--endpoints`: as the user wrote it (for output) and as
/// the URL the client dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEndpoint {
    /// The endpoint as given, trimmed (`127.0.0.1:2379`).
    pub display: String,
    /// The URL to dial (`http://127.0.0.1:2379`).
    pub url: String,
}

/// Parses a comma-separated endpoint list. Empty items (a trailing comma)
/// are skipped, duplicates are dropped (the first one stays), and the order
/// is kept: it is the order in which endpoints are tried.
pub fn parse_endpoints(input: &str) -> Result<Vec<ParsedEndpoint>, ClientError> {
    let mut endpoints: Vec<ParsedEndpoint> = Vec::new();
    for item in input.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let endpoint = parse_endpoint(item)?;
        if !endpoints.iter().any(|known| known.url == endpoint.url) {
            endpoints.push(endpoint);
        }
    }
    if endpoints.is_empty() {
        return Err(invalid_endpoint(input, "no endpoint given"));
    }
    if endpoints.len() > ENDPOINTS_MAX {
        return Err(invalid_endpoint(
            input,
            &format!(
                "{} endpoints is more than the limit of {ENDPOINTS_MAX}",
                endpoints.len()
            ),
        ));
    }
    Ok(endpoints)
}

fn parse_endpoint(item: &str) -> Result<ParsedEndpoint, ClientError> {
    let address = match item.split_once("://") {
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "http" => rest,
            "https" => return Err(invalid_endpoint(item, "TLS is not supported yet; use http://")),
            _ => {
                return Err(invalid_endpoint(
                    item,
                    &format!("unsupported scheme {scheme:?}; use http:// or no scheme"),
                ))
            }
        },
        None => item,
    };
    let address = address.strip_suffix('/').unwrap_or(address);
    if address.contains('/') {
        return Err(invalid_endpoint(item, "an endpoint has no path"));
    }
    let (host, port) = if let Some(bracketed) = address.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(invalid_endpoint(item, "missing ']' after an IPv6 address"));
        };
        let Some(port) = after.strip_prefix(':') else {
            return Err(invalid_endpoint(item, "missing port after the IPv6 address"));
        };
        (format!("[{host}]"), port)
    } else {
        let Some((host, port)) = address.rsplit_once(':') else {
            return Err(invalid_endpoint(item, "missing port"));
        };
        if host.contains(':') {
            return Err(invalid_endpoint(
                item,
                "put an IPv6 address in brackets, e.g. [::1]:2379",
            ));
        }
        (host.to_string(), port)
    };
    if host.is_empty() || host == "[]" {
        return Err(invalid_endpoint(item, "missing host"));
    }
    let port: u16 = match port.parse() {
        Ok(port) if port != 0 => port,
        _ => {
            return Err(invalid_endpoint(
                item,
                &format!("{port:?} is not a port number (1-65535)"),
            ))
        }
    };
    Ok(ParsedEndpoint {
        display: item.to_string(),
        url: format!("http://{host}:{port}"),
    })
}

fn invalid_endpoint(input: &str, reason: &str) -> ClientError {
    ClientError::InvalidEndpoint {
        input: input.to_string(),
        reason: reason.to_string(),
    }
}

/// Whether a call may be sent again to another endpoint after an
/// `Unavailable` or a timeout. See the module docs for why writes may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads and other calls that change nothing: safe to send again.
    Idempotent,
    /// Writes: sent at most once; an ambiguous failure is reported as such.
    AtMostOnce,
}

/// What a server said when it refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFailure {
    pub code: Code,
    /// etcd's message, as the server sent it.
    pub message: String,
    /// zongheng's stable error code (`ZH_...`), if the server is zongheng.
    pub zongheng_code: Option<String>,
}

impl ServerFailure {
    pub fn from_status(status: &tonic::Status) -> Self {
        let mut message = status.message().to_string();
        // Transport failures say "transport error" and keep the cause
        // (connection refused, reset, ...) in the source chain.
        if let Some(source) = std::error::Error::source(status) {
            let cause = error_chain(source);
            if !message.contains(&cause) {
                message = if message.is_empty() {
                    cause
                } else {
                    format!("{message}: {cause}")
                };
            }
        }
        let zongheng_code = status
            .metadata()
            .get(ERROR_CODE_METADATA)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        ServerFailure {
            code: status.code(),
            message,
            zongheng_code,
        }
    }

    /// What the user can do about it, for the errors where we know.
    pub fn hint(&self) -> Option<&'static str> {
        match self.zongheng_code.as_deref() {
            Some("ZH_MVCC_COMPACTED") => {
                return Some("that revision was compacted away; read at a newer --rev, or leave --rev out")
            }
            Some("ZH_MVCC_FUTURE_REVISION") => return Some(
                "that revision does not exist yet; the current one is the header revision of `zongheng kv get --json`",
            ),
            Some("ZH_MEMBER_NOT_FOUND") => return Some("check the ID with `zongheng member list`"),
            Some("ZH_LEASE_NOT_FOUND") => {
                return Some("the lease expired or never existed; grant a new one or drop --lease")
            }
            Some("ZH_KEY_TOO_LARGE") | Some("ZH_REQUEST_TOO_LARGE") => {
                return Some("make the request smaller, or raise the limit on every node")
            }
            Some("ZH_TXN_TOO_MANY_OPS") => return Some("split the txn, or raise --max-txn-ops on every node"),
            _ => {}
        }
        match self.code {
            Code::Unavailable => Some(
                "the cluster may have no leader (lost quorum) or the node is down; check `zongheng status` and retry",
            ),
            Code::DeadlineExceeded => {
                Some("the server gave up within --command-timeout; raise it or check `zongheng status`")
            }
            Code::Unimplemented => Some("this server does not support the call yet"),
            _ => None,
        }
    }
}

impl fmt::Display for ServerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (gRPC code {:?}", self.message, self.code)?;
        if let Some(code) = &self.zongheng_code {
            write!(f, ", {code}")?;
        }
        write!(f, ")")
    }
}

/// Everything that can go wrong talking to a cluster. Each message says what
/// happened and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid --endpoints value {input:?}: {reason}. Give comma-separated host:port or http://host:port, e.g. 127.0.0.1:2379,127.0.0.1:22379")]
    InvalidEndpoint { input: String, reason: String },

    #[error("could not connect to any endpoint within --dial-timeout {dial_timeout_ms} ms ({}). Check that a node is running and that --endpoints (or ZONGHENG_ENDPOINTS) names its client address", join_attempts(.attempts))]
    Unreachable {
        dial_timeout_ms: u64,
        attempts: Vec<(String, String)>,
    },

    #[error("{call} failed on {endpoint}: {failure}{}", hint_suffix(.failure.hint()))]
    Server {
        call: &'static str,
        endpoint: String,
        failure: ServerFailure,
    },

    #[error("{call} failed on every endpoint tried ({}). Check `zongheng status`: the cluster may have lost quorum", join_attempts(.attempts))]
    AllEndpointsFailed {
        call: &'static str,
        attempts: Vec<(String, String)>,
    },

    #[error("{call} was sent to {endpoint} but {reason}; it may or may not have been applied, so it was not retried. {}", check_hint(.call))]
    OutcomeUnknown {
        call: &'static str,
        endpoint: String,
        reason: String,
    },
}

impl ClientError {
    /// The server's refusal, if that is what this error is.
    pub fn server_failure(&self) -> Option<&ServerFailure> {
        match self {
            ClientError::Server { failure, .. } => Some(failure),
            _ => None,
        }
    }
}

fn join_attempts(attempts: &[(String, String)]) -> String {
    attempts
        .iter()
        .map(|(endpoint, reason)| format!("{endpoint}: {reason}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn hint_suffix(hint: Option<&'static str>) -> String {
    hint.map(|hint| format!(". Hint: {hint}")).unwrap_or_default()
}

fn check_hint(call: &str) -> &'static str {
    if call.starts_with("member") {
        "Run `zongheng member list` to see whether it happened before trying again"
    } else {
        "Read the keys with `zongheng kv get` to see whether it happened before trying again"
    }
}

/// Renders an error and its causes on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Opens a connection to one endpoint, giving up after `dial_timeout`.
pub async fn dial(url: &str, dial_timeout: Duration) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|error| error_chain(&error))?
        .connect_timeout(dial_timeout)
        .tcp_nodelay(true);
    match tokio::time::timeout(dial_timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(error)) => Err(error_chain(&error)),
        Err(_elapsed) => Err(format!("no answer within {} ms", dial_timeout.as_millis())),
    }
}

/// A connection to one endpoint of a cluster at a time, failing over to the
/// others for idempotent calls.
#[derive(Debug)]
pub struct Client {
    endpoints: Vec<ParsedEndpoint>,
    /// Index in `endpoints` of the one `channel` is connected to.
    current: usize,
    channel: Channel,
    /// Endpoints that did not answer the dial in `connect`; failover skips
    /// them rather than waiting for them again.
    unreachable: Vec<usize>,
    dial_timeout: Duration,
    command_timeout: Duration,
}

impl Client {
    /// Connects to the first endpoint of `--endpoints` that answers.
    pub async fn connect(options: &ClientOptions) -> Result<Client, ClientError> {
        Client::connect_to(
            options.parsed_endpoints()?,
            options.dial_timeout(),
            options.command_timeout(),
        )
        .await
    }

    /// Connects to the first of `endpoints` that answers within
    /// `dial_timeout`, trying them in order.
    pub async fn connect_to(
        endpoints: Vec<ParsedEndpoint>,
        dial_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Client, ClientError> {
        assert!(!endpoints.is_empty(), "parse_endpoints never returns an empty list");
        let mut attempts = Vec::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            match dial(&endpoint.url, dial_timeout).await {
                Ok(channel) => {
                    return Ok(Client {
                        current: index,
                        channel,
                        unreachable: (0..index).collect(),
                        endpoints,
                        dial_timeout,
                        command_timeout,
                    })
                }
                Err(reason) => attempts.push((endpoint.display.clone(), reason)),
            }
        }
        Err(ClientError::Unreachable {
            dial_timeout_ms: dial_timeout.as_millis() as u64,
            attempts,
        })
    }

    /// The endpoint calls currently go to, as the user wrote it.
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.current].display
    }

    /// The connection calls currently go to.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// The etcd KV service on the current endpoint. Calls made on it directly
    /// get neither the command timeout nor failover; prefer [`Client::call`]
    /// or the typed methods.
    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }

    /// The etcd Cluster service on the current endpoint (see [`Client::kv`]).
    pub fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }

    /// The etcd Maintenance service on the current endpoint (see [`Client::kv`]).
    pub fn maintenance(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }

    /// Sends one call under the command timeout. `send` gets the channel and
    /// the request (with `grpc-timeout` set) and makes the gRPC call; it may
    /// be run again on another endpoint if `retry` is [`Retry::Idempotent`].
    pub async fn call<Req, Resp, F, Fut>(
        &mut self,
        call: &'static str,
        retry: Retry,
        message: Req,
        send: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut tried = vec![self.current];
        let mut attempts: Vec<(String, String)> = Vec::new();
        loop {
            let mut request = tonic::Request::new(message.clone());
            request.set_timeout(self.command_timeout);
            let endpoint = self.endpoint().to_string();
            let answer = tokio::time::timeout(self.command_timeout, send(self.channel(), request)).await;
            let timed_out = format!(
                "no answer within --command-timeout {} ms",
                self.command_timeout.as_millis()
            );
            let reason = match answer {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                // tonic enforces the grpc-timeout we set, racing the timer
                // above; either way the call timed out.
                Ok(Err(status)) if source_chain_has::<tonic::TimeoutExpired>(&status) => {
                    if retry == Retry::AtMostOnce {
                        return Err(ClientError::OutcomeUnknown {
                            call,
                            endpoint,
                            reason: format!("got {timed_out}"),
                        });
                    }
                    timed_out
                }
                Ok(Err(status)) => {
                    let failure = ServerFailure::from_status(&status);
                    if failure.code != Code::Unavailable {
                        return Err(ClientError::Server {
                            call,
                            endpoint,
                            failure,
                        });
                    }
                    // A connect error means the channel could not reconnect,
                    // so nothing was sent: safe to send elsewhere, even a write.
                    if retry == Retry::AtMostOnce && !source_chain_has::<tonic::ConnectError>(&status) {
                        return Err(ClientError::OutcomeUnknown {
                            call,
                            endpoint,
                            reason: format!("it failed with {failure}"),
                        });
                    }
                    failure.to_string()
                }
                Err(_elapsed) => {
                    if retry == Retry::AtMostOnce {
                        return Err(ClientError::OutcomeUnknown {
                            call,
                            endpoint,
                            reason: format!("got {timed_out}"),
                        });
                    }
                    timed_out
                }
            };
            attempts.push((endpoint, reason));
            if !self.fail_over(&mut tried, &mut attempts).await {
                return Err(ClientError::AllEndpointsFailed { call, attempts });
            }
        }
    }

    /// Moves to the next endpoint (in `--endpoints` order, after the current
    /// one) that has not been tried for this call and that answers a dial.
    /// Returns false when there is none left.
    async fn fail_over(&mut self, tried: &mut Vec<usize>, attempts: &mut Vec<(String, String)>) -> bool {
        let count = self.endpoints.len();
        let start = self.current;
        for step in 1..count {
            let index = (start + step) % count;
            if tried.contains(&index) || self.unreachable.contains(&index) {
                continue;
            }
            tried.push(index);
            let endpoint = &self.endpoints[index];
            match dial(&endpoint.url, self.dial_timeout).await {
                Ok(channel) => {
                    self.channel = channel;
                    self.current = index;
                    return true;
                }
                Err(reason) => attempts.push((endpoint.display.clone(), format!("dial failed: {reason}"))),
            }
        }
        false
    }

    /// KV.Range. A read: fails over.
    pub async fn range(&mut self, request: RangeRequest) -> Result<RangeResponse, ClientError> {
        self.call("range", Retry::Idempotent, request, |channel, request| async move {
            kv_client(channel).range(request).await
        })
        .await
    }

    /// KV.Put. A write: sent once.
    pub async fn put(&mut self, request: PutRequest) -> Result<PutResponse, ClientError> {
        self.call("put", Retry::AtMostOnce, request, |channel, request| async move {
            kv_client(channel).put(request).await
        })
        .await
    }

    /// KV.DeleteRange. A write: sent once.
    pub async fn delete_range(&mut self, request: DeleteRangeRequest) -> Result<DeleteRangeResponse, ClientError> {
        self.call("delete", Retry::AtMostOnce, request, |channel, request| async move {
            kv_client(channel).delete_range(request).await
        })
        .await
    }

    /// KV.Txn. Fails over only if every operation in it (nested ones too)
    /// is a read; otherwise sent once.
    pub async fn txn(&mut self, request: TxnRequest) -> Result<TxnResponse, ClientError> {
        let retry = if txn_is_read_only(&request) {
            Retry::Idempotent
        } else {
            Retry::AtMostOnce
        };
        self.call("txn", retry, request, |channel, request| async move {
            kv_client(channel).txn(request).await
        })
        .await
    }

    /// KV.Compact. Sent once: compacting twice fails the second time with
    /// "compacted", which would hide that the first one worked.
    pub async fn compact(&mut self, request: CompactionRequest) -> Result<CompactionResponse, ClientError> {
        self.call("compact", Retry::AtMostOnce, request, |channel, request| async move {
            kv_client(channel).compact(request).await
        })
        .await
    }

    /// Cluster.MemberList. A read: fails over.
    pub async fn member_list(&mut self, request: MemberListRequest) -> Result<MemberListResponse, ClientError> {
        self.call(
            "member list",
            Retry::Idempotent,
            request,
            |channel, request| async move { cluster_client(channel).member_list(request).await },
        )
        .await
    }

    /// Cluster.MemberAdd. A membership change: sent once.
    pub async fn member_add(&mut self, request: MemberAddRequest) -> Result<MemberAddResponse, ClientError> {
        self.call(
            "member add",
            Retry::AtMostOnce,
            request,
            |channel, request| async move { cluster_client(channel).member_add(request).await },
        )
        .await
    }

    /// Cluster.MemberRemove. A membership change: sent once.
    pub async fn member_remove(&mut self, request: MemberRemoveRequest) -> Result<MemberRemoveResponse, ClientError> {
        self.call(
            "member remove",
            Retry::AtMostOnce,
            request,
            |channel, request| async move { cluster_client(channel).member_remove(request).await },
        )
        .await
    }

    /// Cluster.MemberPromote. A membership change: sent once.
    pub async fn member_promote(
        &mut self,
        request: MemberPromoteRequest,
    ) -> Result<MemberPromoteResponse, ClientError> {
        self.call(
            "member promote",
            Retry::AtMostOnce,
            request,
            |channel, request| async move { cluster_client(channel).member_promote(request).await },
        )
        .await
    }

    /// Maintenance.Status of the current endpoint. A read: fails over (so
    /// with several endpoints it may answer for another one; `zongheng
    /// status` connects to each endpoint separately for that reason).
    pub async fn status(&mut self) -> Result<StatusResponse, ClientError> {
        self.call(
            "status",
            Retry::Idempotent,
            StatusRequest {},
            |channel, request| async move { maintenance_client(channel).status(request).await },
        )
        .await
    }
}

/// Whether an error of type `E` is among the causes of `status`.
fn source_chain_has<E: std::error::Error + 'static>(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<E>() {
            return true;
        }
        source = error.source();
    }
    false
}

fn kv_client(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX)
}

fn cluster_client(channel: Channel) -> ClusterClient<Channel> {
    ClusterClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX)
}

fn maintenance_client(channel: Channel) -> MaintenanceClient<Channel> {
    MaintenanceClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX)
}

/// True if every operation of the txn, in both branches and in nested txns,
/// is a range: then sending it twice changes nothing.
pub fn txn_is_read_only(request: &TxnRequest) -> bool {
    request
        .success
        .iter()
        .chain(request.failure.iter())
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(nested)) => txn_is_read_only(nested),
            Some(request_op::Request::RequestPut(_)) | Some(request_op::Request::RequestDeleteRange(_)) => false,
        })
}

// ---------------------------------------------------------------------------
// Output helpers.

/// Bytes as text: as they are when valid UTF-8, otherwise escaped so the
/// output stays one readable line (`\xff`, `\n`, `\\`; printable ASCII as is).
pub fn display_bytes(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(escape_bytes(bytes)),
    }
}

/// Escapes every byte that is not printable ASCII.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        match byte {
            b'\\' => text.push_str("\\\\"),
            b'\n' => text.push_str("\\n"),
            b'\r' => text.push_str("\\r"),
            b'\t' => text.push_str("\\t"),
            0x20..=0x7e => text.push(byte as char),
            _ => text.push_str(&format!("\\x{byte:02x}")),
        }
    }
    text
}

/// Standard base64 (RFC 4648, with padding), for bytes that are not UTF-8
/// in JSON output.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b0 = chunk[0] as u32;
        let b1 = chunk.get(1).copied().unwrap_or(0) as u32;
        let b2 = chunk.get(2).copied().unwrap_or(0) as u32;
        let triple = (b0 << 16) | (b1 << 8) | b2;
        text.push(ALPHABET[(triple >> 18) as usize & 63] as char);
        text.push(ALPHABET[(triple >> 12) as usize & 63] as char);
        if chunk.len() > 1 {
            text.push(ALPHABET[(triple >> 6) as usize & 63] as char);
        } else {
            text.push('=');
        }
        if chunk.len() > 2 {
            text.push(ALPHABET[triple as usize & 63] as char);
        } else {
            text.push('=');
        }
    }
    text
}

/// A byte string for JSON: `(text, base64)`, exactly one of them set. Text
/// when the bytes are valid UTF-8, base64 otherwise.
pub fn json_bytes(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_string()), None),
        Err(_) => (None, Some(base64_encode(bytes))),
    }
}

/// A value as one line of JSON. The types printed here are plain structs of
/// numbers, strings and lists, which always serialize.
pub fn json_line<T: serde::Serialize>(value: &T) -> String {
    let mut line = serde_json::to_string(value).expect("output structs always serialize to JSON");
    line.push('\n');
    line
}

/// A table with one header row, columns left-aligned and separated by two
/// spaces; the last column is not padded, so no line ends in spaces.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|header| header.chars().count()).collect();
    for row in rows {
        assert_eq!(row.len(), columns, "every table row has one cell per header");
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header_row: Vec<String> = headers.iter().map(|header| header.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                let padding = widths[column] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', padding));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// A size the way etcdctl shows it (SI units, like go-humanize): `5 B`,
/// `1.5 kB`, `20 kB`, `3.4 MB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let mut exponent = 0;
    let mut scale: u64 = 1;
    while exponent + 1 < UNITS.len() && bytes / scale >= 1000 {
        exponent += 1;
        scale *= 1000;
    }
    let value = ((bytes as f64 / scale as f64) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exponent])
    } else {
        format!("{value:.0} {}", UNITS[exponent])
    }
}

/// Member and lease IDs are shown in hexadecimal, as etcdctl shows them.
pub fn format_hex_id(id: u64) -> String {
    format!("{id:x}")
}

/// Parses a hexadecimal ID as etcdctl prints it (`8e9e05c52164694d`; a
/// leading `0x` is accepted).
pub fn parse_hex_id(input: &str) -> Result<u64, String> {
    let text = input.trim();
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || digits.len() > 16 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{input:?} is not a hexadecimal ID; give it as `zongheng member list` prints it (up to 16 hex digits, e.g. 8e9e05c52164694d)"
        ));
    }
    u64::from_str_radix(digits, 16).map_err(|error| format!("{input:?}: {error}"))
}

/// Writes command output to stdout. A closed pipe (`zongheng kv get ... |
/// head`) is not an error.
pub fn print_output(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(anyhow::anyhow!("could not write to stdout: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zongheng_proto::etcdserverpb::{PutRequest, RequestOp};

    #[test]
    fn endpoints_accept_host_port_and_http_urls() {
        let endpoints = parse_endpoints(" 127.0.0.1:2379, http://node2:22379/ ,,[::1]:2379").unwrap();
        let urls: Vec<&str> = endpoints.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(
            urls,
            ["http://127.0.0.1:2379", "http://node2:22379", "http://[::1]:2379"]
        );
        assert_eq!(endpoints[1].display, "http://node2:22379/");
        assert_eq!(parse_endpoints(DEFAULT_ENDPOINTS).unwrap().len(), 1);
    }

    #[test]
    fn endpoints_drop_duplicates_and_keep_order() {
        let endpoints = parse_endpoints("b:2,a:1,http://b:2").unwrap();
        let urls: Vec<&str> = endpoints.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(urls, ["http://b:2", "http://a:1"]);
    }

    #[test]
    fn endpoints_reject_mistakes_with_a_reason() {
        let cases = [
            ("", "no endpoint given"),
            ("localhost", "missing port"),
            ("localhost:http", "not a port number"),
            ("localhost:0", "not a port number"),
            ("localhost:70000", "not a port number"),
            (":2379", "missing host"),
            ("https://a:2379", "TLS is not supported"),
            ("unix://a:2379", "unsupported scheme"),
            ("a:2379/v3", "no path"),
            ("::1:2379", "brackets"),
            ("[::1", "missing ']'"),
        ];
        for (input, expected) in cases {
            let error = parse_endpoints(input).unwrap_err().to_string();
            assert!(error.contains(expected), "{input:?} gave {error:?}");
            assert!(error.contains("e.g. 127.0.0.1:2379"), "{error}");
        }
        // The limit counts distinct endpoints.
        let list: Vec<String> = (1..=ENDPOINTS_MAX + 1).map(|port| format!("h:{port}")).collect();
        let error = parse_endpoints(&list.join(",")).unwrap_err().to_string();
        assert!(error.contains("limit"), "{error}");
    }

    #[test]
    fn timeouts_take_milliseconds_or_units() {
        assert_eq!(parse_timeout_ms("2000"), Ok(2000));
        assert_eq!(parse_timeout_ms("500ms"), Ok(500));
        assert_eq!(parse_timeout_ms("2s"), Ok(2000));
        assert_eq!(parse_timeout_ms("1m"), Ok(60_000));
        assert!(parse_timeout_ms("0").unwrap_err().contains("at least 1 ms"));
        assert!(parse_timeout_ms("soon").unwrap_err().contains("not a duration"));
        assert!(parse_timeout_ms("2h").is_err());
        assert!(parse_timeout_ms("61m").unwrap_err().contains("limit"));
    }

    #[test]
    fn hex_ids_parse_as_etcdctl_prints_them() {
        assert_eq!(parse_hex_id("8e9e05c52164694d"), Ok(0x8e9e05c52164694d));
        assert_eq!(parse_hex_id("0x1F"), Ok(31));
        assert_eq!(parse_hex_id(" ff "), Ok(255));
        assert_eq!(parse_hex_id("ffffffffffffffff"), Ok(u64::MAX));
        for bad in ["", "0x", "xyz", "12 34", "-1", "1ffffffffffffffff"] {
            let error = parse_hex_id(bad).unwrap_err();
            assert!(error.contains("hexadecimal"), "{bad:?} gave {error}");
        }
        assert_eq!(format_hex_id(0x8e9e05c52164694d), "8e9e05c52164694d");
        assert_eq!(format_hex_id(1), "1");
    }

    #[test]
    fn human_sizes_match_etcdctl() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(9), "9 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1000), "1.0 kB");
        assert_eq!(human_bytes(1500), "1.5 kB");
        assert_eq!(human_bytes(20_480), "20 kB");
        assert_eq!(human_bytes(25_000), "25 kB");
        assert_eq!(human_bytes(1_000_000), "1.0 MB");
        assert_eq!(human_bytes(3_400_000), "3.4 MB");
        assert_eq!(human_bytes(2_000_000_000), "2.0 GB");
        assert_eq!(human_bytes(u64::MAX), "18 EB");
    }

    #[test]
    fn bytes_display_as_text_or_escaped() {
        assert_eq!(display_bytes(b"hello"), "hello");
        assert_eq!(display_bytes("纵横".as_bytes()), "纵横");
        assert_eq!(display_bytes(b"a\xffb\n\\"), "a\\xffb\\n\\\\");
        assert_eq!(json_bytes(b"v"), (Some("v".to_string()), None));
        assert_eq!(json_bytes(b"\xff\x00"), (None, Some("/wA=".to_string())));
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in vectors {
            assert_eq!(base64_encode(input.as_bytes()), expected);
        }
        assert_eq!(base64_encode(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn tables_align_and_have_no_trailing_spaces() {
        let table = render_table(
            &["ID", "NAME", "ERRORS"],
            &[
                vec!["1".into(), "node-one".into(), "".into()],
                vec!["abcdef".into(), "n2".into(), "boom".into()],
            ],
        );
        assert_eq!(
            table,
            "ID      NAME      ERRORS\n1       node-one\nabcdef  n2        boom\n"
        );
    }

    #[test]
    fn server_failures_show_message_code_and_zongheng_code() {
        let mut status = tonic::Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        status
            .metadata_mut()
            .insert(ERROR_CODE_METADATA, "ZH_MVCC_COMPACTED".parse().unwrap());
        let failure = ServerFailure::from_status(&status);
        let error = ClientError::Server {
            call: "range",
            endpoint: "127.0.0.1:2379".into(),
            failure,
        };
        assert_eq!(
            error.to_string(),
            "range failed on 127.0.0.1:2379: etcdserver: mvcc: required revision has been compacted \
             (gRPC code OutOfRange, ZH_MVCC_COMPACTED). Hint: that revision was compacted away; \
             read at a newer --rev, or leave --rev out"
        );
        let plain = ServerFailure::from_status(&tonic::Status::new(
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        ));
        assert_eq!(
            plain.to_string(),
            "etcdserver: key is not provided (gRPC code InvalidArgument)"
        );
        assert_eq!(plain.hint(), None);
    }

    #[test]
    fn unknown_outcomes_say_the_write_was_not_retried() {
        let error = ClientError::OutcomeUnknown {
            call: "put",
            endpoint: "a:2379".into(),
            reason: "it failed with etcdserver: request timed out (gRPC code Unavailable)".into(),
        };
        let text = error.to_string();
        assert!(text.contains("may or may not have been applied"), "{text}");
        assert!(text.contains("not retried"), "{text}");
        assert!(text.contains("zongheng kv get"), "{text}");
    }

    #[test]
    fn only_read_only_txns_are_retried() {
        let range = RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest::default())),
        };
        let put = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest::default())),
        };
        let reads = TxnRequest {
            compare: vec![],
            success: vec![range.clone()],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest {
                    compare: vec![],
                    success: vec![range.clone()],
                    failure: vec![],
                })),
            }],
        };
        assert!(txn_is_read_only(&reads));
        let nested_write = TxnRequest {
            compare: vec![],
            success: vec![range],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest {
                    compare: vec![],
                    success: vec![],
                    failure: vec![put],
                })),
            }],
        };
        assert!(!txn_is_read_only(&nested_write));
    }

    /// `zongheng ARGS...` through the real command line.
    fn parse(words: &[&str]) -> Result<crate::cli::Cli, clap::Error> {
        use clap::Parser;
        crate::cli::Cli::try_parse_from(std::iter::once("zongheng").chain(words.iter().copied()))
    }

    fn kv_client_options(words: &[&str]) -> ClientOptions {
        match parse(words) {
            Ok(crate::cli::Cli {
                command: crate::cli::Command::Kv(args),
                ..
            }) => args.client,
            Ok(other) => panic!("{words:?} parsed as {other:?}"),
            Err(error) => panic!("{words:?} failed: {error}"),
        }
    }

    #[test]
    fn the_command_tree_is_consistent() {
        use clap::CommandFactory;
        crate::cli::Cli::command().debug_assert();
    }

    #[test]
    fn connection_flags_go_before_or_after_the_subcommand() {
        let after = kv_client_options(&[
            "kv",
            "get",
            "k",
            "--endpoints",
            "a:1,b:2",
            "--json",
            "--dial-timeout",
            "2s",
        ]);
        assert_eq!(after.endpoints, "a:1,b:2");
        assert!(after.json);
        assert_eq!(after.dial_timeout_ms, 2000);

        let before = kv_client_options(&["kv", "--endpoints", "a:1", "--command-timeout", "750", "put", "k", "v"]);
        assert_eq!(before.endpoints, "a:1");
        assert_eq!(before.command_timeout_ms, 750);
        assert!(!before.json);

        let with_log_level = kv_client_options(&["--log-level", "debug", "kv", "get", "k"]);
        assert_eq!(with_log_level.command_timeout_ms, 5000);
    }

    #[test]
    fn connection_flags_have_etcdctl_defaults() {
        let options = kv_client_options(&["kv", "get", "k"]);
        if std::env::var_os("ZONGHENG_ENDPOINTS").is_none() {
            assert_eq!(options.endpoints, DEFAULT_ENDPOINTS);
        }
        assert_eq!((options.dial_timeout_ms, options.command_timeout_ms), (2000, 5000));
        assert_eq!(options.dial_timeout(), Duration::from_secs(2));
        let error = parse(&["kv", "get", "k", "--dial-timeout", "0"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("at least 1 ms"), "{error}");
        let error = parse(&["kv", "get", "k", "--command-timeout", "soon"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a duration"), "{error}");
    }
}
