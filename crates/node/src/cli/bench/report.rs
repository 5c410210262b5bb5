//! What a bench run recorded, and the report made of it: latency histograms
//! (HDR, microseconds), errors by kind, counters, and the text and JSON
//! renderings. Field names of [`Report`] are a stable interface (scripts and
//! `bench/compare.sh` read them); a change that renames or removes one bumps
//! [`REPORT_SCHEMA`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::client::ServerFailure;

/// The version of the JSON report's layout.
pub const REPORT_SCHEMA: &str = "zongheng-bench/1";
/// Highest latency a histogram holds: one hour, in microseconds. Longer
/// ones (impossible under the command timeout's limit) are clamped to it.
const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant decimal digits kept per recorded latency.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Longest message kept per error kind.
const ERROR_MESSAGE_CHARS_MAX: usize = 120;
/// The first histogram bucket's upper bound, in microseconds; each next
/// bucket doubles it.
const BUCKET_US_FIRST: u64 = 100;
/// Widest bar of the text histogram, in characters.
const BAR_CHARS_MAX: usize = 40;

/// One failed operation: the gRPC code (or `Timeout`, `Missing`, ...) and
/// the message with numbers taken out, so one kind counts as one line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OpError {
    pub code: String,
    pub message: String,
}

impl OpError {
    pub fn from_status(status: &tonic::Status) -> OpError {
        let failure = ServerFailure::from_status(status);
        let code = match &failure.zongheng_code {
            Some(zongheng) => format!("{:?} {zongheng}", failure.code),
            None => format!("{:?}", failure.code),
        };
        OpError::new(code, &failure.message)
    }

    pub fn timeout(timeout: Duration) -> OpError {
        OpError::new(
            "Timeout".to_string(),
            &format!("no answer within --command-timeout {} ms", timeout.as_millis()),
        )
    }

    pub fn new(code: String, message: &str) -> OpError {
        OpError {
            code,
            message: message_class(message),
        }
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A message with each run of digits (and of hex digits next to them, as in
/// IDs) replaced by `N`, cut to a bounded length.
fn message_class(message: &str) -> String {
    let mut class = String::new();
    for word in message.split_inclusive(|c: char| !c.is_ascii_alphanumeric()) {
        let (body, tail) = match word.char_indices().last() {
            Some((at, last)) if !last.is_ascii_alphanumeric() => (&word[..at], &word[at..]),
            _ => (word, ""),
        };
        let numeric = body.chars().any(|c| c.is_ascii_digit()) && body.chars().all(|c| c.is_ascii_hexdigit());
        class.push_str(if numeric { "N" } else { body });
        class.push_str(tail);
    }
    if class.chars().count() > ERROR_MESSAGE_CHARS_MAX {
        class = class.chars().take(ERROR_MESSAGE_CHARS_MAX).collect();
        class.push('…');
    }
    class
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS).expect("constant histogram bounds are valid")
}

fn micros(latency: Duration) -> u64 {
    (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX)
}

/// What one client (or a whole run, once merged) recorded.
pub struct Recorder {
    /// Latency of each successful operation, in microseconds.
    pub latency: Histogram<u64>,
    pub ops: u64,
    pub errors: BTreeMap<OpError, u64>,
    /// Latencies of parts of an operation (`grant`, `keepalive`, ...) or of
    /// other events (`delivery`), by name.
    pub phases: BTreeMap<String, Histogram<u64>>,
    pub counters: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            latency: new_histogram(),
            ops: 0,
            errors: BTreeMap::new(),
            phases: BTreeMap::new(),
            counters: BTreeMap::new(),
        }
    }

    /// One operation's outcome.
    pub fn record(&mut self, latency: Duration, result: Result<(), OpError>) {
        match result {
            Ok(()) => {
                self.ops += 1;
                self.latency.saturating_record(micros(latency));
            }
            Err(error) => self.error(error),
        }
    }

    /// A headline latency without an operation of its own (a watch fan-out
    /// completes a put that the putter already counted).
    pub fn latency_only(&mut self, latency: Duration) {
        self.latency.saturating_record(micros(latency));
    }

    pub fn error(&mut self, error: OpError) {
        self.error_count(error, 1);
    }

    pub fn error_count(&mut self, error: OpError, count: u64) {
        *self.errors.entry(error).or_insert(0) += count;
    }

    /// A latency of a named phase.
    pub fn phase(&mut self, name: &str, latency: Duration) {
        self.phases
            .entry(name.to_string())
            .or_insert_with(new_histogram)
            .saturating_record(micros(latency));
    }

    pub fn count(&mut self, name: &str, by: u64) {
        *self.counters.entry(name.to_string()).or_insert(0) += by;
    }

    /// Adds another recorder's phases, counters and errors (not its ops).
    pub fn merge_extra(&mut self, other: Recorder) {
        for (name, histogram) in other.phases {
            self.phases
                .entry(name)
                .or_insert_with(new_histogram)
                .add(histogram)
                .expect("histograms with equal bounds always merge");
        }
        for (name, count) in other.counters {
            self.count(&name, count);
        }
        for (error, count) in other.errors {
            self.error_count(error, count);
        }
    }

    /// Adds everything another recorder holds.
    pub fn merge(&mut self, other: Recorder) {
        self.ops += other.ops;
        self.latency
            .add(&other.latency)
            .expect("histograms with equal bounds always merge");
        let Recorder {
            phases,
            counters,
            errors,
            ..
        } = other;
        self.merge_extra(Recorder {
            latency: new_histogram(),
            ops: 0,
            errors,
            phases,
            counters,
        });
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1_000.0
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary {
                count: 0,
                min: 0.0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                max: 0.0,
            };
        }
        LatencySummary {
            count: histogram.len(),
            min: ms(histogram.min()),
            mean: histogram.mean().round() / 1_000.0,
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p99_9: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// One histogram bucket: operations with latency in (previous le_ms, le_ms].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    pub le_ms: f64,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorCount {
    /// The gRPC code (`Unavailable`, with zongheng's `ZH_...` code after it
    /// when the server sent one), or `Timeout` (no answer within
    /// --command-timeout) or `Missing` (watch events never delivered).
    pub code: String,
    /// The message, numbers replaced by `N`.
    pub message: String,
    pub count: u64,
}

/// The result of one run. Field names are stable; see [`REPORT_SCHEMA`].
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub scenario: String,
    /// The endpoints the connections went to.
    pub endpoints: Vec<String>,
    /// Every setting that shapes the load (clients, conns, sizes, ...).
    pub params: BTreeMap<String, serde_json::Value>,
    /// `--total` (or the scenario's default), if the run was bounded by count.
    pub requested_total: Option<u64>,
    /// `--duration` in seconds, if the run was bounded by time.
    pub requested_duration_s: Option<f64>,
    /// Operations that succeeded.
    pub ops: u64,
    /// Operations that failed, plus missing watch events.
    pub errors_total: u64,
    /// Length of the measured phase (after connecting and prefilling).
    pub elapsed_s: f64,
    /// `ops / elapsed_s`.
    pub ops_per_s: f64,
    /// Latency of successful operations (for `watch`: from a put's send to
    /// its delivery to the last of the watchers).
    pub latency_ms: LatencySummary,
    /// Operations per latency bucket, buckets doubling from 0.1 ms.
    pub histogram: Vec<Bucket>,
    /// Errors by kind, most frequent first.
    pub errors: Vec<ErrorCount>,
    /// Latencies of parts of operations (`grant`, `keepalive`, `revoke`;
    /// `put`, `delivery`; `read`, `write`).
    pub phases: BTreeMap<String, LatencySummary>,
    /// Scenario counters (`txn_conflicts`, `events_expected`, ...).
    pub counters: BTreeMap<String, u64>,
}

impl Report {
    pub fn new(
        scenario: &str,
        endpoints: Vec<String>,
        params: BTreeMap<String, serde_json::Value>,
        requested_total: Option<u64>,
        requested_duration: Option<Duration>,
        recorder: Recorder,
        elapsed: Duration,
    ) -> Report {
        let elapsed_s = elapsed.as_secs_f64().max(1e-9);
        let mut errors: Vec<ErrorCount> = recorder
            .errors
            .iter()
            .map(|(error, count)| ErrorCount {
                code: error.code.clone(),
                message: error.message.clone(),
                count: *count,
            })
            .collect();
        errors.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.code.cmp(&b.code)));
        let histogram = if recorder.latency.is_empty() {
            Vec::new()
        } else {
            recorder
                .latency
                .iter_log(BUCKET_US_FIRST, 2.0)
                .map(|bucket| Bucket {
                    le_ms: ms(bucket.value_iterated_to()),
                    count: bucket.count_since_last_iteration(),
                })
                .collect()
        };
        Report {
            schema: REPORT_SCHEMA,
            scenario: scenario.to_string(),
            endpoints,
            params,
            requested_total,
            requested_duration_s: requested_duration.map(|duration| duration.as_secs_f64()),
            ops: recorder.ops,
            errors_total: errors.iter().map(|error| error.count).sum(),
            elapsed_s: (elapsed_s * 1_000.0).round() / 1_000.0,
            ops_per_s: (recorder.ops as f64 / elapsed_s * 10.0).round() / 10.0,
            latency_ms: LatencySummary::of(&recorder.latency),
            histogram,
            errors,
            phases: recorder
                .phases
                .iter()
                .map(|(name, histogram)| (name.clone(), LatencySummary::of(histogram)))
                .collect(),
            counters: recorder.counters,
        }
    }

    /// The report for people, in the spirit of etcd's benchmark output.
    pub fn render_text(&self) -> String {
        let mut text = String::new();
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        let _ = writeln!(text, "Scenario: {} ({})", self.scenario, params.join(" "));
        let _ = writeln!(text, "Endpoints: {}", self.endpoints.join(","));
        let _ = writeln!(
            text,
            "Summary: {} ops in {:.3} s: {:.1} ops/s, {} errors",
            self.ops, self.elapsed_s, self.ops_per_s, self.errors_total
        );
        let line = |name: &str, latency: &LatencySummary| {
            format!(
                "  {name:<10} p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3}, n {})\n",
                latency.p50, latency.p90, latency.p99, latency.p99_9, latency.max, latency.mean, latency.count
            )
        };
        text.push_str("Latency (ms):\n");
        text.push_str(&line(&self.scenario, &self.latency_ms));
        for (name, latency) in &self.phases {
            text.push_str(&line(name, latency));
        }
        if !self.histogram.is_empty() {
            text.push_str("Histogram (ms, operations with latency up to):\n");
            let widest = self
                .histogram
                .iter()
                .map(|bucket| bucket.count)
                .max()
                .unwrap_or(1)
                .max(1);
            for bucket in &self.histogram {
                let bar = (bucket.count as f64 / widest as f64 * BAR_CHARS_MAX as f64).ceil() as usize;
                let _ = writeln!(
                    text,
                    "  {:>10.1} [{:>8}] {}",
                    bucket.le_ms,
                    bucket.count,
                    "∎".repeat(bar)
                );
            }
        }
        if !self.counters.is_empty() {
            text.push_str("Counters:\n");
            for (name, count) in &self.counters {
                let _ = writeln!(text, "  {name}: {count}");
            }
        }
        if !self.errors.is_empty() {
            text.push_str("Errors:\n");
            for error in &self.errors {
                let _ = writeln!(text, "  {:>8}  {}: {}", error.count, error.code, error.message);
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_lose_their_numbers() {
        assert_eq!(
            message_class("etcdserver: requested lease not found 7587868a2f2c1b0d"),
            "etcdserver: requested lease not found N"
        );
        assert_eq!(
            message_class("no answer within --command-timeout 5000 ms"),
            "no answer within --command-timeout N ms"
        );
        assert_eq!(
            message_class("leader is n2 at 127.0.0.1:2389"),
            "leader is n2 at N.N.N.N:N"
        );
        assert_eq!(message_class("deadbeef but not face"), "deadbeef but not face");
        assert!(message_class(&"x".repeat(500)).chars().count() <= ERROR_MESSAGE_CHARS_MAX + 1);
    }

    #[test]
    fn reports_order_percentiles_and_count_errors() {
        let mut recorder = Recorder::new();
        for micros in 1..=1_000u64 {
            recorder.record(Duration::from_micros(micros * 10), Ok(()));
        }
        recorder.record(Duration::from_millis(1), Err(OpError::new("Unavailable".into(), "x 1")));
        recorder.record(Duration::from_millis(1), Err(OpError::new("Unavailable".into(), "x 2")));
        let mut other = Recorder::new();
        other.phase("grant", Duration::from_millis(2));
        other.count("txn_conflicts", 3);
        recorder.merge(other);
        let report = Report::new(
            "put",
            vec!["a:1".into()],
            BTreeMap::new(),
            Some(1_002),
            None,
            recorder,
            Duration::from_secs(2),
        );
        assert_eq!(report.ops, 1_000);
        assert_eq!(report.errors_total, 2);
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert_eq!(report.errors[0].message, "x N");
        assert_eq!(report.ops_per_s, 500.0);
        let latency = &report.latency_ms;
        assert!(latency.min <= latency.p50 && latency.p50 <= latency.p90);
        assert!(latency.p90 <= latency.p99 && latency.p99 <= latency.p99_9 && latency.p99_9 <= latency.max);
        assert!((latency.p50 - 5.0).abs() < 0.01, "{latency:?}");
        assert_eq!(report.histogram.iter().map(|bucket| bucket.count).sum::<u64>(), 1_000);
        assert_eq!(report.phases["grant"].count, 1);
        assert_eq!(report.counters["txn_conflicts"], 3);
        let text = report.render_text();
        assert!(text.contains("1000 ops in 2.000 s: 500.0 ops/s, 2 errors"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        for field in [
            "schema",
            "ops",
            "errors_total",
            "ops_per_s",
            "latency_ms",
            "histogram",
            "errors",
        ] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
    }
}
