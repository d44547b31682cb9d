//! The container's mount namespace: root filesystem, mounts, `/dev`, `pivot_root`,
//! masked and read-only paths.
//!
//! Runs in the freshly forked container process, inside its new mount namespace, before
//! the user program. Every mount target is opened with `openat2(RESOLVE_IN_ROOT)` under
//! the rootfs and the mount is made onto `/proc/self/fd/N` of that descriptor, so a
//! symlink planted in the image cannot redirect a mount to the host (CVE-2021-30465).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, Mount};

use crate::init::{Step, StepResult};
use crate::sys::{self, cstr};

/// An overlay root: read-only lower layers plus a writable upper directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Overlay {
    /// Lower layers, topmost first.
    pub lower: Vec<PathBuf>,
    /// The writable layer.
    pub upper: PathBuf,
    /// overlayfs' work directory (same filesystem as `upper`).
    pub work: PathBuf,
}

/// What to build, taken from the spec before the fork.
#[derive(Debug, Clone)]
pub struct RootfsPlan {
    /// Host path of the root filesystem (the mount point when `overlay` is set).
    pub rootfs: PathBuf,
    /// Mount an overlay at `rootfs` first.
    pub overlay: Option<Overlay>,
    /// Remount `/` read-only at the end.
    pub readonly: bool,
    /// The spec's mounts, in order.
    pub mounts: Vec<Mount>,
    /// Extra devices from the spec.
    pub devices: Vec<LinuxDevice>,
    /// Paths hidden from the container.
    pub masked: Vec<String>,
    /// Paths made read-only.
    pub readonly_paths: Vec<String>,
    /// The spec's `rootfsPropagation`.
    pub propagation: Option<String>,
    /// True when the container has its own user namespace (mknod is not allowed there).
    pub in_userns: bool,
    /// Host cgroup directories per v1 controller, or the unified directory, for a
    /// `cgroup` mount.
    pub cgroup_dirs: Vec<(String, PathBuf)>,
}

impl RootfsPlan {
    /// True when a `cgroup` mount will be a fresh cgroup2 instance (pure v2 host), which
    /// shows the cgroup namespace's root: the namespace must exist before it.
    pub fn mounts_cgroup2(&self) -> bool {
        self.cgroup_dirs.len() == 1
            && self.cgroup_dirs[0].0 == "unified"
            && self
                .mounts
                .iter()
                .any(|m| matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2")))
    }
}

struct Flags {
    set: libc::c_ulong,
    propagation: libc::c_ulong,
    data: Vec<String>,
}

fn parse_options(options: &[String]) -> Flags {
    let mut f = Flags {
        set: 0,
        propagation: 0,
        data: Vec::new(),
    };
    for o in options {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match o.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "silent" => (libc::MS_SILENT, 0),
            "loud" => (0, libc::MS_SILENT),
            "lazytime" => (libc::MS_LAZYTIME, 0),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                f.propagation |= propagation(o).unwrap_or(0);
                (0, 0)
            }
            // Options with no kernel meaning for this runtime.
            "defaults" | "tmpcopyup" => (0, 0),
            other => {
                f.data.push(other.to_string());
                (0, 0)
            }
        };
        f.set = (f.set | set) & !clear;
    }
    f
}

fn propagation(name: &str) -> Option<libc::c_ulong> {
    Some(match name {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => return None,
    })
}

/// What a missing mount target should be created as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

/// Opens `path` (absolute, inside the container) under `root` as an `O_PATH` fd,
/// creating missing components as directories (and the last one as `kind`). No
/// component can resolve outside `root`.
fn open_target(root: &OwnedFd, path: &Path, kind: Kind) -> io::Result<OwnedFd> {
    open_target_at_depth(root, path, kind, 0)
}

fn open_target_at_depth(
    root: &OwnedFd,
    path: &Path,
    kind: Kind,
    depth: u32,
) -> io::Result<OwnedFd> {
    if depth > 40 {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    let c = cstr(path)?;
    match sys::open_in_root(root.as_fd(), &c, libc::O_PATH) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let comps: Vec<_> = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    let mut dir = sys::open_in_root(root.as_fd(), c"/", libc::O_PATH | libc::O_DIRECTORY)?;
    let mut sofar = PathBuf::from("/");
    for (i, comp) in comps.iter().enumerate() {
        sofar.push(comp);
        let last = i + 1 == comps.len();
        let name = cstr(comp.as_os_str())?;
        let sofar_c = cstr(&sofar)?;
        match sys::open_in_root(root.as_fd(), &sofar_c, libc::O_PATH) {
            Ok(fd) => {
                dir = fd;
                continue;
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            Err(_) => {}
        }
        // The parent was resolved inside the root; create the single name under it.
        // mkdirat/openat with one component never follow a symlink for that name.
        let parent = sys::openat(dir.as_fd(), c".", libc::O_DIRECTORY | libc::O_RDONLY, 0)?;
        if last && kind == Kind::File {
            match sys::openat(
                parent.as_fd(),
                &name,
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                0o644,
            ) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        } else {
            match sys::mkdirat(parent.as_fd(), &name, 0o755) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        dir = match sys::open_in_root(root.as_fd(), &sofar_c, libc::O_PATH) {
            Ok(fd) => fd,
            // The name exists but does not resolve: a symlink whose target is missing.
            // Create its target, interpreted inside the root, then resolve again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let link = std::fs::read_link(format!(
                    "/proc/self/fd/{}/{}",
                    parent.as_raw_fd(),
                    comp.as_os_str().to_string_lossy()
                ))?;
                let target = if link.is_absolute() {
                    link
                } else {
                    sofar.parent().unwrap_or(Path::new("/")).join(link)
                };
                open_target_at_depth(
                    root,
                    &target,
                    if last { kind } else { Kind::Dir },
                    depth + 1,
                )?;
                sys::open_in_root(root.as_fd(), &sofar_c, libc::O_PATH)?
            }
            Err(e) => return Err(e),
        };
    }
    Ok(dir)
}

fn fd_path(fd: &OwnedFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL")
}

fn mount_at(
    src: Option<&str>,
    target: &CString,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: &[String],
) -> io::Result<()> {
    let src = src.map(cstr).transpose()?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = (!data.is_empty())
        .then(|| cstr(data.join(",")))
        .transpose()?;
    sys::mount(
        src.as_deref(),
        target,
        fstype.as_deref(),
        flags,
        data.as_deref(),
    )
}

/// Builds the container's filesystem view and pivots into it. Returns with `/` being
/// the container's root and the working directory `/`.
pub fn setup(plan: &RootfsPlan, before_pivot: impl FnOnce() -> StepResult<()>) -> StepResult<()> {
    // Nothing done below may propagate back to the host.
    sys::mount(None, c"/", None, libc::MS_SLAVE | libc::MS_REC, None)
        .step(|| "make / rslave".into())?;
    let rootfs = cstr(&plan.rootfs).step(|| "rootfs path".into())?;
    if let Some(o) = &plan.overlay {
        let lower: Vec<String> = o.lower.iter().map(|p| p.display().to_string()).collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            o.upper.display(),
            o.work.display()
        );
        mount_at(Some("overlay"), &rootfs, Some("overlay"), 0, &[data])
            .step(|| format!("mount overlay on {}", plan.rootfs.display()))?;
    }
    // pivot_root needs the new root to be a mount point.
    sys::mount(
        Some(&rootfs),
        &rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .step(|| format!("bind {} onto itself", plan.rootfs.display()))?;
    let root = std::fs::File::open(&plan.rootfs)
        .map(OwnedFd::from)
        .step(|| format!("open {}", plan.rootfs.display()))?;

    for m in &plan.mounts {
        mount_one(&root, plan, m).step(|| format!("mount {}", m.destination().display()))?;
    }
    setup_dev(&root, plan)?;
    // createRuntime and createContainer hooks: mounts done, root not yet pivoted.
    before_pivot()?;

    // pivot_root(".", ".") stacks the old root under the new one; detach it at once.
    std::env::set_current_dir(&plan.rootfs).step(|| "chdir to rootfs".into())?;
    sys::pivot_root(c".", c".").step(|| "pivot_root".into())?;
    sys::mount(None, c".", None, libc::MS_SLAVE | libc::MS_REC, None)
        .step(|| "make old root rslave".into())?;
    sys::umount2(c".", libc::MNT_DETACH).step(|| "detach old root".into())?;
    std::env::set_current_dir("/").step(|| "chdir /".into())?;

    for p in &plan.masked {
        mask(p).step(|| format!("mask {p}"))?;
    }
    for p in &plan.readonly_paths {
        readonly(p).step(|| format!("make {p} read-only"))?;
    }
    if plan.readonly {
        sys::mount(
            None,
            c"/",
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            None,
        )
        .step(|| "remount / read-only".into())?;
    }
    if let Some(p) = plan.propagation.as_deref().and_then(propagation) {
        sys::mount(None, c"/", None, p, None).step(|| "set rootfs propagation".into())?;
    }
    Ok(())
}

fn mount_one(root: &OwnedFd, plan: &RootfsPlan, m: &Mount) -> io::Result<()> {
    let flags = parse_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m.typ().as_deref().unwrap_or("none");
    let source = m.source().as_ref().map(|s| s.display().to_string());
    let is_bind = flags.set & libc::MS_BIND != 0 || typ == "bind";
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(root, plan, m, flags.set);
    }
    let kind = match (&source, is_bind) {
        (Some(s), true) if !Path::new(s).is_dir() => Kind::File,
        _ => Kind::Dir,
    };
    let target_fd = open_target(root, m.destination(), kind)?;
    let target = fd_path(&target_fd);
    if is_bind {
        let src = source.as_deref().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "bind mount without source")
        })?;
        mount_at(
            Some(src),
            &target,
            None,
            libc::MS_BIND | (flags.set & libc::MS_REC),
            &[],
        )?;
        let extra = flags.set & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT);
        if extra != 0 {
            // The bind mount now sits on top of target_fd's directory: reopen it.
            let fd = open_target(root, m.destination(), kind)?;
            mount_at(
                None,
                &fd_path(&fd),
                None,
                libc::MS_REMOUNT | libc::MS_BIND | extra,
                &[],
            )?;
        }
    } else {
        let res = mount_at(
            source.as_deref().or(Some(typ)),
            &target,
            Some(typ),
            flags.set,
            &flags.data,
        );
        match res {
            // sysfs cannot be mounted in a user namespace that does not own the network
            // namespace; bind the host's read-only instead (as runc does).
            Err(e) if typ == "sysfs" && e.raw_os_error() == Some(libc::EPERM) => {
                mount_at(
                    Some("/sys"),
                    &target,
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    &[],
                )?;
                let fd = open_target(root, m.destination(), kind)?;
                mount_at(
                    None,
                    &fd_path(&fd),
                    None,
                    libc::MS_REMOUNT
                        | libc::MS_BIND
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                    &[],
                )?;
            }
            Err(e) if typ == "mqueue" && e.raw_os_error() == Some(libc::EPERM) => {
                mount_at(Some("/dev/mqueue"), &target, None, libc::MS_BIND, &[])?;
            }
            other => other?,
        }
    }
    if flags.propagation != 0 {
        let fd = open_target(root, m.destination(), kind)?;
        sys::mount(None, &fd_path(&fd), None, flags.propagation, None)?;
    }
    Ok(())
}

/// A `cgroup` mount: cgroup2 on a pure v2 host; otherwise a tmpfs with each v1
/// controller's container directory bound read-only beneath it.
fn mount_cgroup(
    root: &OwnedFd,
    plan: &RootfsPlan,
    m: &Mount,
    set: libc::c_ulong,
) -> io::Result<()> {
    let dest = m.destination();
    let ro = set & libc::MS_RDONLY;
    let base = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if plan.cgroup_dirs.len() == 1 && plan.cgroup_dirs[0].0 == "unified" {
        let fd = open_target(root, dest, Kind::Dir)?;
        return match mount_at(
            Some("cgroup2"),
            &fd_path(&fd),
            Some("cgroup2"),
            base | ro,
            &[],
        ) {
            Err(e)
                if e.raw_os_error() == Some(libc::EPERM)
                    || e.raw_os_error() == Some(libc::EBUSY) =>
            {
                mount_at(
                    Some(&plan.cgroup_dirs[0].1.display().to_string()),
                    &fd_path(&fd),
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    &[],
                )
            }
            other => other,
        };
    }
    let fd = open_target(root, dest, Kind::Dir)?;
    mount_at(
        Some("tmpfs"),
        &fd_path(&fd),
        Some("tmpfs"),
        base,
        &["mode=755".into()],
    )?;
    for (name, host) in &plan.cgroup_dirs {
        let sub = dest.join(name);
        let fd = open_target(root, &sub, Kind::Dir)?;
        mount_at(
            Some(&host.display().to_string()),
            &fd_path(&fd),
            None,
            libc::MS_BIND | libc::MS_REC,
            &[],
        )?;
        let fd = open_target(root, &sub, Kind::Dir)?;
        mount_at(
            None,
            &fd_path(&fd),
            None,
            libc::MS_REMOUNT | libc::MS_BIND | base | ro,
            &[],
        )?;
    }
    if ro != 0 {
        let fd = open_target(root, dest, Kind::Dir)?;
        mount_at(
            None,
            &fd_path(&fd),
            None,
            libc::MS_REMOUNT | base | libc::MS_RDONLY,
            &[],
        )?;
    }
    Ok(())
}

const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

fn setup_dev(root: &OwnedFd, plan: &RootfsPlan) -> StepResult<()> {
    // A /dev bind-mounted from the host already has its devices.
    if plan
        .mounts
        .iter()
        .any(|m| m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("bind"))
    {
        return Ok(());
    }
    let mut devs: Vec<(PathBuf, u32, u64, u64, u32, u32, u32)> = DEFAULT_DEVICES
        .iter()
        .map(|(p, ma, mi)| (PathBuf::from(p), libc::S_IFCHR, *ma, *mi, 0o666, 0, 0))
        .collect();
    for d in &plan.devices {
        let typ = match d.typ().as_str() {
            "b" => libc::S_IFBLK,
            "p" => libc::S_IFIFO,
            _ => libc::S_IFCHR,
        };
        devs.retain(|x| x.0 != *d.path());
        devs.push((
            d.path().clone(),
            typ,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666),
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        ));
    }
    for (path, typ, major, minor, mode, uid, gid) in devs {
        make_device(root, plan, &path, typ, major, minor, mode, uid, gid)
            .step(|| format!("create device {}", path.display()))?;
    }
    let links = [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ];
    let dev = open_target(root, Path::new("/dev"), Kind::Dir).step(|| "open /dev".into())?;
    let dev = sys::openat(dev.as_fd(), c".", libc::O_DIRECTORY | libc::O_RDONLY, 0)
        .step(|| "open /dev".into())?;
    let mut all: Vec<(&str, &str)> = links.to_vec();
    let has_pts = plan
        .mounts
        .iter()
        .any(|m| m.destination() == Path::new("/dev/pts"));
    if has_pts {
        all.push(("pts/ptmx", "/dev/ptmx"));
    }
    if Path::new("/proc/kcore").exists() {
        all.push(("/proc/kcore", "/dev/core"));
    }
    for (target, link) in all {
        let name = cstr(Path::new(link).file_name().expect("constant")).step(|| link.into())?;
        let t = cstr(target).step(|| link.into())?;
        match sys::symlinkat(&t, dev.as_fd(), &name) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).step(|| format!("symlink {link}")),
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn make_device(
    root: &OwnedFd,
    plan: &RootfsPlan,
    path: &Path,
    typ: u32,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    let parent_path = path.parent().unwrap_or(Path::new("/"));
    let name = cstr(
        path.file_name()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?,
    )?;
    let parent = open_target(root, parent_path, Kind::Dir)?;
    let parent = sys::openat(parent.as_fd(), c".", libc::O_DIRECTORY | libc::O_RDONLY, 0)?;
    if !plan.in_userns {
        match sys::mknodat(
            parent.as_fd(),
            &name,
            typ | (mode & 0o7777),
            sys::makedev(major, minor),
        ) {
            Ok(()) => {
                let fd = sys::openat(parent.as_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
                // mknod honours the umask; set the exact mode the spec asked for.
                std::fs::set_permissions(
                    format!("/proc/self/fd/{}", fd.as_raw_fd()),
                    std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
                )?;
                return sys::fchown(fd.as_fd(), uid, gid);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) if e.raw_os_error() != Some(libc::EPERM) => return Err(e),
            Err(_) => {}
        }
    }
    // In a user namespace mknod is refused: bind the host's node instead.
    let target = open_target(root, path, Kind::File)?;
    mount_at(
        Some(&path.display().to_string()),
        &fd_path(&target),
        None,
        libc::MS_BIND,
        &[],
    )
}

fn mask(path: &str) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let target = cstr(path)?;
    if meta.is_dir() {
        sys::mount(
            Some(c"tmpfs"),
            &target,
            Some(c"tmpfs"),
            libc::MS_RDONLY,
            None,
        )
    } else {
        sys::mount(Some(c"/dev/null"), &target, None, libc::MS_BIND, None)
    }
}

fn readonly(path: &str) -> io::Result<()> {
    let target = cstr(path)?;
    match sys::mount(
        Some(&target),
        &target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    ) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    }
    sys::mount(
        None,
        &target,
        None,
        libc::MS_REMOUNT
            | libc::MS_BIND
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        None,
    )
    .or_else(|_| {
        sys::mount(
            None,
            &target,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            None,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let f = parse_options(&[
            "nosuid".into(),
            "ro".into(),
            "rw".into(),
            "mode=755".into(),
            "rslave".into(),
            "rbind".into(),
        ]);
        assert_eq!(f.set, libc::MS_NOSUID | libc::MS_BIND | libc::MS_REC);
        assert_eq!(f.propagation, libc::MS_SLAVE | libc::MS_REC);
        assert_eq!(f.data, vec!["mode=755".to_string()]);
    }
}
