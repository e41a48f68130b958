//! What the two processes share: Ballista logs through the `log` crate; this prints its
//! records on stderr, one line each, for the script to keep next to its own output.

use std::io::Write as _;

struct StderrLog {
    level: log::LevelFilter,
}

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let _ = writeln!(std::io::stderr().lock(), "{} {:5} {}: {}", now(), record.level(), record.target(), record.args());
        }
    }

    fn flush(&self) {}
}

/// Seconds since the epoch with milliseconds: enough to line the two executors' logs up.
fn now() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", t.as_secs(), t.subsec_millis())
}

/// `level` as `RUST_LOG` spells it (`info`, `debug`, …); unknown words mean `info`.
pub fn init_log(level: &str) {
    let level = level.parse().unwrap_or(log::LevelFilter::Info);
    // `set_logger` wants a `'static` logger (`set_boxed_logger` needs log's `std` feature,
    // which would rebuild every crate that logs); one leaked box per process.
    if log::set_logger(Box::leak(Box::new(StderrLog { level }))).is_ok() {
        log::set_max_level(level);
    }
}
