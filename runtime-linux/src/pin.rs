//! Namespaces without a process: a sandbox's network, IPC and UTS namespaces are
//! created by a short-lived child of the monitor and kept alive by bind mounts of
//! their `/proc/<pid>/ns/*` files, so containers of one pod can join them and no pause
//! process is needed. Removing them is unmounting those files (the runtime does).

use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::sys;

const PINNABLE: [(libc::c_int, &str); 3] = [
    (libc::CLONE_NEWNET, "net"),
    (libc::CLONE_NEWIPC, "ipc"),
    (libc::CLONE_NEWUTS, "uts"),
];

/// Forks a child that creates the namespaces, then bind-mounts its namespace files onto
/// `dir/<name>`; the child exits and the namespaces stay pinned.
pub fn pin_namespaces(
    dir: &Path,
    flags: i32,
    hostname: &str,
    sysctls: &[(String, String)],
) -> Result<()> {
    let id = dir.display().to_string();
    let (ready_r, ready_w) = sys::pipe().map_err(|e| Error::os(&id, "pipe", e))?;
    let (hold_r, hold_w) = sys::pipe().map_err(|e| Error::os(&id, "pipe", e))?;
    match sys::fork().map_err(|e| Error::os(&id, "fork", e))? {
        sys::Fork::Child => {
            drop((ready_r, hold_w));
            let res = (|| -> std::result::Result<(), String> {
                sys::unshare(flags).map_err(|e| format!("unshare: {e}"))?;
                if flags & libc::CLONE_NEWUTS != 0 && !hostname.is_empty() {
                    sys::sethostname(hostname).map_err(|e| format!("sethostname: {e}"))?;
                }
                for (k, v) in sysctls {
                    if k.contains('/') {
                        return Err(format!("invalid sysctl {k:?}"));
                    }
                    std::fs::write(format!("/proc/sys/{}", k.replace('.', "/")), v)
                        .map_err(|e| format!("sysctl {k}={v}: {e}"))?;
                }
                Ok(())
            })();
            let mut w = std::fs::File::from(ready_w);
            let _ = match &res {
                Ok(()) => w.write_all(b"+"),
                Err(m) => w.write_all(format!("-{m}").as_bytes()),
            };
            drop(w);
            // Stay alive until the parent has pinned the namespaces.
            let mut b = [0u8; 1];
            let _ = std::fs::File::from(hold_r).read(&mut b);
            sys::exit_now(0);
        }
        sys::Fork::Parent(pid) => {
            drop((ready_w, hold_r));
            let mut msg = String::new();
            let _ = std::fs::File::from(ready_r).read_to_string(&mut msg);
            let result = if let Some(err) = msg.strip_prefix('-') {
                Err(Error::Init {
                    id: id.clone(),
                    step: "create sandbox namespaces".into(),
                    message: err.into(),
                })
            } else if msg != "+" {
                Err(Error::Init {
                    id: id.clone(),
                    step: "create sandbox namespaces".into(),
                    message: "helper died".into(),
                })
            } else {
                let mut res = Ok(());
                for (flag, name) in PINNABLE {
                    if flags & flag == 0 {
                        continue;
                    }
                    let target = dir.join(name);
                    let r = std::fs::File::create(&target).and_then(|_| {
                        let src = sys::cstr(format!("/proc/{pid}/ns/{name}"))?;
                        sys::mount(Some(&src), &sys::cstr(&target)?, None, libc::MS_BIND, None)
                    });
                    if let Err(e) = r {
                        res = Err(Error::os(
                            &id,
                            format!("pin {name} namespace at {}", target.display()),
                            e,
                        ));
                        break;
                    }
                }
                res
            };
            drop(hold_w);
            let _ = sys::waitpid(pid);
            if result.is_err() {
                for (_, name) in PINNABLE {
                    let p = dir.join(name);
                    if let Ok(c) = sys::cstr(&p) {
                        let _ = sys::umount2(&c, libc::MNT_DETACH);
                    }
                    let _ = std::fs::remove_file(p);
                }
            }
            result
        }
    }
}
