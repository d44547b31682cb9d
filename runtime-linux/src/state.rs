//! The on-disk state of containers under the runtime root (default `/run/wharf`):
//! `<root>/<id>/state.json` (written once at create), `exec.fifo` (present until
//! start), and `exit.json` (written by whoever reaped the process). The state outlives
//! the program that created the container, which is how a restarted program re-adopts it.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;

/// Default runtime root.
pub const DEFAULT_ROOT: &str = "/run/wharf";

/// OCI container status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being set up (reported to createRuntime/createContainer hooks only).
    Creating,
    /// Created, waiting for start.
    Created,
    /// The user program runs.
    Running,
    /// Frozen.
    Paused,
    /// The process has exited.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// How a container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, or 128 + signal.
    pub code: i32,
    /// The killing signal, if any.
    pub signal: Option<i32>,
    /// The cgroup recorded an OOM kill.
    pub oom_killed: bool,
    /// Unix time of the exit, nanoseconds.
    pub finished_unix_nanos: u128,
}

/// What `create` records about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Root filesystem on the host.
    pub rootfs: PathBuf,
    /// Host pid of the container's init process.
    pub pid: i32,
    /// Its start time in clock ticks since boot (detects pid reuse).
    pub pid_start: u64,
    /// Unix time of creation, nanoseconds.
    pub created_unix_nanos: u128,
    /// cgroup directories.
    pub cgroup: Cgroup,
    /// The spec's annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// Per-container directories to remove at delete (overlay upper/work).
    #[serde(default)]
    pub owned_dirs: Vec<PathBuf>,
    /// Poststop hooks, run at delete.
    #[serde(default)]
    pub poststop: Vec<oci_spec::runtime::Hook>,
    /// Poststart hooks, run after start.
    #[serde(default)]
    pub poststart: Vec<oci_spec::runtime::Hook>,
}

/// Paths of one container's state.
#[derive(Debug, Clone)]
pub struct Dir {
    /// `<root>/<id>`.
    pub path: PathBuf,
}

impl Dir {
    /// The state directory of `id` under `root`.
    pub fn new(root: &Path, id: &str) -> Dir {
        Dir {
            path: root.join(id),
        }
    }
    /// `state.json`.
    pub fn state(&self) -> PathBuf {
        self.path.join("state.json")
    }
    /// `exec.fifo`.
    pub fn fifo(&self) -> PathBuf {
        self.path.join("exec.fifo")
    }
    /// `exit.json`.
    pub fn exit(&self) -> PathBuf {
        self.path.join("exit.json")
    }
    /// `creating`: made exclusively by a create that takes over a directory holding a
    /// bundle, and removed when that create ends.
    pub fn claim(&self) -> PathBuf {
        self.path.join("creating")
    }
}

/// Writes `value` as JSON to `path` atomically (temp file + rename).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(value).map_err(io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

/// Reads JSON from `path`.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<T> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// Process state from `/proc/<pid>/stat`: (state letter, start time in ticks).
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    let state = f.next()?.chars().next()?;
    // After the state come 18 fields before starttime (field 22 of the whole line).
    let start = f.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// True when `pid` is the same process that was recorded and has not exited.
pub fn alive(pid: i32, start: u64) -> bool {
    pid > 0 && matches!(proc_stat(pid), Some((st, s)) if s == start && st != 'Z' && st != 'X')
}

/// Nanoseconds since the Unix epoch.
pub fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// RFC 3339 UTC with nanoseconds, as in the OCI state and CRI logs.
pub fn rfc3339(nanos: u128) -> String {
    let secs = (nanos / 1_000_000_000) as i64;
    let frac = (nanos % 1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            rfc3339(1_795_000_000_000_000_000),
            "2026-11-18T11:06:40.000000000Z"
        );
    }

    #[test]
    fn own_process_is_alive() {
        let pid = std::process::id() as i32;
        let (_, start) = proc_stat(pid).unwrap();
        assert!(alive(pid, start));
        assert!(!alive(pid, start + 1));
    }
}
