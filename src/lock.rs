//! One run per pipeline output root and run date at a time.
//!
//! A run takes `<output_root>/_segflow/locks/run_date=<D>.lock` (created exclusively) before its
//! first stage and removes it when it ends, however it ends. Runs of other run dates take other
//! locks and proceed in parallel. A second run of the same date fails at once, naming the
//! holder's run id. A lock whose holder was on this host and whose process is gone (a killed
//! run) is taken over with a warning, so the next scheduled run is not blocked; a lock held by
//! a live process, or by another host (whose processes cannot be seen from here), is reported
//! with how to clear it.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    pub run_id: String,
    pub pid: u32,
    pub host: String,
    pub started_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "run date {run_date} is being run by run {} (pid {} on this host, since {}); wait for it to finish. If that process is not a segflow run, delete {}",
        holder.run_id, holder.pid, holder.started_at, path.display()
    )]
    HeldHere { run_date: String, holder: Holder, path: PathBuf },
    #[error(
        "run date {run_date} is being run by run {} on host {} (pid {}, since {}); this host cannot tell whether it is still alive. If no run is active there, delete {}",
        holder.run_id, holder.host, holder.pid, holder.started_at, path.display()
    )]
    HeldElsewhere { run_date: String, holder: Holder, path: PathBuf },
    #[error("cannot take the run lock {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// The lock of one run; released when dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    run_id: String,
    /// The dead run whose lock this one took over: its staged files are to be removed.
    pub taken_over: Option<Holder>,
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "unknown-host".to_string())
}

/// Whether a process of this host is alive. Where that cannot be known, it is assumed alive
/// (a lock is never taken from a run that might still be writing).
fn alive(pid: u32) -> bool {
    let proc_root = Path::new("/proc");
    if !proc_root.join("self").exists() {
        return true;
    }
    proc_root.join(pid.to_string()).exists()
}

impl RunLock {
    pub fn acquire(output_root: &Path, run_date: &str, run_id: &str) -> Result<RunLock, LockError> {
        let dir = output_root.join(crate::sink::SEGFLOW_DIR).join("locks");
        let path = dir.join(format!("run_date={run_date}.lock"));
        let io = |source| LockError::Io { path: path.clone(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let me = Holder { run_id: run_id.to_string(), pid: std::process::id(), host: host_name(), started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true) };
        // The holder's record is written to a file of its own, then hard-linked to the lock
        // path: the link either fails (someone holds it) or appears complete, never half-written.
        let text = serde_json::to_vec_pretty(&me).unwrap_or_default();
        let mine = dir.join(format!(".run_date={run_date}.{}.{}", std::process::id(), crate::sink::file_safe(run_id)));
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&mine).map_err(io)?;
        file.write_all(&text).and_then(|_| file.sync_all()).map_err(io)?;
        drop(file);
        let result = (|| {
            let mut taken_over = None;
            // Two attempts: the second after taking over a lock left by a dead process.
            for _ in 0..2 {
                match std::fs::hard_link(&mine, &path) {
                    Ok(()) => return Ok(RunLock { path: path.clone(), run_id: run_id.to_string(), taken_over }),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let holder: Holder = std::fs::read(&path)
                            .ok()
                            .and_then(|b| serde_json::from_slice(&b).ok())
                            .ok_or_else(|| io(std::io::Error::other("the lock file exists but cannot be read; if no run is active, delete it")))?;
                        if holder.host != me.host {
                            return Err(LockError::HeldElsewhere { run_date: run_date.to_string(), holder, path: path.clone() });
                        }
                        if alive(holder.pid) {
                            return Err(LockError::HeldHere { run_date: run_date.to_string(), holder, path: path.clone() });
                        }
                        tracing::warn!(
                            holder_run_id = %holder.run_id,
                            holder_pid = holder.pid,
                            since = %holder.started_at,
                            "run date {run_date} was locked by a run whose process is gone (killed?); taking the lock over"
                        );
                        let _ = std::fs::remove_file(&path);
                        taken_over = Some(holder);
                    }
                    Err(e) => return Err(io(e)),
                }
            }
            Err(io(std::io::Error::other("another run took the lock at the same moment")))
        })();
        let _ = std::fs::remove_file(&mine);
        result
    }
}

/// The run ids of every lock under `output_root` whose holder may still be running (alive on
/// this host, or on another host, which cannot be checked from here).
pub fn possibly_running(output_root: &Path) -> Vec<String> {
    let dir = output_root.join(crate::sink::SEGFLOW_DIR).join("locks");
    let here = host_name();
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".lock"))
        .filter_map(|e| serde_json::from_slice::<Holder>(&std::fs::read(e.path()).ok()?).ok())
        .filter(|h| h.host != here || alive(h.pid))
        .map(|h| h.run_id)
        .collect()
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Only our own lock: never one a later run took over.
        let ours = std::fs::read(&self.path).ok().and_then(|b| serde_json::from_slice::<Holder>(&b).ok()).is_some_and(|h| h.run_id == self.run_id && h.pid == std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
