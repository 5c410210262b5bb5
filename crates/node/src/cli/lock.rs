//! `zongheng lock NAME [--ttl S] [-- COMMAND ARGS...]`: hold a distributed
//! lock, like `etcdctl lock`, and optionally run a command while holding it.
//!
//! ## What it does
//! 1. Grants a *session lease* (`--ttl`, 10 s by default as in `etcdctl lock`)
//!    and keeps it alive in the background ([`Session`]).
//! 2. Calls the v3lock `Lock` RPC with that lease, which waits for the turn
//!    of this lease's key in the queue under `NAME/` (see `server::lock`).
//! 3. Reads the lock key once to learn its create revision: the **fencing
//!    token**, which strictly increases from one holder to the next.
//! 4. Without a command, prints the lock key (as etcdctl does) and holds the
//!    lock until Ctrl-C or SIGTERM. With a command, runs it with
//!    `ZONGHENG_LOCK_KEY`, `ZONGHENG_LOCK_REVISION` (the fencing token) and
//!    `ZONGHENG_LOCK_LEASE` in its environment, plus etcdctl's own
//!    `ETCD_LOCK_KEY` and `ETCD_LOCK_REV` (etcdctl 3.4 sets `ETCD_LOCK_REV`
//!    to the header revision of the `Lock` answer, which is at least the
//!    create revision; it is passed as etcdctl passes it).
//! 5. Unlocks, revokes the lease and exits with the command's exit status
//!    (etcdctl exits 1 for any failure of the command; this passes the status
//!    through, and 128 + N for a command killed by signal N).
//!
//! ## Losing the lock
//! The lock is only as good as the lease. The session counts from the
//! moment it *sent* the last renewal the server acknowledged: the server
//! cannot expire the lease before that moment plus the TTL. When the session
//! has had no acknowledgement for [`LOST_AT_TTL_FRACTION`] of the TTL, or the
//! server says the lease is gone, or the lock key is deleted (someone revoked
//! the lease or deleted the key), the holder must stop acting: the command
//! gets SIGTERM at once and SIGKILL a sixth of the TTL later (when the TTL
//! is up, in the no-answer case), and `zongheng lock` exits non-zero with the
//! reason. A stale holder that was paused (a GC pause, a stopped VM) cannot
//! notice in time, which is what the fencing token is for: the guarded
//! resource refuses tokens smaller than the largest it has seen (see
//! `docs/architecture.md`, section 17).
//!
//! ## Not yet
//! `Lock` and `Unlock` are not retried on another endpoint when the node
//! serving them fails: the command reports the error (and revokes its lease,
//! which releases any position it had). The keep-alive and the key guard do
//! reconnect, trying every endpoint of `--endpoints`.

use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;
use zongheng_proto::etcdserverpb::kv_client::KvClient;
use zongheng_proto::etcdserverpb::lease_client::LeaseClient;
use zongheng_proto::etcdserverpb::watch_client::WatchClient;
use zongheng_proto::etcdserverpb::watch_request::RequestUnion;
use zongheng_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use zongheng_proto::mvccpb::event::EventType;
use zongheng_proto::v3lockpb::lock_client::LockClient;
use zongheng_proto::v3lockpb::{LockRequest, UnlockRequest};

use super::client::{display_bytes, json_line, print_output, Client, ClientError, ClientOptions, ServerFailure};

/// The session lease's TTL when `--ttl` is not given: `etcdctl lock`'s.
pub const SESSION_TTL_SECONDS_DEFAULT: i64 = 10;
/// The longest `--ttl` accepted (one day). A lock held by a process that
/// vanished stays taken for up to the TTL, so a longer one is a mistake.
pub const SESSION_TTL_SECONDS_MAX: i64 = 86_400;
/// Renewals per TTL (etcd's client renews every third of the TTL).
pub const KEEPALIVES_PER_TTL: u32 = 3;
/// The session counts as lost after this fraction of the TTL without an
/// acknowledged renewal, leaving the rest of the TTL for the command to stop
/// before the server could hand the lock to someone else.
pub const LOST_AT_TTL_FRACTION: (u32, u32) = (5, 6);
/// Pause between attempts to reach the cluster again when a keep-alive or a
/// guard stream broke.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, clap::Args)]
pub struct LockArgs {
    /// The lock's name; its key is `NAME/<lease id in hex>`.
    pub name: String,
    /// Seconds the session lease lives without renewal: how long the lock
    /// stays taken after this process vanishes.
    #[arg(long, default_value_t = SESSION_TTL_SECONDS_DEFAULT, value_parser = parse_ttl)]
    pub ttl: i64,
    /// A command to run while holding the lock (after `--`, or after NAME).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    #[command(flatten)]
    pub client: ClientOptions,
}

/// Parses `--ttl`: whole seconds, 1 to [`SESSION_TTL_SECONDS_MAX`].
pub fn parse_ttl(input: &str) -> Result<i64, String> {
    let ttl: i64 = input
        .trim()
        .parse()
        .map_err(|_| format!("{input:?} is not a number of seconds"))?;
    if !(1..=SESSION_TTL_SECONDS_MAX).contains(&ttl) {
        return Err(format!("the TTL is 1 to {SESSION_TTL_SECONDS_MAX} seconds, got {ttl}"));
    }
    Ok(ttl)
}

/// A refusal from the server as a readable error (etcd's message, the gRPC
/// code, zongheng's code and a hint).
pub(crate) fn server_error(call: &'static str, client: &Client, status: &tonic::Status) -> anyhow::Error {
    ClientError::Server {
        call,
        endpoint: client.endpoint().to_string(),
        failure: ServerFailure::from_status(status),
    }
    .into()
}

/// Runs `call` under the command timeout, turning a refusal into a readable
/// error.
pub(crate) async fn bounded<T>(
    call: &'static str,
    client: &Client,
    future: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(client.command_timeout(), future).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(server_error(call, client, &status)),
        Err(_) => bail!(
            "{call} got no answer from {} within --command-timeout {} ms",
            client.endpoint(),
            client.command_timeout().as_millis()
        ),
    }
}

// ---------------------------------------------------------------------------
// Session: a lease kept alive in the background (etcd's concurrency.Session).

/// A lease kept alive by a background task, with a way to learn that it is
/// lost. Dropping it stops the keep-alive (the lease then expires); call
/// [`Session::close`] to revoke it at once.
pub struct Session {
    pub lease: i64,
    pub ttl: Duration,
    lost: watch::Receiver<Option<String>>,
    lost_sender: watch::Sender<Option<String>>,
    tasks: Vec<JoinHandle<()>>,
    options: ClientOptions,
}

impl Session {
    /// Grants a lease of `ttl_seconds` and starts keeping it alive.
    pub async fn grant(client: &Client, options: &ClientOptions, ttl_seconds: i64) -> anyhow::Result<Session> {
        let sent = Instant::now();
        let granted = bounded(
            "lease grant",
            client,
            LeaseClient::new(client.channel()).lease_grant(LeaseGrantRequest {
                ttl: ttl_seconds,
                id: 0,
            }),
        )
        .await?;
        assert!(granted.id != 0, "a granted lease has an id");
        let ttl = Duration::from_secs(granted.ttl.max(1) as u64);
        let (lost_sender, lost) = watch::channel(None);
        let keepalive = tokio::spawn(keep_alive(
            options.clone(),
            client.channel(),
            granted.id,
            ttl,
            sent + ttl,
            lost_sender.clone(),
        ));
        Ok(Session {
            lease: granted.id,
            ttl,
            lost,
            lost_sender,
            tasks: vec![keepalive],
            options: options.clone(),
        })
    }

    /// Resolves with the reason once the session is lost.
    pub async fn lost(&mut self) -> String {
        loop {
            if let Some(reason) = self.lost.borrow_and_update().clone() {
                return reason;
            }
            if self.lost.changed().await.is_err() {
                return "the session ended".to_string();
            }
        }
    }

    /// Also counts the session as lost if `key` is deleted after `revision`
    /// (its lease revoked by someone else, or the key deleted by hand).
    pub fn guard_key(&mut self, channel: Channel, key: Vec<u8>, revision: i64) {
        let task = tokio::spawn(guard_key(
            self.options.clone(),
            channel,
            key,
            revision,
            self.lost_sender.clone(),
        ));
        self.tasks.push(task);
    }

    /// Stops the keep-alive and revokes the lease (which releases every key
    /// attached to it). A failed revoke is reported, not fatal: the lease
    /// expires within its TTL anyway.
    pub async fn close(self, client: &Client) {
        for task in &self.tasks {
            task.abort();
        }
        let mut leases = LeaseClient::new(client.channel());
        let revoke = leases.lease_revoke(LeaseRevokeRequest { id: self.lease });
        if let Err(error) = bounded("lease revoke", client, revoke).await {
            let gone = error
                .downcast_ref::<ClientError>()
                .and_then(ClientError::server_failure)
                .is_some_and(|failure| failure.code == tonic::Code::NotFound);
            if gone {
                return; // Already expired or revoked: nothing left to release.
            }
            eprintln!(
                "could not revoke lease {:x} ({error:#}); it expires within {} s",
                self.lease,
                self.ttl.as_secs()
            );
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// When the session counts as lost, given when the lease may expire.
fn lost_at(expires_at: Instant, ttl: Duration) -> Instant {
    let (numerator, denominator) = LOST_AT_TTL_FRACTION;
    expires_at - ttl + ttl * numerator / denominator
}

/// Reconnects to the first endpoint that answers, or gives up for now.
async fn reconnect(options: &ClientOptions) -> Option<Channel> {
    Client::connect(options).await.ok().map(|client| client.channel())
}

/// Renews `lease` every third of its TTL until it is lost; reports the loss
/// on `lost`. `expires_at` is the earliest moment the server may expire it.
async fn keep_alive(
    options: ClientOptions,
    mut channel: Channel,
    lease: i64,
    ttl: Duration,
    mut expires_at: Instant,
    lost: watch::Sender<Option<String>>,
) {
    let interval = ttl / KEEPALIVES_PER_TTL;
    let mut stream: Option<(
        tokio::sync::mpsc::Sender<LeaseKeepAliveRequest>,
        tonic::Streaming<zongheng_proto::etcdserverpb::LeaseKeepAliveResponse>,
    )> = None;
    let reason = loop {
        let give_up = lost_at(expires_at, ttl);
        if Instant::now() >= give_up {
            break format!(
                "no keep-alive of lease {lease:x} was acknowledged for {} ms (TTL {} s)",
                (Instant::now() - (expires_at - ttl)).as_millis(),
                ttl.as_secs()
            );
        }
        let sent = Instant::now();
        let request = LeaseKeepAliveRequest { id: lease };
        let queued = match stream.as_mut() {
            Some((sender, _)) => sender.send(request).await.is_ok(),
            None => {
                // The request goes in before the stream is opened: etcd (grpc-go)
                // sends the response headers only with the first answer.
                let (sender, receiver) = tokio::sync::mpsc::channel(1);
                sender.send(request).await.expect("the receiver is here");
                let opened = tokio::time::timeout_at(
                    give_up,
                    LeaseClient::new(channel.clone())
                        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver)),
                )
                .await;
                match opened {
                    Ok(Ok(responses)) => {
                        stream = Some((sender, responses.into_inner()));
                        true
                    }
                    _ => false,
                }
            }
        };
        let answer = match stream.as_mut() {
            Some((_, responses)) if queued => match tokio::time::timeout_at(give_up, responses.next()).await {
                Ok(Some(Ok(response))) => Some(response),
                Ok(_) => None,
                Err(_) => continue, // `give_up` passed: the loop top reports it.
            },
            _ => None,
        };
        match answer {
            Some(response) if response.ttl > 0 => {
                expires_at = sent + Duration::from_secs(response.ttl as u64);
                tokio::time::sleep_until(sent + interval).await;
            }
            Some(_) => break format!("lease {lease:x} expired or was revoked"),
            None => {
                // The stream broke (the node went away): open it again,
                // on another endpoint if this one is gone.
                stream = None;
                tokio::time::sleep_until(give_up.min(Instant::now() + RECONNECT_PAUSE)).await;
                if let Some(fresh) = reconnect(&options).await {
                    channel = fresh;
                }
            }
        }
    };
    lost.send_replace(Some(reason));
}

/// Watches `key` from `revision + 1` and reports on `lost` when it is
/// deleted. Re-creates the watch after a broken stream from the last
/// revision seen, so no deletion is missed.
async fn guard_key(
    options: ClientOptions,
    mut channel: Channel,
    key: Vec<u8>,
    revision: i64,
    lost: watch::Sender<Option<String>>,
) {
    let mut next_revision = revision + 1;
    loop {
        match watch_for_deletion(channel.clone(), &key, revision, &mut next_revision).await {
            Some(reason) => {
                lost.send_replace(Some(reason));
                return;
            }
            None => {
                tokio::time::sleep(RECONNECT_PAUSE).await;
                if let Some(fresh) = reconnect(&options).await {
                    channel = fresh;
                }
            }
        }
    }
}

/// One watch stream of [`guard_key`]: the reason the key is gone, or `None`
/// when the stream broke and must be opened again from `next_revision`.
async fn watch_for_deletion(channel: Channel, key: &[u8], revision: i64, next_revision: &mut i64) -> Option<String> {
    let create = WatchCreateRequest {
        key: key.to_vec(),
        start_revision: *next_revision,
        ..Default::default()
    };
    let requests = futures::stream::iter(vec![WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    }])
    .chain(futures::stream::pending());
    let mut responses = WatchClient::new(channel.clone())
        .watch(requests)
        .await
        .ok()?
        .into_inner();
    while let Some(Ok(response)) = responses.next().await {
        if response.canceled && response.compact_revision > 0 {
            // History since `next_revision` was compacted away (a stream
            // broken for long): look at the key itself instead.
            let read = RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            };
            let range = KvClient::new(channel.clone()).range(read).await.ok()?.into_inner();
            return match range.kvs.first() {
                Some(kv) if kv.create_revision == revision => {
                    *next_revision = range.header.map(|header| header.revision + 1).unwrap_or(*next_revision);
                    None
                }
                _ => Some(format!("{} was deleted", display_bytes(key))),
            };
        }
        if response.canceled {
            return Some(format!(
                "the server cancelled the watch on {}: {}",
                display_bytes(key),
                response.cancel_reason
            ));
        }
        for event in &response.events {
            let kv = event.kv.clone().unwrap_or_default();
            if event.r#type == EventType::Delete as i32 {
                return Some(format!(
                    "{} was deleted at revision {}",
                    display_bytes(key),
                    kv.mod_revision
                ));
            }
            *next_revision = (*next_revision).max(kv.mod_revision + 1);
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Signals.

/// Ctrl-C (SIGINT) and SIGTERM, the two ways to ask this process to stop.
pub(crate) struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub(crate) fn install() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    /// Resolves with the signal that arrived.
    pub(crate) async fn recv(&mut self) -> nix::sys::signal::Signal {
        tokio::select! {
            _ = self.interrupt.recv() => nix::sys::signal::Signal::SIGINT,
            _ = self.terminate.recv() => nix::sys::signal::Signal::SIGTERM,
        }
    }
}

// ---------------------------------------------------------------------------
// The command.

/// The lock as acquired.
struct Held {
    key: Vec<u8>,
    /// The lock key's create revision: the fencing token.
    token: i64,
    /// The header revision of the `Lock` answer (etcdctl's `ETCD_LOCK_REV`).
    header_revision: i64,
}

/// The environment a command run under the lock gets.
fn lock_environment(held: &Held, lease: i64) -> Vec<(&'static str, String)> {
    let key = String::from_utf8_lossy(&held.key).into_owned();
    vec![
        ("ZONGHENG_LOCK_KEY", key.clone()),
        ("ZONGHENG_LOCK_REVISION", held.token.to_string()),
        ("ZONGHENG_LOCK_LEASE", format!("{lease:x}")),
        ("ETCD_LOCK_KEY", key),
        ("ETCD_LOCK_REV", held.header_revision.to_string()),
    ]
}

/// The exit code a shell would report for `status`.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

pub async fn run(args: LockArgs) -> anyhow::Result<()> {
    if args.name.is_empty() {
        bail!("the lock name is empty; give the lock a name");
    }
    let client = Client::connect(&args.client).await?;
    let mut signals = StopSignals::install()?;
    let mut session = Session::grant(&client, &args.client, args.ttl).await?;
    let acquired = tokio::select! {
        held = acquire(&client, &args.name, session.lease) => held,
        reason = session.lost() => Err(anyhow::anyhow!("lost the session while waiting for lock {}: {reason}", args.name)),
        signal = signals.recv() => Err(anyhow::anyhow!("{signal} while waiting for lock {}; gave up", args.name)),
    };
    let held = match acquired {
        Ok(held) => held,
        Err(error) => {
            // Revoking the lease withdraws any queue position it had.
            session.close(&client).await;
            return Err(error);
        }
    };
    session.guard_key(client.channel(), held.key.clone(), held.token);
    let json = args.client.json;
    if args.command.is_empty() {
        let output = if json {
            json_line(&serde_json::json!({
                "key": display_bytes(&held.key),
                "revision": held.token,
                "header_revision": held.header_revision,
                "lease": format!("{:x}", session.lease),
            }))
        } else {
            format!("{}\n", display_bytes(&held.key))
        };
        print_output(&output)?;
        let lost = tokio::select! {
            reason = session.lost() => Some(reason),
            _ = signals.recv() => None,
        };
        return release(&client, session, &held, lost).await;
    }

    let mut command = tokio::process::Command::new(&args.command[0]);
    command
        .args(&args.command[1..])
        .envs(lock_environment(&held, session.lease));
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            release(&client, session, &held, None).await.ok();
            bail!("cannot run {:?}: {error}", args.command[0]);
        }
    };
    let child_pid = child.id().map(|pid| nix::unistd::Pid::from_raw(pid as i32));
    let signal_child = |signal: nix::sys::signal::Signal| {
        if let Some(pid) = child_pid {
            // The child is ours and not yet reaped, so the PID is still its.
            let _ = nix::sys::signal::kill(pid, signal);
        }
    };
    let mut lost = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            reason = session.lost(), if lost.is_none() => {
                eprintln!("zongheng lock: lost lock {}: {reason}; stopping the command", display_bytes(&held.key));
                signal_child(nix::sys::signal::Signal::SIGTERM);
                lost = Some(reason);
                // Dead before the server could expire the lease (by this
                // clock), whether or not it heeds SIGTERM.
                let grace = session.ttl - session.ttl * LOST_AT_TTL_FRACTION.0 / LOST_AT_TTL_FRACTION.1;
                match tokio::time::timeout(grace, child.wait()).await {
                    Ok(status) => break status.context("waiting for the command")?,
                    Err(_) => {
                        signal_child(nix::sys::signal::Signal::SIGKILL);
                        break child.wait().await.context("waiting for the command")?;
                    }
                }
            }
            signal = signals.recv() => {
                // Pass the request to stop on; keep the lock until the
                // command has stopped.
                signal_child(signal);
            }
        }
    };
    release(&client, session, &held, lost).await?;
    let code = exit_code(status);
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// Waits for the lock with the session's lease and reads the fencing token.
async fn acquire(client: &Client, name: &str, lease: i64) -> anyhow::Result<Held> {
    // No timeout: waiting for the turn is the point. Ctrl-C or a lost
    // session ends the wait (see `run`).
    let response = LockClient::new(client.channel())
        .lock(LockRequest {
            name: name.as_bytes().to_vec(),
            lease,
        })
        .await
        .map_err(|status| server_error("lock", client, &status))?
        .into_inner();
    let header_revision = response.header.map(|header| header.revision).unwrap_or_default();
    let read = RangeRequest {
        key: response.key.clone(),
        ..Default::default()
    };
    let range = bounded("range", client, client.kv().range(read)).await?;
    let Some(kv) = range.kvs.first() else {
        bail!(
            "lock {} was lost right after it was acquired (its lease expired or was revoked)",
            display_bytes(&response.key)
        )
    };
    assert_eq!(kv.lease, lease, "the lock key carries the session's lease");
    Ok(Held {
        key: response.key,
        token: kv.create_revision,
        header_revision,
    })
}

/// Unlocks and revokes the session; `lost` is why the lock was lost, if it
/// was (then this fails with that reason after cleaning up).
async fn release(client: &Client, session: Session, held: &Held, lost: Option<String>) -> anyhow::Result<()> {
    if lost.is_none() {
        let mut locks = LockClient::new(client.channel());
        let unlock = locks.unlock(UnlockRequest { key: held.key.clone() });
        if let Err(error) = bounded("unlock", client, unlock).await {
            eprintln!("zongheng lock: {error:#}; revoking the lease releases the lock anyway");
        }
    }
    session.close(client).await;
    match lost {
        Some(reason) => bail!(
            "lost lock {} (fencing token {}): {reason}. The command was stopped; anything it wrote after \
             this point must be rejected by its fencing token",
            display_bytes(&held.key),
            held.token
        ),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<LockArgs, clap::Error> {
        use clap::Parser;
        match crate::cli::Cli::try_parse_from(std::iter::once("zongheng").chain(words.iter().copied()))? {
            crate::cli::Cli {
                command: crate::cli::Command::Lock(args),
                ..
            } => Ok(args),
            other => panic!("{words:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn the_command_comes_after_the_name_with_or_without_dashes() {
        let args = parse(&["lock", "jobs", "--ttl", "5", "--", "sh", "-c", "echo $X"]).unwrap();
        assert_eq!((args.name.as_str(), args.ttl), ("jobs", 5));
        assert_eq!(args.command, ["sh", "-c", "echo $X"]);
        let args = parse(&["lock", "--json", "jobs", "sh", "-c", "exit 3"]).unwrap();
        assert!(args.client.json);
        assert_eq!(args.command, ["sh", "-c", "exit 3"]);
        let args = parse(&["lock", "jobs"]).unwrap();
        assert!(args.command.is_empty());
        assert_eq!(args.ttl, SESSION_TTL_SECONDS_DEFAULT);
    }

    #[test]
    fn ttls_are_checked() {
        assert_eq!(parse_ttl("60"), Ok(60));
        assert!(parse_ttl("0").unwrap_err().contains("1 to"));
        assert!(parse_ttl("-3").is_err());
        assert!(parse_ttl("86401").is_err());
        assert!(parse_ttl("ten").unwrap_err().contains("not a number"));
        assert!(parse(&["lock", "jobs", "--ttl", "0"]).is_err());
    }

    #[test]
    fn the_command_sees_the_key_and_the_fencing_token() {
        let held = Held {
            key: b"jobs/1f".to_vec(),
            token: 7,
            header_revision: 9,
        };
        let environment = lock_environment(&held, 0x1f);
        let get = |name: &str| {
            environment
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.as_str())
        };
        assert_eq!(get("ZONGHENG_LOCK_KEY"), Some("jobs/1f"));
        assert_eq!(get("ZONGHENG_LOCK_REVISION"), Some("7"));
        assert_eq!(get("ZONGHENG_LOCK_LEASE"), Some("1f"));
        assert_eq!(get("ETCD_LOCK_KEY"), Some("jobs/1f"));
        assert_eq!(get("ETCD_LOCK_REV"), Some("9"));
    }

    #[test]
    fn the_session_is_lost_before_the_lease_can_expire() {
        let now = Instant::now();
        let ttl = Duration::from_secs(6);
        let expires_at = now + ttl;
        assert_eq!(lost_at(expires_at, ttl), now + Duration::from_secs(5));
        assert!(lost_at(expires_at, ttl) < expires_at);
    }

    #[test]
    fn exit_codes_are_what_a_shell_reports() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(15)), 128 + 15);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(0)), 0);
    }
}
