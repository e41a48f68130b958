//! A progress bar on a terminal, stage by stage; nothing at all anywhere else.
//!
//! Enabled only when stderr is a terminal and the log format is text: an Airflow task log,
//! a file or a pipe gets plain log lines and no control codes. Log lines go through
//! [`LogWriter`], which lifts the bar while a line is printed, so the two never tangle.

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static ENABLED: OnceLock<bool> = OnceLock::new();
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Called once at start-up.
pub fn enable(on: bool) {
    let _ = ENABLED.set(on);
}

fn enabled() -> bool {
    ENABLED.get().copied().unwrap_or(false)
}

fn with_bar(f: impl FnOnce(&ProgressBar)) {
    if let Ok(guard) = BAR.lock()
        && let Some(bar) = guard.as_ref()
    {
        f(bar);
    }
}

/// A bar over `steps` steps (the stages, then writing the tables).
pub fn begin(steps: u64) {
    if !enabled() {
        return;
    }
    let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(120));
    if let Ok(mut guard) = BAR.lock() {
        *guard = Some(bar);
    }
}

/// What is running now.
pub fn step(message: &str) {
    with_bar(|bar| bar.set_message(message.to_string()));
}

/// One step done.
pub fn advance() {
    with_bar(|bar| bar.inc(1));
}

/// The run is over: the bar goes away.
pub fn end() {
    if let Ok(mut guard) = BAR.lock()
        && let Some(bar) = guard.take()
    {
        bar.finish_and_clear();
    }
}

/// stderr for the log, printing above the bar when there is one.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = BAR.lock().ok().and_then(|g| g.clone());
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf)).map(|_| buf.len()),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
