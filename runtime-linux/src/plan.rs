//! Turning a checked bundle into an [`InitPlan`]: every decision about namespaces,
//! mounts, identity and limits is made here, in the parent, before the fork — so it is
//! unit-tested without root and bad input fails before anything exists.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Process, Spec};

use crate::caps::CapMasks;
use crate::cgroup::Cgroup;
use crate::error::{Error, Result};
use crate::init::{InitPlan, ProcessPlan};
use crate::rootfs::{Overlay, RootfsPlan};
use crate::seccomp::Filter;
use crate::spec::Bundle;

fn field(bundle: &Bundle, field: &str, message: impl Into<String>) -> Error {
    Error::ConfigField {
        path: bundle.dir.join("config.json"),
        field: field.into(),
        message: message.into(),
    }
}

/// The rlimit resource number for an OCI rlimit type.
pub fn rlimit_resource(t: PosixRlimitType) -> u32 {
    use PosixRlimitType::*;
    match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Looks `user` up in `<rootfs>/etc/passwd`: (uid, gid).
pub fn lookup_user(id: &str, rootfs: &Path, user: &str) -> Result<(u32, u32)> {
    let passwd = rootfs.join("etc/passwd");
    let text = std::fs::read_to_string(&passwd).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == user)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .ok_or_else(|| Error::UnknownUser {
            id: id.into(),
            user: user.into(),
            passwd,
        })
}

/// Supplementary groups of `user` from `<rootfs>/etc/group`.
pub fn groups_of(rootfs: &Path, user: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[3].split(',').any(|m| m == user))
                .then(|| f[2].parse().ok())
                .flatten()
        })
        .collect()
}

/// The process part of the plan.
pub fn process_plan(
    id: &str,
    rootfs: &Path,
    p: &Process,
    host_bounding: u64,
) -> Result<ProcessPlan> {
    let u = p.user();
    let (mut uid, mut gid) = (u.uid(), u.gid());
    let mut groups = u.additional_gids().clone().unwrap_or_default();
    if let Some(name) = u.username().as_deref().filter(|n| !n.is_empty()) {
        (uid, gid) = lookup_user(id, rootfs, name)?;
        if groups.is_empty() {
            groups = groups_of(rootfs, name);
        }
    }
    Ok(ProcessPlan {
        args: p.args().clone().unwrap_or_default(),
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().clone(),
        uid,
        gid,
        groups,
        umask: u.umask(),
        caps: CapMasks::from_spec(p.capabilities().as_ref(), host_bounding),
        no_new_privs: p.no_new_privileges().unwrap_or(false),
        rlimits: p
            .rlimits()
            .iter()
            .flatten()
            .map(|r| (rlimit_resource(r.typ()), r.soft(), r.hard()))
            .collect(),
        preserve_fds: 0,
        seccomp: None,
    })
}

/// Compiles the bundle's `linux.seccomp`, if any, to a filter (before anything is
/// created: a bad profile is a config error naming the field).
pub fn seccomp_of(id: &str, bundle: &Bundle) -> Result<Option<Filter>> {
    let Some(profile) = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
    else {
        return Ok(None);
    };
    if !crate::seccomp::ENABLED {
        return Err(Error::Unsupported {
            id: id.into(),
            message: "linux.seccomp is set but this build has no seccomp support (cargo feature `seccomp`)".into(),
        });
    }
    crate::seccomp::compile_cached(profile)
        .map(Some)
        .map_err(|e| {
            field(
                bundle,
                format!("linux.seccomp.{}", e.field).trim_end_matches('.'),
                e.message,
            )
        })
}

/// Builds the plan for a container's init process — every check, nothing created; the
/// cgroup is added with [`set_cgroup`] once it exists.
pub fn init_plan(
    id: &str,
    bundle: &Bundle,
    overlay: Option<Overlay>,
    fifo: PathBuf,
    host_bounding: u64,
) -> Result<InitPlan> {
    let spec: &Spec = &bundle.spec;
    let linux = spec.linux().clone().unwrap_or_default();
    let process = spec.process().as_ref().expect("validated");
    let mut plan = InitPlan {
        id: id.into(),
        fifo: Some(fifo),
        setsid: true,
        ..InitPlan::default()
    };

    let mut joins = Vec::new();
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        let flag = ns.typ() as libc::c_int;
        match ns.path() {
            Some(p) => {
                if !p.exists() {
                    return Err(field(
                        bundle,
                        &format!("linux.namespaces[{i}].path"),
                        format!("{} does not exist", p.display()),
                    ));
                }
                joins.push((p.clone(), flag));
            }
            None if ns.typ() == LinuxNamespaceType::User => plan.new_user = true,
            None => plan.unshare |= flag,
        }
    }
    // The user namespace must be joined first: it owns the others.
    joins.sort_by_key(|(_, t)| *t != libc::CLONE_NEWUSER);
    plan.join = joins;
    let has = |t: LinuxNamespaceType| linux.namespaces().iter().flatten().any(|n| n.typ() == t);
    if plan.unshare & libc::CLONE_NEWNS == 0 {
        return Err(field(
            bundle,
            "linux.namespaces",
            "a new mount namespace is required (add {\"type\": \"mount\"})",
        ));
    }
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err(field(
            bundle,
            "hostname",
            "setting a hostname needs a uts namespace",
        ));
    }
    let maps = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    plan.uid_map = maps(linux.uid_mappings());
    plan.gid_map = maps(linux.gid_mappings());
    plan.hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    plan.domainname = spec.domainname().clone().filter(|h| !h.is_empty());
    plan.sysctl = linux
        .sysctl()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    plan.sysctl.sort();
    for (k, _) in &plan.sysctl {
        if k.contains('/') || k.contains("..") {
            return Err(field(bundle, "linux.sysctl", format!("invalid key {k:?}")));
        }
    }
    plan.oom_score_adj = process.oom_score_adj();
    plan.process = process_plan(id, &bundle.rootfs, process, host_bounding)?;
    if plan.process.uid != 0
        && plan.new_user
        && linux.uid_mappings().iter().flatten().all(|m| {
            plan.process.uid < m.container_id() || plan.process.uid >= m.container_id() + m.size()
        })
    {
        return Err(field(
            bundle,
            "process.user.uid",
            format!(
                "uid {} is not mapped in linux.uidMappings",
                plan.process.uid
            ),
        ));
    }

    let root = spec.root().as_ref().expect("validated");
    plan.rootfs = Some(RootfsPlan {
        rootfs: bundle.rootfs.clone(),
        overlay,
        readonly: root.readonly().unwrap_or(false),
        mounts: spec.mounts().clone().unwrap_or_default(),
        devices: linux.devices().clone().unwrap_or_default(),
        masked: linux.masked_paths().clone().unwrap_or_default(),
        readonly_paths: linux.readonly_paths().clone().unwrap_or_default(),
        propagation: linux.rootfs_propagation().clone(),
        in_userns: plan.new_user || plan.join.iter().any(|(_, t)| *t == libc::CLONE_NEWUSER),
        // Filled in by `set_cgroup` once the cgroup exists.
        cgroup_dirs: Vec::new(),
    });
    Ok(plan)
}

/// Points a plan at the container's cgroup (the directories it joins and the ones a
/// `cgroup` mount shows), so a plan checked before the cgroup existed can be used as is.
pub fn set_cgroup(plan: &mut InitPlan, cgroup: &Cgroup) {
    plan.cgroup_procs = cgroup.procs_files();
    if let Some(r) = &mut plan.rootfs {
        r.cgroup_dirs = if cgroup.pure_v2 {
            cgroup
                .unified
                .iter()
                .map(|u| ("unified".to_string(), u.clone()))
                .collect()
        } else {
            cgroup
                .v1
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
    }
}

/// Namespaces of `pid` that differ from the caller's, user namespace first — what an
/// exec must join.
pub fn namespaces_of(pid: i32) -> Vec<(PathBuf, libc::c_int)> {
    let kinds = [
        ("user", libc::CLONE_NEWUSER),
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("pid", libc::CLONE_NEWPID),
        ("cgroup", libc::CLONE_NEWCGROUP),
        ("mnt", libc::CLONE_NEWNS),
    ];
    let ino = |p: &Path| std::fs::metadata(p).map(|m| m.ino()).ok();
    kinds
        .iter()
        .filter_map(|(name, flag)| {
            let theirs = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
            let mine = PathBuf::from(format!("/proc/self/ns/{name}"));
            (ino(&theirs).is_some() && ino(&theirs) != ino(&mine)).then_some((theirs, *flag))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::default_spec;

    fn bundle(spec: Spec) -> (tempdir::Dir, Bundle) {
        let d = tempdir::Dir::new();
        std::fs::create_dir(d.0.join("rootfs")).unwrap();
        let b = Bundle::from_spec("t", &d.0, &d.0.join("config.json"), spec).unwrap();
        (d, b)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let p = std::env::temp_dir().join(format!("wharf-plan-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn default_spec_plan() {
        let (_d, b) = bundle(default_spec());
        let plan = init_plan("t", &b, None, "/f".into(), u64::MAX).unwrap();
        assert_ne!(plan.unshare & libc::CLONE_NEWPID, 0);
        assert_ne!(plan.unshare & libc::CLONE_NEWNS, 0);
        assert!(!plan.new_user);
        let rootfs = plan.rootfs.unwrap();
        assert!(rootfs.masked.iter().any(|p| p == "/proc/kcore"));
        assert_eq!(plan.process.args, vec!["sh".to_string()]);
        assert!(
            plan.process.caps.bounding & (1 << 5) != 0,
            "CAP_KILL in default set"
        );
    }

    #[test]
    fn unknown_user_is_clear_error() {
        let mut spec = default_spec();
        spec.process_mut()
            .as_mut()
            .unwrap()
            .user_mut()
            .set_username(Some("nobody-here".into()));
        let (_d, b) = bundle(spec);
        let msg = init_plan("t", &b, None, "/f".into(), u64::MAX)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("nobody-here") && msg.contains("etc/passwd"),
            "{msg}"
        );
    }

    #[test]
    fn user_lookup() {
        let d = tempdir::Dir::new();
        std::fs::create_dir_all(d.0.join("etc")).unwrap();
        std::fs::write(
            d.0.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:100:A:/home/a:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            d.0.join("etc/group"),
            "users:x:100:\nwheel:x:10:alice,bob\n",
        )
        .unwrap();
        assert_eq!(lookup_user("t", &d.0, "alice").unwrap(), (1000, 100));
        assert_eq!(groups_of(&d.0, "alice"), vec![10]);
    }

    #[test]
    fn rlimit_numbers() {
        assert_eq!(
            rlimit_resource(PosixRlimitType::RlimitNofile),
            libc::RLIMIT_NOFILE
        );
    }
}
