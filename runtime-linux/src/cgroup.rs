//! cgroups for v1, v2 and hybrid hosts.
//!
//! A container's cgroup is one directory per v1 hierarchy (memory, cpu, cpuacct, cpuset,
//! pids, freezer, blkio, devices) plus, when the host mounts cgroup2 (pure v2, or hybrid
//! at `/sys/fs/cgroup/unified`), one directory in the unified tree. The paths are stored
//! in the container's state so a restarted program finds them again.
//! This module owns those directories and nothing outside them.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where cgroup filesystems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

const V1_CONTROLLERS: [&str; 8] = [
    "memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "blkio", "devices",
];

/// Device rules every container gets: mknod of any node, and the default devices
/// (null, zero, full, random, urandom, tty, console, ptmx, pts).
const DEFAULT_ALLOWED_DEVICES: [&str; 11] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

/// The cgroup directories of one container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cgroup {
    /// v1 controller name → directory.
    pub v1: BTreeMap<String, PathBuf>,
    /// The directory in the cgroup2 tree, if the host mounts one.
    pub unified: Option<PathBuf>,
    /// True when cgroup2 is the only hierarchy (resources are applied there).
    pub pure_v2: bool,
    /// v1 controllers co-mounted with an earlier one (e.g. `cpuacct` with `cpu`): same
    /// directory, so it is created, joined and removed once.
    #[serde(default)]
    pub comounted: Vec<String>,
}

/// Resource usage read from the cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes (`u64::MAX` when unlimited).
    pub memory_limit_bytes: u64,
    /// CPU time used, nanoseconds.
    pub cpu_ns: u64,
    /// Processes in the cgroup.
    pub pids: u64,
    /// OOM kills observed in the cgroup.
    pub oom_kills: u64,
    /// Inactive file cache, bytes (usage minus this is the working set).
    pub inactive_file_bytes: u64,
}

/// Which cgroup layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Only cgroup2 at `/sys/fs/cgroup`.
    V2,
    /// v1 controllers; `true` when cgroup2 is also mounted at `/sys/fs/cgroup/unified`.
    V1 {
        /// Hybrid: cgroup2 also present.
        hybrid: bool,
    },
}

/// Detects the host's layout.
pub fn layout() -> Layout {
    if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
        Layout::V2
    } else {
        Layout::V1 {
            hybrid: Path::new(CGROUP_ROOT)
                .join("unified/cgroup.controllers")
                .exists(),
        }
    }
}

fn write(id: &str, path: &Path, value: &str, operation: &'static str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| Error::Cgroup {
        id: id.into(),
        path: path.into(),
        operation,
        source,
    })
}

fn read_u64(path: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    if s == "max" {
        Some(u64::MAX)
    } else {
        s.parse().ok()
    }
}

fn keyed(path: &Path, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The relative cgroup path of container `id`: the spec's `cgroupsPath`, else `/wharf/<id>`.
pub fn relative_path(id: &str, spec_path: Option<&Path>) -> PathBuf {
    match spec_path {
        Some(p) => p.strip_prefix("/").unwrap_or(p).to_path_buf(),
        None => PathBuf::from("wharf").join(id),
    }
}

impl Cgroup {
    /// Creates the container's cgroup directories and applies `resources`. On error,
    /// everything created is removed again.
    pub fn create(id: &str, relative: &Path, resources: Option<&LinuxResources>) -> Result<Cgroup> {
        let mut cg = Cgroup::default();
        let root = Path::new(CGROUP_ROOT);
        match layout() {
            Layout::V2 => {
                cg.pure_v2 = true;
                cg.unified = Some(root.join(relative));
            }
            Layout::V1 { hybrid } => {
                let mut seen: Vec<PathBuf> = Vec::new();
                for c in V1_CONTROLLERS {
                    let base = root.join(c);
                    if !base.is_dir() {
                        continue;
                    }
                    // Co-mounted controllers appear as symlinks (cpu -> cpu,cpuacct).
                    let real = match std::fs::symlink_metadata(&base) {
                        Ok(m) if m.file_type().is_symlink() => {
                            base.canonicalize().unwrap_or(base.clone())
                        }
                        _ => base.clone(),
                    };
                    if seen.contains(&real) {
                        cg.comounted.push(c.to_string());
                    }
                    seen.push(real);
                    cg.v1.insert(c.to_string(), base.join(relative));
                }
                if hybrid {
                    cg.unified = Some(root.join("unified").join(relative));
                }
            }
        }
        let result = cg.make_dirs(id).and_then(|()| match resources {
            Some(r) => cg.apply(id, r),
            None => Ok(()),
        });
        match result {
            Ok(()) => Ok(cg),
            Err(e) => {
                let _ = cg.destroy();
                Err(e)
            }
        }
    }

    fn dirs(&self) -> Vec<&Path> {
        self.v1
            .iter()
            .filter(|(c, _)| !self.comounted.contains(c))
            .map(|(_, p)| p.as_path())
            .chain(self.unified.as_deref())
            .collect()
    }

    fn make_dirs(&self, id: &str) -> Result<()> {
        for dir in self.dirs() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Cgroup {
                id: id.into(),
                path: dir.into(),
                operation: "create",
                source,
            })?;
        }
        if let Some(cpuset) = self.v1.get("cpuset") {
            // A new v1 cpuset is empty; it must inherit cpus and mems from its ancestors.
            fill_cpuset(id, cpuset)?;
        }
        if self.pure_v2 {
            if let Some(u) = &self.unified {
                enable_v2_controllers(u);
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a new process must write its pid into.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Moves `pid` into every directory of this cgroup.
    pub fn add(&self, id: &str, pid: i32) -> Result<()> {
        for f in self.procs_files() {
            write(id, &f, &pid.to_string(), "add process")?;
        }
        Ok(())
    }

    /// Applies (or updates) resource limits.
    pub fn apply(&self, id: &str, r: &LinuxResources) -> Result<()> {
        if self.pure_v2 {
            self.apply_v2(id, r)
        } else {
            self.apply_v1(id, r)
        }
    }

    fn apply_v1(&self, id: &str, r: &LinuxResources) -> Result<()> {
        if let (Some(m), Some(dir)) = (r.memory(), self.v1.get("memory")) {
            if let Some(limit) = m.limit() {
                let swap_file = dir.join("memory.memsw.limit_in_bytes");
                let set_limit = || {
                    write(
                        id,
                        &dir.join("memory.limit_in_bytes"),
                        &limit.to_string(),
                        "set memory limit",
                    )
                };
                match m.swap().filter(|_| swap_file.exists()) {
                    // memsw must stay ≥ the memory limit: order the two writes accordingly.
                    Some(swap) => {
                        if set_limit().is_err() {
                            write(id, &swap_file, &swap.to_string(), "set memory+swap limit")?;
                            set_limit()?;
                        } else {
                            write(id, &swap_file, &swap.to_string(), "set memory+swap limit")?;
                        }
                    }
                    None => set_limit()?,
                }
            }
            if let Some(res) = m.reservation() {
                write(
                    id,
                    &dir.join("memory.soft_limit_in_bytes"),
                    &res.to_string(),
                    "set memory reservation",
                )?;
            }
            if let Some(sw) = m.swappiness() {
                write(
                    id,
                    &dir.join("memory.swappiness"),
                    &sw.to_string(),
                    "set swappiness",
                )?;
            }
        }
        if let Some(cpu) = r.cpu() {
            if let Some(dir) = self.v1.get("cpu") {
                if let Some(s) = cpu.shares() {
                    write(
                        id,
                        &dir.join("cpu.shares"),
                        &s.to_string(),
                        "set cpu shares",
                    )?;
                }
                if let Some(p) = cpu.period() {
                    write(
                        id,
                        &dir.join("cpu.cfs_period_us"),
                        &p.to_string(),
                        "set cpu period",
                    )?;
                }
                if let Some(q) = cpu.quota() {
                    write(
                        id,
                        &dir.join("cpu.cfs_quota_us"),
                        &q.to_string(),
                        "set cpu quota",
                    )?;
                }
            }
            if let Some(dir) = self.v1.get("cpuset") {
                if let Some(c) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
                    write(id, &dir.join("cpuset.cpus"), c, "set cpuset cpus")?;
                }
                if let Some(m) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
                    write(id, &dir.join("cpuset.mems"), m, "set cpuset mems")?;
                }
            }
        }
        if let (Some(p), Some(dir)) = (r.pids(), self.v1.get("pids")) {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            };
            write(id, &dir.join("pids.max"), &v, "set pids limit")?;
        }
        if let (Some(b), Some(dir)) = (r.block_io(), self.v1.get("blkio")) {
            if let Some(w) = b.weight() {
                let f = ["blkio.weight", "blkio.bfq.weight"]
                    .iter()
                    .map(|f| dir.join(f))
                    .find(|f| f.exists());
                if let Some(f) = f {
                    write(id, &f, &w.to_string(), "set blkio weight")?;
                }
            }
        }
        if let (Some(rules), Some(dir)) = (r.devices(), self.v1.get("devices")) {
            for rule in rules {
                let typ = rule
                    .typ()
                    .map_or("a".to_string(), |t| t.as_str().to_string());
                let num = |n: Option<i64>| n.map_or("*".to_string(), |n| n.to_string());
                let line = if typ == "a" {
                    "a".to_string()
                } else {
                    format!(
                        "{typ} {}:{} {}",
                        num(rule.major()),
                        num(rule.minor()),
                        rule.access().as_deref().unwrap_or("rwm")
                    )
                };
                let file = if rule.allow() {
                    "devices.allow"
                } else {
                    "devices.deny"
                };
                write(id, &dir.join(file), &line, "set device rule")?;
            }
            // The devices every container gets (as runc): created in /dev by the runtime.
            for line in DEFAULT_ALLOWED_DEVICES {
                write(id, &dir.join("devices.allow"), line, "allow default device")?;
            }
        }
        Ok(())
    }

    fn apply_v2(&self, id: &str, r: &LinuxResources) -> Result<()> {
        let Some(dir) = &self.unified else {
            return Ok(());
        };
        let opt = |f: &str, v: String, op: &'static str| -> Result<()> {
            let p = dir.join(f);
            if p.exists() {
                write(id, &p, &v, op)
            } else {
                Ok(())
            }
        };
        let max = |v: i64| {
            if v < 0 {
                "max".to_string()
            } else {
                v.to_string()
            }
        };
        if let Some(m) = r.memory() {
            if let Some(limit) = m.limit() {
                opt("memory.max", max(limit), "set memory limit")?;
                if let Some(swap) = m.swap() {
                    let s = if swap < 0 || limit < 0 {
                        "max".into()
                    } else {
                        (swap - limit).max(0).to_string()
                    };
                    opt("memory.swap.max", s, "set swap limit")?;
                }
            }
            if let Some(res) = m.reservation() {
                opt("memory.low", max(res), "set memory reservation")?;
            }
        }
        if let Some(cpu) = r.cpu() {
            if let Some(s) = cpu.shares() {
                let weight = 1 + (s.clamp(2, 262_144) - 2) * 9999 / 262_142;
                opt("cpu.weight", weight.to_string(), "set cpu weight")?;
            }
            if cpu.quota().is_some() || cpu.period().is_some() {
                let q = cpu
                    .quota()
                    .filter(|q| *q > 0)
                    .map_or("max".into(), |q| q.to_string());
                opt(
                    "cpu.max",
                    format!("{q} {}", cpu.period().unwrap_or(100_000)),
                    "set cpu max",
                )?;
            }
            if let Some(c) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
                opt("cpuset.cpus", c.into(), "set cpuset cpus")?;
            }
            if let Some(m) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
                opt("cpuset.mems", m.into(), "set cpuset mems")?;
            }
        }
        if let Some(p) = r.pids() {
            opt(
                "pids.max",
                max(if p.limit() > 0 { p.limit() } else { -1 }),
                "set pids limit",
            )?;
        }
        if let Some(w) = r.block_io().as_ref().and_then(|b| b.weight()) {
            let w = 1 + (u64::from(w).clamp(10, 1000) - 10) * 9999 / 990;
            opt("io.weight", format!("default {w}"), "set io weight")?;
        }
        for (k, v) in r.unified().iter().flatten() {
            if k.contains('/') {
                return Err(Error::Cgroup {
                    id: id.into(),
                    path: dir.join(k),
                    operation: "unified key",
                    source: io::ErrorKind::InvalidInput.into(),
                });
            }
            write(id, &dir.join(k), v, "set unified value")?;
        }
        Ok(())
    }

    /// Allows the spec's extra devices in a v1 devices cgroup.
    pub fn allow_devices(
        &self,
        id: &str,
        devices: &[oci_spec::runtime::LinuxDevice],
    ) -> Result<()> {
        let Some(dir) = self.v1.get("devices") else {
            return Ok(());
        };
        for d in devices {
            let line = format!("{} {}:{} rwm", d.typ().as_str(), d.major(), d.minor());
            write(id, &dir.join("devices.allow"), &line, "allow device")?;
        }
        Ok(())
    }

    /// Freezes (`true`) or thaws every process of the cgroup, waiting until done.
    pub fn set_frozen(&self, id: &str, frozen: bool) -> Result<()> {
        if let Some(dir) = self.v1.get("freezer") {
            let f = dir.join("freezer.state");
            let want = if frozen { "FROZEN" } else { "THAWED" };
            write(id, &f, want, "freeze")?;
            for _ in 0..2000 {
                if std::fs::read_to_string(&f)
                    .map(|s| s.trim() == want)
                    .unwrap_or(false)
                {
                    return Ok(());
                }
                write(id, &f, want, "freeze")?;
                std::thread::sleep(std::time::Duration::from_micros(500));
            }
            return Err(Error::Cgroup {
                id: id.into(),
                path: f,
                operation: "freeze (timed out)",
                source: io::ErrorKind::TimedOut.into(),
            });
        }
        if let Some(dir) = &self.unified {
            let f = dir.join("cgroup.freeze");
            if f.exists() {
                write(id, &f, if frozen { "1" } else { "0" }, "freeze")?;
                let events = dir.join("cgroup.events");
                for _ in 0..2000 {
                    if keyed(&events, "frozen") == Some(u64::from(frozen)) {
                        return Ok(());
                    }
                    std::thread::sleep(std::time::Duration::from_micros(500));
                }
                return Err(Error::Cgroup {
                    id: id.into(),
                    path: f,
                    operation: "freeze (timed out)",
                    source: io::ErrorKind::TimedOut.into(),
                });
            }
        }
        Err(Error::Unsupported {
            id: id.into(),
            message: "no freezer cgroup on this host".into(),
        })
    }

    /// True when the cgroup is frozen.
    pub fn is_frozen(&self) -> bool {
        if let Some(dir) = self.v1.get("freezer") {
            return std::fs::read_to_string(dir.join("freezer.state"))
                .map(|s| s.trim() != "THAWED")
                .unwrap_or(false);
        }
        self.unified
            .as_ref()
            .is_some_and(|d| keyed(&d.join("cgroup.events"), "frozen") == Some(1))
    }

    /// The pids in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let dir = self
            .v1
            .get("pids")
            .or(self.v1.get("memory"))
            .or(self.unified.as_ref());
        let Some(dir) = dir else { return Vec::new() };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// OOM kills recorded for the cgroup.
    pub fn oom_kills(&self) -> u64 {
        if self.pure_v2 {
            return self
                .unified
                .as_ref()
                .and_then(|d| keyed(&d.join("memory.events"), "oom_kill"))
                .unwrap_or(0);
        }
        self.v1
            .get("memory")
            .and_then(|d| keyed(&d.join("memory.oom_control"), "oom_kill"))
            .unwrap_or(0)
    }

    /// Current usage.
    pub fn stats(&self) -> Stats {
        let mut s = Stats {
            oom_kills: self.oom_kills(),
            ..Stats::default()
        };
        if self.pure_v2 {
            if let Some(d) = &self.unified {
                s.memory_bytes = read_u64(&d.join("memory.current")).unwrap_or(0);
                s.memory_limit_bytes = read_u64(&d.join("memory.max")).unwrap_or(u64::MAX);
                s.cpu_ns = keyed(&d.join("cpu.stat"), "usage_usec").unwrap_or(0) * 1000;
                s.pids = read_u64(&d.join("pids.current")).unwrap_or(0);
                s.inactive_file_bytes = keyed(&d.join("memory.stat"), "inactive_file").unwrap_or(0);
            }
        } else {
            if let Some(d) = self.v1.get("memory") {
                s.memory_bytes = read_u64(&d.join("memory.usage_in_bytes")).unwrap_or(0);
                s.memory_limit_bytes =
                    read_u64(&d.join("memory.limit_in_bytes")).unwrap_or(u64::MAX);
                s.inactive_file_bytes =
                    keyed(&d.join("memory.stat"), "total_inactive_file").unwrap_or(0);
            }
            if let Some(d) = self.v1.get("cpuacct") {
                s.cpu_ns = read_u64(&d.join("cpuacct.usage")).unwrap_or(0);
            }
            if let Some(d) = self.v1.get("pids") {
                s.pids = read_u64(&d.join("pids.current")).unwrap_or(0);
            }
        }
        s
    }

    /// SIGKILLs every process in the cgroup (frozen first, so none can fork away) and
    /// waits up to `timeout` for it to empty.
    pub fn kill_all(&self, id: &str, timeout: std::time::Duration) -> Result<()> {
        if self.pids().is_empty() {
            return Ok(());
        }
        let frozen = self.set_frozen(id, true).is_ok();
        for pid in self.pids() {
            let _ = crate::sys::kill(pid, libc::SIGKILL);
        }
        if frozen {
            self.set_frozen(id, false)?;
        }
        let deadline = std::time::Instant::now() + timeout;
        while !self.pids().is_empty() {
            if std::time::Instant::now() > deadline {
                return Err(Error::Cgroup {
                    id: id.into(),
                    path: self.dirs()[0].into(),
                    operation: "kill all processes",
                    source: io::ErrorKind::TimedOut.into(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(())
    }

    /// Removes the directories (they must be empty of processes). Missing ones are fine.
    pub fn destroy(&self) -> io::Result<()> {
        let mut last = Ok(());
        for dir in self.dirs() {
            for attempt in 0..200 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    // A just-reaped process may linger in the cgroup for a moment.
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 199 => {
                        std::thread::sleep(std::time::Duration::from_micros(500));
                    }
                    Err(e) => {
                        last = Err(io::Error::new(
                            e.kind(),
                            format!("remove {}: {e}", dir.display()),
                        ));
                        break;
                    }
                }
            }
        }
        last
    }
}

fn fill_cpuset(id: &str, dir: &Path) -> Result<()> {
    let root = Path::new(CGROUP_ROOT).join("cpuset");
    let rel = dir.strip_prefix(&root).unwrap_or(dir);
    let mut cur = root.clone();
    for comp in rel.components() {
        let parent = cur.clone();
        cur.push(comp);
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let mine = std::fs::read_to_string(cur.join(f)).unwrap_or_default();
            if mine.trim().is_empty() {
                let theirs = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                write(id, &cur.join(f), theirs.trim(), "copy cpuset from parent")?;
            }
        }
    }
    Ok(())
}

fn enable_v2_controllers(dir: &Path) {
    let root = Path::new(CGROUP_ROOT);
    let mut cur = root.to_path_buf();
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    let comps: Vec<_> = rel.components().collect();
    for comp in &comps[..comps.len().saturating_sub(1)] {
        let avail = std::fs::read_to_string(cur.join("cgroup.controllers")).unwrap_or_default();
        let want: Vec<String> = avail.split_whitespace().map(|c| format!("+{c}")).collect();
        // Best effort: a controller the parent cannot delegate just stays off.
        for w in want {
            let _ = std::fs::write(cur.join("cgroup.subtree_control"), &w);
        }
        cur.push(comp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_relative_path() {
        assert_eq!(relative_path("c1", None), PathBuf::from("wharf/c1"));
        assert_eq!(
            relative_path("c1", Some(Path::new("/a/b"))),
            PathBuf::from("a/b")
        );
    }
}
