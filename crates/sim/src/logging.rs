//! Node logs in a simulation: with `RUST_LOG` set, every `tracing` event of
//! the simulated nodes goes to standard error, stamped with simulated time
//! (seconds since the start), so a replayed seed can be read next to its trace.

/// Log lines stamped with simulated time.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(elapsed) => write!(w, "{:>9.3}s", elapsed.as_secs_f64()),
            None => write!(w, "{:>10}", "-"),
        }
    }
}

/// Install the subscriber when `RUST_LOG` is set (once; later calls do nothing).
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_timer(SimTime)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .try_init();
    }
}
