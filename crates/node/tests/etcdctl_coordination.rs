//! etcdctl coordination commands: watch, lease, lock and elect, run as one
//! scripted session against a real etcd 3.4 and against zongheng; the
//! normalised transcripts must be equal.
//!
//! Long-running commands (`watch`, `lock`, `elect`) run as background etcdctl
//! processes with stdout and stderr going to files; they are stopped with
//! SIGTERM by PID once what they should print has been printed (every wait is
//! bounded). Both clusters start fresh, so revisions match exactly. Lease ids
//! (also inside lock and election keys) are masked as `<lease1>`, ... in the
//! order they first appear; ports are replaced by placeholders; a lease's
//! remaining TTL is shown as `<~TTL>` when it is within 3 s of the granted TTL
//! (it depends on the second the command ran in).
//!
//! The etcd side runs when `etcd` and `etcdctl` are installed; the zongheng
//! side whenever `etcdctl` is (`ZONGHENG_PROCESS_TESTS=0` turns it off). Both
//! transcripts are written to `$CARGO_TARGET_TMPDIR/etcdctl_coordination/`.

mod common;

use common::{
    etcd_available, etcdctl_available, signal_child, wait_for, zongheng_enabled, Cluster, Ctl, Kind,
    ETCDCTL_COMMAND_TIMEOUT, ETCDCTL_DIAL_TIMEOUT,
};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a watcher gets to connect and register before the writes.
const WATCH_SETTLE: Duration = Duration::from_millis(1_500);
/// How long a background etcdctl gets to print what it should.
const OUTPUT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a background etcdctl gets to exit after SIGTERM before SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long we check that a waiting lock or candidate prints nothing.
const STILL_WAITING: Duration = Duration::from_millis(1_500);

/// An etcdctl process running in the background, output to files.
struct Background {
    label: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    code: Option<i32>,
}

impl Background {
    fn spawn(cluster: &Cluster, dir: &std::path::Path, name: &str, args: &[&str], piped_stdin: bool) -> Background {
        let stdout_path = dir.join(format!("{name}.stdout"));
        let stderr_path = dir.join(format!("{name}.stderr"));
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", cluster.live_client_urls().join(",")))
            .arg(format!("--command-timeout={ETCDCTL_COMMAND_TIMEOUT}"))
            .arg(format!("--dial-timeout={ETCDCTL_DIAL_TIMEOUT}"))
            .args(args)
            .stdin(if piped_stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(std::fs::File::create(&stdout_path).expect("create stdout file"))
            .stderr(std::fs::File::create(&stderr_path).expect("create stderr file"));
        let mut child = command.spawn().expect("start etcdctl");
        let stdin = child.stdin.take();
        Background {
            label: format!("etcdctl {} &", args.join(" ")),
            child: Some(child),
            stdin,
            stdout_path,
            stderr_path,
            code: None,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read(&self.stdout_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read(&self.stderr_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    fn write_stdin(&mut self, text: &str) {
        let pipe = self.stdin.as_mut().expect("spawned with piped stdin");
        pipe.write_all(text.as_bytes()).expect("write etcdctl stdin");
        pipe.flush().expect("flush etcdctl stdin");
    }

    /// Waits (bounded) until stdout satisfies `check`; true if it did.
    fn wait_stdout(&self, check: impl Fn(&str) -> bool) -> bool {
        wait_for(OUTPUT_TIMEOUT, Duration::from_millis(20), || {
            check(&self.stdout()).then_some(())
        })
        .is_some()
    }

    /// True if the process exits on its own within `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let status = wait_for(timeout, Duration::from_millis(20), || child.try_wait().ok().flatten());
        match status {
            Some(status) => {
                self.code = status.code();
                self.child = None;
                true
            }
            None => false,
        }
    }

    /// SIGTERM by PID (if still running), bounded wait, SIGKILL after that.
    fn stop(&mut self) {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            self.stdin = None;
            return;
        };
        // stdin stays open until the signal has done its work: `watch -i`
        // exits on its own (code 3) when it reads EOF.
        signal_child(pid, nix::sys::signal::Signal::SIGTERM);
        let exited = self.wait_exit(EXIT_TIMEOUT);
        self.stdin = None;
        if !exited {
            if let Some(mut child) = self.child.take() {
                drop(child.kill());
                drop(child.wait());
            }
            self.code = None;
        }
    }

    /// What it printed, as a [`Ctl`], after it has exited.
    fn output(&self) -> Ctl {
        assert!(self.child.is_none(), "{} still running", self.label);
        Ctl {
            args: vec![self.label.clone()],
            code: self.code,
            stdout: self.stdout(),
            stderr: self.stderr(),
            elapsed: Duration::ZERO,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.kill());
            drop(child.wait());
        }
    }
}

/// The transcript of one session: normalised blocks, one per step.
struct Transcript {
    ports: Vec<(String, String)>,
    /// Lease ids seen so far (hex as etcdctl prints them), in order.
    leases: Vec<String>,
    blocks: Vec<String>,
}

impl Transcript {
    fn new(cluster: &Cluster) -> Transcript {
        Transcript {
            ports: cluster.port_placeholders(),
            leases: Vec::new(),
            blocks: Vec::new(),
        }
    }

    /// Remembers the lease id in `lease <hex> granted ...` and returns it.
    fn learn_lease(&mut self, ctl: &Ctl) -> String {
        let id = ctl
            .stdout
            .strip_prefix("lease ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no lease id in {ctl}"))
            .to_string();
        self.learn_id(&id);
        id
    }

    fn learn_id(&mut self, id: &str) {
        if !self.leases.iter().any(|known| known == id) {
            self.leases.push(id.to_string());
        }
    }

    /// Learns the lease ids in lock and election keys (`name/<hex>`).
    fn learn_keys(&mut self, text: &str, prefixes: &[&str]) {
        for line in text.lines() {
            for prefix in prefixes {
                if let Some(hex) = line.strip_prefix(prefix) {
                    if !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()) {
                        self.learn_id(hex);
                    }
                }
            }
        }
    }

    fn normalize(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (address, placeholder) in &self.ports {
            text = text.replace(address, placeholder);
        }
        // Longest ids first, so an id that is a prefix of another is not
        // replaced inside it.
        let mut leases: Vec<(usize, &String)> = self.leases.iter().enumerate().collect();
        leases.sort_by_key(|(_, id)| std::cmp::Reverse(id.len()));
        for (index, id) in leases {
            text = replace_word(&text, id, &format!("<lease{}>", index + 1));
        }
        sort_attached_keys(&mask_remaining(&text))
    }

    fn record(&mut self, command: &str, ctl: &Ctl) {
        self.learn_keys(&ctl.stdout, &["mylock/", "myelection/"]);
        let mut block = format!("$ {}\n", self.normalize(command));
        block.push_str(&self.normalize(&ctl.stdout));
        if !block.ends_with('\n') {
            block.push('\n');
        }
        for line in self.normalize(&ctl.errors()).lines() {
            block.push_str(&format!("! {line}\n"));
        }
        match ctl.code {
            Some(0) => {}
            Some(code) => block.push_str(&format!("[exit {code}]\n")),
            None => block.push_str("[killed by a signal]\n"),
        }
        self.blocks.push(block);
    }

    fn note(&mut self, line: &str) {
        self.blocks.push(format!("# {line}\n"));
    }

    fn run(&mut self, cluster: &Cluster, args: &[&str]) -> Ctl {
        let ctl = cluster.etcdctl(args);
        self.record(&format!("etcdctl {}", args.join(" ")), &ctl);
        ctl
    }

    fn run_stdin(&mut self, cluster: &Cluster, args: &[&str], stdin: &str) -> Ctl {
        let ctl = cluster.etcdctl_stdin(args, stdin.as_bytes());
        let shown = stdin.trim_end().replace('\n', " | ");
        self.record(&format!("etcdctl {} <<< {shown}", args.join(" ")), &ctl);
        ctl
    }

    fn record_background(&mut self, background: &Background) {
        let ctl = background.output();
        self.record(&background.label, &ctl);
    }
}

/// Replaces `word` where it is not part of a longer hex/alphanumeric run.
fn replace_word(text: &str, word: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + word.len()..].chars().next();
        let bounded =
            !before.is_some_and(|c| c.is_ascii_alphanumeric()) && !after.is_some_and(|c| c.is_ascii_alphanumeric());
        out.push_str(&rest[..at]);
        out.push_str(if bounded { with } else { word });
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    out
}

/// `granted with TTL(60s), remaining(59s)` -> `remaining(<~TTL>)` when the
/// remaining time is within 3 s of the granted TTL.
fn mask_remaining(text: &str) -> String {
    text.lines()
        .map(|line| {
            let ttl = between(line, "TTL(", "s)");
            let remaining = between(line, "remaining(", "s)");
            match (ttl, remaining) {
                (Some(ttl), Some(remaining)) if remaining <= ttl && remaining + 3 >= ttl => {
                    line.replace(&format!("remaining({remaining}s)"), "remaining(<~TTL>)")
                }
                _ => line.to_string(),
            }
        })
        .map(|line| line + "\n")
        .collect::<String>()
        .trim_end_matches('\n')
        .to_string()
        + if text.ends_with('\n') { "\n" } else { "" }
}

fn between(line: &str, open: &str, close: &str) -> Option<i64> {
    let start = line.find(open)? + open.len();
    let end = line[start..].find(close)? + start;
    line[start..end].parse().ok()
}

/// The session: watch, lease, lock, elect. Returns the blocks.
fn run_session(kind: Kind) -> Vec<String> {
    let cluster = Cluster::start(kind, 3);
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}-coordination-", kind.label()))
        .tempdir()
        .expect("temp dir for etcdctl output");
    let mut t = Transcript::new(&cluster);
    let started = Instant::now();
    watch_steps(&cluster, dir.path(), &mut t);
    println!("{}: watch steps took {:?}", kind.label(), started.elapsed());
    let started = Instant::now();
    lease_steps(&cluster, &mut t);
    println!("{}: lease steps took {:?}", kind.label(), started.elapsed());
    let started = Instant::now();
    lock_steps(&cluster, dir.path(), &mut t);
    println!("{}: lock steps took {:?}", kind.label(), started.elapsed());
    let started = Instant::now();
    elect_steps(&cluster, dir.path(), &mut t);
    println!("{}: elect steps took {:?}", kind.label(), started.elapsed());
    t.blocks
}

fn ends_with_end(text: &str) -> bool {
    text.contains("\nend\n")
}

fn watch_steps(cluster: &Cluster, dir: &std::path::Path, t: &mut Transcript) {
    // A fresh cluster is at revision 1.
    let mut key = Background::spawn(cluster, dir, "watch-key", &["watch", "w/a"], false);
    let mut prefix = Background::spawn(cluster, dir, "watch-prefix", &["watch", "--prefix", "w/"], false);
    let mut prev = Background::spawn(cluster, dir, "watch-prev", &["watch", "--prev-kv", "w/a"], false);
    let mut interactive = Background::spawn(cluster, dir, "watch-i", &["watch", "-i"], true);
    // Two watches whose ranges do not overlap: etcdctl prints each watch
    // from its own goroutine, so two watches that see the same event print
    // their lines interleaved in any order (a flaky transcript for etcd and
    // zongheng alike).
    interactive.write_stdin("watch w/b\nwatch w/a\n");
    thread::sleep(WATCH_SETTLE);
    t.run(cluster, &["put", "w/a", "v1"]); // 2
    t.run(cluster, &["put", "w/b", "v1"]); // 3
    t.run(cluster, &["put", "w/a", "v2"]); // 4
    t.run(cluster, &["del", "w/b"]); // 5
    t.run_stdin(cluster, &["txn"], "\nput w/a v3\nput w/c v1\n\n\n"); // 6
    t.run(cluster, &["put", "w/a", "end"]); // 7
    for watcher in [&mut key, &mut prefix, &mut prev, &mut interactive] {
        let printed = watcher.wait_stdout(ends_with_end);
        watcher.stop();
        t.record_background(watcher);
        t.note(&format!("printed up to the last write in time: {printed}"));
    }
    // Replay from history.
    let mut replay = Background::spawn(
        cluster,
        dir,
        "watch-rev",
        &["watch", "--rev", "3", "--prefix", "w/"],
        false,
    );
    let printed = replay.wait_stdout(ends_with_end);
    replay.stop();
    t.record_background(&replay);
    t.note(&format!("replayed up to the last write in time: {printed}"));
    let mut replay_prev = Background::spawn(
        cluster,
        dir,
        "watch-rev-prev",
        &["watch", "--rev", "4", "--prev-kv", "w/a"],
        false,
    );
    let printed = replay_prev.wait_stdout(ends_with_end);
    replay_prev.stop();
    t.record_background(&replay_prev);
    t.note(&format!("replayed up to the last write in time: {printed}"));
    // A watch on a compacted revision is cancelled by the server.
    t.run(cluster, &["compaction", "5"]);
    let mut compacted = Background::spawn(cluster, dir, "watch-compacted", &["watch", "--rev", "3", "w/a"], false);
    let exited = compacted.wait_exit(OUTPUT_TIMEOUT);
    compacted.stop();
    t.record_background(&compacted);
    t.note(&format!("exited on its own: {exited}"));
    // At the compaction revision itself the history is still there.
    let mut at_compaction = Background::spawn(
        cluster,
        dir,
        "watch-at-compaction",
        &["watch", "--rev", "5", "--prefix", "w/"],
        false,
    );
    let printed = at_compaction.wait_stdout(ends_with_end);
    at_compaction.stop();
    t.record_background(&at_compaction);
    t.note(&format!("replayed up to the last write in time: {printed}"));
}

fn lease_steps(cluster: &Cluster, t: &mut Transcript) {
    let grant = t.run(cluster, &["lease", "grant", "60"]);
    let id = t.learn_lease(&grant);
    // Re-record so the id is masked in the grant line too.
    t.blocks.pop();
    t.record("etcdctl lease grant 60", &grant);
    let lease_flag = format!("--lease={id}");
    t.run(cluster, &["put", &lease_flag, "lk", "lv"]);
    t.run(cluster, &["put", &lease_flag, "lk2", "lv2"]);
    t.run(cluster, &["get", "lk"]);
    t.run(cluster, &["lease", "timetolive", &id]);
    t.run(cluster, &["lease", "timetolive", &id, "--keys"]);
    t.run(cluster, &["lease", "list"]);
    t.run(cluster, &["lease", "keep-alive", "--once", &id]);
    t.run(cluster, &["lease", "revoke", &id]);
    t.run(cluster, &["get", "lk"]);
    t.run(cluster, &["get", "--prefix", "lk"]);
    t.run(cluster, &["lease", "timetolive", &id]);
    t.run(cluster, &["lease", "keep-alive", "--once", &id]);
    t.run(cluster, &["lease", "revoke", &id]);
    t.run(cluster, &["lease", "revoke", "1234abcd"]);
    t.run(cluster, &["lease", "timetolive", "1234abcd"]);
    t.run(cluster, &["put", "--lease=1234abcd", "lk", "lv"]);
    t.run(cluster, &["lease", "list"]);
    // A short lease: etcd raises a TTL below its minimum (1.5 election
    // timeouts, rounded up to seconds: 2 s here) to that minimum.
    for ttl in ["1", "2"] {
        let grant = cluster.etcdctl(&["lease", "grant", ttl]);
        if grant.success() {
            t.learn_lease(&grant);
        }
        t.record(&format!("etcdctl lease grant {ttl}"), &grant);
        if !grant.success() {
            continue;
        }
        let id = t.leases.last().cloned().expect("just learned");
        let key = format!("short{ttl}");
        t.run(cluster, &["put", &format!("--lease={id}"), &key, "soon gone"]);
        let started = Instant::now();
        let gone = wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
            let get = cluster.etcdctl(&["get", &key, "--print-value-only"]);
            (get.success() && get.stdout.trim().is_empty()).then_some(())
        });
        let seconds = started.elapsed().as_secs_f64();
        t.note(&format!(
            "key {key} gone within 15 s: {} (within 1..6 s: {})",
            gone.is_some(),
            (0.5..6.0).contains(&seconds)
        ));
        println!("{key}: gone after {seconds:.1} s");
        t.run(cluster, &["lease", "timetolive", &id]);
    }
}

fn lock_steps(cluster: &Cluster, dir: &std::path::Path, t: &mut Transcript) {
    let mut first = Background::spawn(cluster, dir, "lock-1", &["lock", "mylock"], false);
    let holds = first.wait_stdout(|out| out.starts_with("mylock/"));
    t.note(&format!("first lock printed its key: {holds}"));
    let mut second = Background::spawn(cluster, dir, "lock-2", &["lock", "mylock"], false);
    thread::sleep(STILL_WAITING);
    t.note(&format!(
        "second lock printed nothing while the first holds: {}",
        second.stdout().is_empty()
    ));
    first.stop();
    t.record_background(&first);
    let acquired = second.wait_stdout(|out| out.starts_with("mylock/"));
    t.note(&format!(
        "second lock printed its key after the first stopped: {acquired}"
    ));
    second.stop();
    t.record_background(&second);
    t.run(cluster, &["lock", "mylock", "echo", "hi"]);
    t.run(cluster, &["get", "--prefix", "mylock", "--keys-only"]);
}

fn elect_steps(cluster: &Cluster, dir: &std::path::Path, t: &mut Transcript) {
    let has_line = |value: &'static str| move |out: &str| out.lines().any(|line| line == value);
    let mut p1 = Background::spawn(cluster, dir, "elect-p1", &["elect", "myelection", "p1"], false);
    let elected = p1.wait_stdout(has_line("p1"));
    t.note(&format!("p1 printed its proposal: {elected}"));
    let mut observer = Background::spawn(cluster, dir, "elect-observe", &["elect", "-l", "myelection"], false);
    let sees_p1 = observer.wait_stdout(has_line("p1"));
    t.note(&format!("observer sees p1: {sees_p1}"));
    let mut p2 = Background::spawn(cluster, dir, "elect-p2", &["elect", "myelection", "p2"], false);
    thread::sleep(STILL_WAITING);
    t.note(&format!(
        "p2 printed nothing while p1 leads: {}",
        p2.stdout().is_empty()
    ));
    p1.stop();
    t.record_background(&p1);
    let p2_elected = p2.wait_stdout(has_line("p2"));
    t.note(&format!("p2 printed its proposal after p1 stopped: {p2_elected}"));
    let sees_p2 = observer.wait_stdout(has_line("p2"));
    t.note(&format!("observer sees p2: {sees_p2}"));
    p2.stop();
    t.record_background(&p2);
    observer.stop();
    t.record_background(&observer);
}

/// Sorts the list in `attached keys([...])`: etcd prints a lease's keys in
/// Go map order, which changes from run to run.
fn sort_attached_keys(text: &str) -> String {
    const OPEN: &str = "attached keys([";
    let Some(start) = text.find(OPEN).map(|at| at + OPEN.len()) else {
        return text.to_string();
    };
    let Some(length) = text[start..].find("])") else {
        return text.to_string();
    };
    let mut keys: Vec<&str> = text[start..start + length].split(' ').collect();
    keys.sort_unstable();
    format!("{}{}{}", &text[..start], keys.join(" "), &text[start + length..])
}

/// Writes a transcript where a person can read it next to the other one.
fn save_transcript(kind: Kind, blocks: &[String]) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("etcdctl_coordination");
    let path = dir.join(format!("{}.transcript", kind.label()));
    let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, blocks.concat()));
    match written {
        Ok(()) => println!("{} transcript: {}", kind.label(), path.display()),
        Err(error) => println!("cannot write {}: {error}", path.display()),
    }
}

/// Things the reference transcript must show; if etcd does not print them,
/// the script (or its timing), not zongheng, is wrong.
fn check_reference(blocks: &[String]) {
    let all = blocks.concat();
    for expected in [
        "! watch was canceled (etcdserver: mvcc: required revision has been compacted)",
        "attached keys([lk lk2])",
        "lease <lease1> already expired",
        "! Error: etcdserver: requested lease not found",
        "mylock/<lease5>",
        "\nhi\n",
        "myelection/<lease7>\np2\n",
    ] {
        assert!(
            all.contains(expected),
            "reference transcript lacks {expected:?}:\n{all}"
        );
    }
    assert!(
        !all.contains(": false"),
        "a wait in the script failed against etcd:\n{all}"
    );
}

#[test]
fn etcdctl_coordination_matches_etcd() {
    if !etcdctl_available() {
        return;
    }
    let started = Instant::now();
    let reference = if etcd_available() {
        let blocks = run_session(Kind::Etcd);
        save_transcript(Kind::Etcd, &blocks);
        check_reference(&blocks);
        println!("etcd session took {:?}", started.elapsed());
        Some(blocks)
    } else {
        None
    };
    if !zongheng_enabled() {
        return;
    }
    let started = Instant::now();
    let ours = run_session(Kind::Zongheng);
    save_transcript(Kind::Zongheng, &ours);
    println!("zongheng session took {:?}", started.elapsed());
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
fn normalisation_masks_what_differs() {
    assert_eq!(
        mask_remaining("lease 1 granted with TTL(60s), remaining(58s)\n"),
        "lease 1 granted with TTL(60s), remaining(<~TTL>)\n"
    );
    assert_eq!(
        mask_remaining("lease 1 granted with TTL(60s), remaining(30s)"),
        "lease 1 granted with TTL(60s), remaining(30s)"
    );
    assert_eq!(replace_word("mylock/ab12 ab123", "ab12", "<l>"), "mylock/<l> ab123");
    assert_eq!(
        sort_attached_keys("TTL(60s), attached keys([lk2 lk])\n"),
        "TTL(60s), attached keys([lk lk2])\n"
    );
}
