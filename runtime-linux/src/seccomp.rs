//! Seccomp: the OCI `linux.seccomp` filter, compiled to a BPF program in the parent
//! (with libseccomp, behind the default-on `seccomp` feature) and loaded in the
//! container process with one `seccomp(2)` call right before `execve`.
//!
//! Compiling before the fork means a bad profile (unknown action, argument index out of
//! range, an unsupported flag) is an error before anything exists, and the child only
//! copies nothing and calls the kernel. Placement follows runc: with `no_new_privs` the
//! filter is loaded as late as possible (just before `execve`); without it loading needs
//! `CAP_SYS_ADMIN`, so it happens before the capabilities are dropped.
//!
//! [`default_profile`] is the runtime's default (Kubernetes `RuntimeDefault`):
//! equivalent to Docker's — an allow list with `ERRNO(EPERM)` for everything else, and
//! syscalls allowed only when the container holds the matching capability.
#![allow(unsafe_code)]

use std::io;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// `SECCOMP_SET_MODE_FILTER` for `seccomp(2)`.
const SET_MODE_FILTER: libc::c_uint = 1;
/// `SECCOMP_FILTER_FLAG_LOG`.
const FLAG_LOG: libc::c_uint = 1 << 1;
/// `SECCOMP_FILTER_FLAG_SPEC_ALLOW`.
const FLAG_SPEC_ALLOW: libc::c_uint = 1 << 2;

/// A compiled filter: a classic BPF program and the `seccomp(2)` flags to load it with.
#[derive(Clone, Default)]
pub struct Filter {
    /// The instructions.
    program: Vec<libc::sock_filter>,
    /// `SECCOMP_FILTER_FLAG_*`.
    flags: libc::c_uint,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.program.len())
            .field("flags", &self.flags)
            .finish()
    }
}

impl Filter {
    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.program.len()
    }

    /// True for an empty program (never produced by [`compile`]).
    pub fn is_empty(&self) -> bool {
        self.program.is_empty()
    }

    /// Installs the filter on the calling thread. Allocates nothing: safe in a forked
    /// child. Needs `no_new_privs` or `CAP_SYS_ADMIN`.
    pub fn load(&self) -> io::Result<()> {
        let len = u16::try_from(self.program.len())
            .map_err(|_| io::Error::other("seccomp program longer than 65535 instructions"))?;
        let prog = libc::sock_fprog {
            len,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at `len` valid instructions that outlive the call; the
        // kernel copies the program.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Why a profile could not be compiled: the JSON field at fault and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileError {
    /// JSON path below `linux.seccomp`, e.g. `syscalls[3].args[0].index`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ProfileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "linux.seccomp.{}: {}", self.field, self.message)
    }
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> ProfileError {
    ProfileError {
        field: field.into(),
        message: message.into(),
    }
}

/// The `seccomp(2)` flags of a profile. TSYNC is accepted and ignored: the container
/// process is single-threaded when it loads the filter.
fn flags_of(s: &LinuxSeccomp) -> Result<libc::c_uint, ProfileError> {
    use oci_spec::runtime::LinuxSeccompFilterFlag as F;
    let mut flags = 0;
    for (i, f) in s.flags().iter().flatten().enumerate() {
        match f {
            F::SeccompFilterFlagLog => flags |= FLAG_LOG,
            F::SeccompFilterFlagSpecAllow => flags |= FLAG_SPEC_ALLOW,
            F::SeccompFilterFlagTsync => {}
            F::SeccompFilterFlagWaitKillableRecv => {
                return Err(bad(
                    format!("flags[{i}]"),
                    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs a notify listener, which is not supported",
                ))
            }
        }
    }
    Ok(flags)
}

/// The architecture names of the OCI spec (`SCMP_ARCH_X86_64`, …).
#[cfg_attr(not(feature = "seccomp"), allow(dead_code))]
fn arch_name(a: &Arch) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{a:?}"))
}

#[cfg(feature = "seccomp")]
mod compiler {
    use std::io::{Read, Seek};
    use std::os::fd::FromRawFd;
    use std::str::FromStr;

    use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext};
    use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

    use super::{arch_name, bad, flags_of, Filter, ProfileError};

    fn action(
        a: LinuxSeccompAction,
        errno: Option<u32>,
        field: &str,
    ) -> Result<ScmpAction, ProfileError> {
        use LinuxSeccompAction as A;
        let code = |e: Option<u32>| -> Result<i32, ProfileError> {
            let e = e.unwrap_or(libc::EPERM as u32);
            u16::try_from(e)
                .map(i32::from)
                .map_err(|_| bad(field, format!("errno {e} out of range")))
        };
        Ok(match a {
            A::ScmpActKill | A::ScmpActKillThread => ScmpAction::KillThread,
            A::ScmpActKillProcess => ScmpAction::KillProcess,
            A::ScmpActTrap => ScmpAction::Trap,
            A::ScmpActErrno => ScmpAction::Errno(code(errno)?),
            A::ScmpActTrace => ScmpAction::Trace(code(errno)? as u16),
            A::ScmpActLog => ScmpAction::Log,
            A::ScmpActAllow => ScmpAction::Allow,
            A::ScmpActNotify => return Err(bad(
                field,
                "SCMP_ACT_NOTIFY needs a notify listener (listenerPath), which is not supported",
            )),
        })
    }

    fn op(o: LinuxSeccompOperator, value: u64) -> ScmpCompareOp {
        use LinuxSeccompOperator as O;
        match o {
            O::ScmpCmpNe => ScmpCompareOp::NotEqual,
            O::ScmpCmpLt => ScmpCompareOp::Less,
            O::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
            O::ScmpCmpEq => ScmpCompareOp::Equal,
            O::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
            O::ScmpCmpGt => ScmpCompareOp::Greater,
            O::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(value),
        }
    }

    fn internal(what: &str, e: impl std::fmt::Display) -> ProfileError {
        bad("", format!("libseccomp: {what}: {e}"))
    }

    /// Compiles an OCI seccomp profile to BPF.
    pub fn compile(s: &LinuxSeccomp) -> Result<Filter, ProfileError> {
        let flags = flags_of(s)?;
        let default = action(s.default_action(), s.default_errno_ret(), "defaultAction")?;
        let mut ctx = ScmpFilterContext::new(default).map_err(|e| internal("init", e))?;
        for (i, a) in s.architectures().iter().flatten().enumerate() {
            let name = arch_name(a);
            let arch = ScmpArch::from_str(&name)
                .map_err(|_| bad(format!("architectures[{i}]"), format!("unknown {name}")))?;
            if arch == ScmpArch::Native || arch == ScmpArch::native() {
                continue;
            }
            ctx.add_arch(arch)
                .map_err(|e| internal(&format!("add architecture {name}"), e))?;
        }
        for (i, sc) in s.syscalls().iter().flatten().enumerate() {
            let field = format!("syscalls[{i}]");
            let act = action(sc.action(), sc.errno_ret(), &format!("{field}.action"))?;
            let args = sc.args().clone().unwrap_or_default();
            let mut conds = Vec::with_capacity(args.len());
            let mut per_index = [0u32; 6];
            for (j, a) in args.iter().enumerate() {
                if a.index() >= 6 {
                    return Err(bad(
                        format!("{field}.args[{j}].index"),
                        format!("{} is not a syscall argument (0-5)", a.index()),
                    ));
                }
                per_index[a.index()] += 1;
                // For SCMP_CMP_MASKED_EQ `value` is the mask and `valueTwo` the datum.
                let (o, datum) = match a.op() {
                    LinuxSeccompOperator::ScmpCmpMaskedEq => {
                        (op(a.op(), a.value()), a.value_two().unwrap_or(0))
                    }
                    other => (op(other, 0), a.value()),
                };
                conds.push(ScmpArgCompare::new(a.index() as u32, o, datum));
            }
            if act == default {
                // libseccomp refuses rules that repeat the default action; they change nothing.
                continue;
            }
            for name in sc.names() {
                let Ok(nr) = libseccomp::ScmpSyscall::from_name(name) else {
                    // Newer than this libseccomp (or another architecture's): skipped as
                    // runc does; the default action applies to it.
                    tracing::debug!(syscall = %name, "seccomp: unknown syscall skipped");
                    continue;
                };
                let res = if conds.is_empty() {
                    ctx.add_rule(act, nr)
                } else if per_index.iter().any(|n| *n > 1) {
                    // Two conditions on one argument cannot both hold in one rule: like
                    // runc, each condition becomes a rule of its own (any one matches).
                    conds
                        .iter()
                        .try_for_each(|c| ctx.add_rule_conditional(act, nr, &[*c]).map(drop))
                        .map(|()| &mut ctx)
                } else {
                    ctx.add_rule_conditional(act, nr, &conds)
                };
                res.map_err(|e| internal(&format!("rule for {name} ({field})"), e))?;
            }
        }
        // Export through a memfd (libseccomp 2.5 has no in-memory export).
        // SAFETY: memfd_create with a static NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"wharf-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(internal("memfd_create", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        ctx.export_bpf(&file).map_err(|e| internal("export", e))?;
        let mut bytes = Vec::new();
        file.rewind()
            .and_then(|_| file.read_to_end(&mut bytes))
            .map_err(|e| internal("read exported program", e))?;
        let program = bytes
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect::<Vec<_>>();
        if program.is_empty() {
            return Err(internal("export", "empty program"));
        }
        Ok(Filter { program, flags })
    }
}

/// Compiles an OCI seccomp profile to BPF (the `seccomp` feature is on).
#[cfg(feature = "seccomp")]
pub fn compile(s: &LinuxSeccomp) -> Result<Filter, ProfileError> {
    compiler::compile(s)
}

/// Without the `seccomp` feature a profile cannot be applied: always an error.
#[cfg(not(feature = "seccomp"))]
pub fn compile(s: &LinuxSeccomp) -> Result<Filter, ProfileError> {
    flags_of(s)?;
    Err(bad(
        "",
        "this build of wharf-runtime-linux has no seccomp support (feature `seccomp`)",
    ))
}

/// [`compile`] with a per-process cache keyed by the profile's JSON: libseccomp takes
/// milliseconds for a Docker-sized multi-architecture profile, and the long-lived
/// monitor sees the same few profiles (the runtime default per capability set) over
/// and over. At most 64 programs are kept.
pub fn compile_cached(s: &LinuxSeccomp) -> Result<Filter, ProfileError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Filter>>> = OnceLock::new();
    let Ok(key) = serde_json::to_string(s) else {
        return compile(s);
    };
    let cache = CACHE.get_or_init(Default::default);
    if let Some(f) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(f);
    }
    let f = compile(s)?;
    if let Ok(mut c) = cache.lock() {
        if c.len() >= 64 {
            c.clear();
        }
        c.insert(key, f.clone());
    }
    Ok(f)
}

/// Whether this build can apply seccomp profiles.
pub const ENABLED: bool = cfg!(feature = "seccomp");

/// Syscalls Docker's default profile allows to every container.
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat",
    "capget", "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime",
    "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime",
    "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range",
    "connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2",
    "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit",
    "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32",
    "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork",
    "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
    "fsync", "ftruncate", "ftruncate64", "futex", "futex_requeue", "futex_time64",
    "futex_wait", "futex_waitv", "futex_wake", "futimesat", "getcpu", "getcwd", "getdents",
    "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid",
    "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid",
    "getresuid32", "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname",
    "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32",
    "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch",
    "io_cancel", "ioctl", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup", "io_submit", "ipc",
    "kill", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
    "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr",
    "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64",
    "madvise", "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret", "mincore",
    "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2",
    "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open", "openat",
    "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64",
    "preadv", "preadv2", "prlimit64", "process_mrelease", "process_vm_readv",
    "process_vm_writev", "pselect6", "pselect6_time64", "ptrace", "pwrite64", "pwritev",
    "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom",
    "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename",
    "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity",
    "sched_getattr", "sched_getparam", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "seccomp", "select", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto",
    "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups",
    "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32",
    "setrlimit", "set_robust_list", "setsid", "setsockopt", "set_thread_area",
    "set_tid_address", "setuid", "setuid32", "setxattr", "shmat", "shmctl", "shmdt",
    "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask",
    "sigreturn", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs",
    "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs",
    "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask",
    "uname", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes",
    "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write", "writev",
];

/// Syscalls allowed only to a container holding the capability (Docker's `includes.caps`).
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &["kcmp", "pidfd_getfd", "process_madvise"],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
];

/// The namespace flags a `clone` without CAP_SYS_ADMIN may not pass (Docker's mask):
/// NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET.
const CLONE_NS_MASK: u64 = 0x7E02_0000;

/// `personality(2)` personas allowed by Docker's profile: PER_LINUX, PER_LINUX32,
/// UNAME26, UNAME26|PER_LINUX32, and the query value.
const PERSONAS: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

fn rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscall {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(action)
        .build()
        .expect("complete syscall rule")
}

fn arg_rule(
    name: &str,
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> LinuxSyscall {
    let mut arg = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    if let Some(v) = value_two {
        arg = arg.value_two(v);
    }
    let mut r = rule(&[name], LinuxSeccompAction::ScmpActAllow);
    r.set_args(Some(vec![arg.build().expect("complete seccomp arg")]));
    r
}

/// The runtime's default profile for a container whose bounding set holds `caps`
/// (names like `CAP_SYS_ADMIN`): equivalent to Docker's default profile.
pub fn default_profile<S: AsRef<str>>(caps: &[S]) -> LinuxSeccomp {
    let has = |c: &str| caps.iter().any(|x| x.as_ref() == c);
    let mut syscalls = vec![rule(ALLOWED, LinuxSeccompAction::ScmpActAllow)];
    // socket(2): anything but AF_VSOCK (40), which would reach the host's vsock.
    syscalls.push(arg_rule(
        "socket",
        0,
        LinuxSeccompOperator::ScmpCmpNe,
        40,
        None,
    ));
    for p in PERSONAS {
        syscalls.push(arg_rule(
            "personality",
            0,
            LinuxSeccompOperator::ScmpCmpEq,
            p,
            None,
        ));
    }
    let archs: Vec<Arch>;
    if cfg!(target_arch = "x86_64") || cfg!(target_arch = "x86") {
        syscalls.push(rule(
            &["arch_prctl", "modify_ldt"],
            LinuxSeccompAction::ScmpActAllow,
        ));
        archs = vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32];
    } else if cfg!(target_arch = "aarch64") || cfg!(target_arch = "arm") {
        syscalls.push(rule(
            &[
                "arm_fadvise64_64",
                "arm_sync_file_range",
                "sync_file_range2",
                "breakpoint",
                "cacheflush",
                "set_tls",
            ],
            LinuxSeccompAction::ScmpActAllow,
        ));
        archs = vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm];
    } else {
        archs = vec![Arch::ScmpArchNative];
    }
    for (cap, names) in BY_CAPABILITY {
        if has(cap) {
            syscalls.push(rule(names, LinuxSeccompAction::ScmpActAllow));
        }
    }
    if !has("CAP_SYS_ADMIN") {
        // clone without namespace flags; clone3 cannot be inspected (its flags are in
        // memory), so it fails with ENOSYS and libc falls back to clone.
        syscalls.push(arg_rule(
            "clone",
            0,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            CLONE_NS_MASK,
            Some(0),
        ));
        let mut clone3 = rule(&["clone3"], LinuxSeccompAction::ScmpActErrno);
        clone3.set_errno_ret(Some(libc::ENOSYS as u32));
        syscalls.push(clone3);
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .architectures(archs)
        .syscalls(syscalls)
        .build()
        .expect("complete seccomp profile")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_allowed(p: &LinuxSeccomp) -> Vec<String> {
        p.syscalls()
            .iter()
            .flatten()
            .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow)
            .flat_map(|s| s.names().clone())
            .collect()
    }

    #[test]
    fn default_profile_denies_namespaces_and_keys_without_sys_admin() {
        let p = default_profile(&["CAP_CHOWN", "CAP_KILL"]);
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(libc::EPERM as u32));
        let allowed = names_allowed(&p);
        for denied in [
            "unshare", "setns", "mount", "keyctl", "add_key", "reboot", "bpf",
        ] {
            assert!(!allowed.iter().any(|n| n == denied), "{denied} allowed");
        }
        let clone = p
            .syscalls()
            .iter()
            .flatten()
            .find(|s| s.names() == &["clone".to_string()])
            .expect("conditional clone rule");
        let arg = &clone.args().as_ref().unwrap()[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(
            arg.value() as i32 & libc::CLONE_NEWUSER,
            libc::CLONE_NEWUSER
        );
    }

    #[test]
    fn default_profile_follows_capabilities() {
        let p = default_profile(&["CAP_SYS_ADMIN", "CAP_SYS_CHROOT"]);
        let allowed = names_allowed(&p);
        for n in ["unshare", "mount", "clone", "clone3", "chroot"] {
            assert!(allowed.iter().any(|a| a == n), "{n} not allowed");
        }
        assert!(!allowed.iter().any(|a| a == "reboot"));
    }

    #[cfg(feature = "seccomp")]
    #[test]
    fn compiles_the_default_profile() {
        let f = compile(&default_profile(&["CAP_CHOWN"])).unwrap();
        assert!(f.len() > 100, "{} instructions", f.len());
    }

    #[cfg(feature = "seccomp")]
    #[test]
    fn bad_profiles_name_the_field() {
        let mut p = default_profile::<&str>(&[]);
        let mut r = arg_rule("mkdir", 7, LinuxSeccompOperator::ScmpCmpEq, 0, None);
        r.set_action(LinuxSeccompAction::ScmpActErrno);
        let mut all = p.syscalls().clone().unwrap();
        all.push(r);
        let n = all.len() - 1;
        p.set_syscalls(Some(all));
        let e = compile(&p).unwrap_err();
        assert_eq!(e.field, format!("syscalls[{n}].args[0].index"));

        let mut p = default_profile::<&str>(&[]);
        p.set_default_action(LinuxSeccompAction::ScmpActNotify);
        assert_eq!(compile(&p).unwrap_err().field, "defaultAction");
    }
}
