//! Attach, on the monitor's side: the stdio of a container whose streams pass through
//! the monitor, and the clients attached to it.
//!
//! Each attacher gets its own output pipes, which the monitor fills (non-blocking) as
//! it copies the container's output to the log; one that falls a pipe's worth behind is
//! detached, so it never slows the container or the others. Input never passes through
//! the monitor: an attacher writes the container's stdin pipe or pty master itself,
//! with a copy of the descriptor kept here. This module owns those descriptors; it does
//! not poll, read the container's output or talk to clients (the monitor does).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::logs::Stream;
use crate::protocol::Reply;
use crate::sys;

/// How a container's stdin is set up (from its create request).
#[derive(Debug, Clone, Copy, Default)]
pub struct StdinMode {
    /// Keep stdin open: a pipe attachers write to.
    pub stdin: bool,
    /// Hand the pipe itself to the first attacher that writes stdin, so the container
    /// reads end of file once that attacher closes it (Kubernetes' `stdinOnce`).
    pub stdin_once: bool,
}

/// The stdio of a container whose streams pass through the monitor.
pub struct ContainerIo {
    /// The write end of its stdin pipe (kept so the container does not read end of
    /// file while nobody is attached; handed over with `stdin_once`).
    input: Option<OwnedFd>,
    /// Its pty master (terminal containers), shared with the monitor's reader of its
    /// output; attachers get a copy.
    console: Option<Rc<File>>,
    mode: StdinMode,
    attachers: Vec<Attacher>,
}

/// One attached client: the write ends of its output pipes (non-blocking).
struct Attacher {
    client: usize,
    out: Option<std::fs::File>,
    /// None with a terminal (one stream).
    err: Option<std::fs::File>,
    /// What its pipes hold (what it may fall behind before it is detached).
    capacity: usize,
}

/// An attacher detached because it fell behind the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagging {
    /// Its client.
    pub client: usize,
    /// What its pipe held.
    pub capacity: usize,
}

/// What an attacher's output pipe is asked to hold (`F_SETPIPE_SZ`; the kernel may
/// round it or refuse, and the pipe's actual size is what counts).
const ATTACH_PIPE_BYTES: i32 = 1 << 20;

/// A pipe's default size, when `F_SETPIPE_SZ` is refused.
const DEFAULT_PIPE_BYTES: usize = 64 * 1024;

impl ContainerIo {
    /// The stdio of a container created with `mode`: `input` is the write end of its
    /// stdin pipe, `console` its pty master.
    pub fn new(input: Option<OwnedFd>, console: Option<Rc<File>>, mode: StdinMode) -> Self {
        ContainerIo {
            input,
            console,
            mode,
            attachers: Vec::new(),
        }
    }

    /// Registers client `client` as an attacher: the `attached` reply and the
    /// descriptors that go with it. With `want_stdin` it may write the container's
    /// stdin; only such an attacher takes a `stdin_once` container's pipe.
    pub fn attach(
        &mut self,
        id: &str,
        client: usize,
        want_stdin: bool,
    ) -> Result<(Reply, Vec<OwnedFd>)> {
        let os = |what: &str, e| Error::os(id, what.to_string(), e);
        let mut fds = Vec::new();
        let mut capacity = usize::MAX;
        let mut pipe_to_attacher = || -> Result<std::fs::File> {
            let (r, w) = sys::pipe().map_err(|e| os("pipe", e))?;
            sys::set_nonblocking(w.as_fd(), true).map_err(|e| os("pipe", e))?;
            // A larger buffer absorbs bursts; the default also works.
            let size = sys::set_pipe_size(w.as_fd(), ATTACH_PIPE_BYTES)
                .map(|n| n as usize)
                .unwrap_or(DEFAULT_PIPE_BYTES);
            capacity = capacity.min(size);
            fds.push(r);
            Ok(std::fs::File::from(w))
        };
        let out = pipe_to_attacher()?;
        let terminal = self.console.is_some();
        let err = if terminal {
            None
        } else {
            Some(pipe_to_attacher()?)
        };
        let mut stdin = false;
        if let Some(master) = &self.console {
            // Also for resizing: a reader-only attacher gets it, but no stdin stream.
            let copy = master
                .try_clone()
                .map_err(|e| os("dup the pty master", e))?;
            fds.push(copy.into());
            stdin = self.mode.stdin && want_stdin;
        } else if want_stdin {
            let input = if self.mode.stdin_once {
                self.input.take()
            } else {
                let copy = self.input.as_ref().map(OwnedFd::try_clone);
                copy.transpose().map_err(|e| os("dup stdin", e))?
            };
            if let Some(w) = input {
                fds.push(w);
                stdin = true;
            }
        }
        self.attachers.push(Attacher {
            client,
            out: Some(out),
            err,
            capacity,
        });
        Ok((Reply::Attached { terminal, stdin }, fds))
    }

    /// Forgets the attachers whose client is gone (`alive` says which remain).
    pub fn detach_gone(&mut self, alive: impl Fn(usize) -> bool) {
        self.attachers.retain(|a| alive(a.client));
    }

    /// Closes every attacher's pipes (end of file) and returns their clients.
    pub fn end(self) -> Vec<usize> {
        self.attachers.into_iter().map(|a| a.client).collect()
    }

    /// Copies output to every attacher; returns the attachers that fell behind (a
    /// full pipe), which are detached (their pipes closed).
    pub fn fan_out(&mut self, stream: Stream, data: &[u8]) -> Vec<Lagging> {
        let mut lagging = Vec::new();
        self.attachers.retain_mut(|a| {
            let slot = match stream {
                Stream::Stderr if a.err.is_some() => &mut a.err,
                _ => &mut a.out,
            };
            let Some(f) = slot else { return true };
            match write_nonblocking(f, data) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    lagging.push(Lagging {
                        client: a.client,
                        capacity: a.capacity,
                    });
                    false
                }
                // The attacher closed this stream: keep it for the exit code.
                Err(_) => {
                    *slot = None;
                    true
                }
            }
        });
        lagging
    }
}

/// Writes all of `data` to a non-blocking descriptor, or fails (`WouldBlock` when full).
fn write_nonblocking(mut f: &std::fs::File, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match f.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn attacher(client: usize) -> (Attacher, OwnedFd, OwnedFd) {
        let (out_r, out_w) = sys::pipe().unwrap();
        let (err_r, err_w) = sys::pipe().unwrap();
        for w in [&out_w, &err_w] {
            sys::set_nonblocking(w.as_fd(), true).unwrap();
        }
        let a = Attacher {
            client,
            out: Some(out_w.into()),
            err: Some(err_w.into()),
            capacity: DEFAULT_PIPE_BYTES,
        };
        (a, out_r, err_r)
    }

    fn io_with(attachers: Vec<Attacher>) -> ContainerIo {
        ContainerIo {
            attachers,
            ..ContainerIo::new(None, None, StdinMode::default())
        }
    }

    fn read_now(fd: OwnedFd) -> Vec<u8> {
        sys::set_nonblocking(fd.as_fd(), true).unwrap();
        let mut out = Vec::new();
        let _ = std::fs::File::from(fd).read_to_end(&mut out);
        out
    }

    #[test]
    fn output_reaches_every_attacher_on_its_stream() {
        let (a, a_out, a_err) = attacher(1);
        let (b, b_out, b_err) = attacher(2);
        let mut io = io_with(vec![a, b]);
        assert!(io.fan_out(Stream::Stdout, b"out\n").is_empty());
        assert!(io.fan_out(Stream::Stderr, b"err\n").is_empty());
        drop(io);
        assert_eq!(read_now(a_out), b"out\n");
        assert_eq!(read_now(a_err), b"err\n");
        assert_eq!(read_now(b_out), b"out\n");
        assert_eq!(read_now(b_err), b"err\n");
    }

    #[test]
    fn a_lagging_attacher_is_detached_and_a_closed_stream_dropped() {
        let (slow, _slow_out, _slow_err) = attacher(1);
        let (gone, gone_out, _gone_err) = attacher(2);
        let (ok, ok_out, _ok_err) = attacher(3);
        drop(gone_out);
        let mut io = io_with(vec![slow, gone, ok]);
        // Keep the third attacher reading; the first never reads: once its pipe is
        // full it is detached, and the others are undisturbed.
        let mut reader = std::fs::File::from(ok_out);
        sys::set_nonblocking(reader.as_fd(), true).unwrap();
        let chunk = vec![b'x'; 16 * 1024];
        let mut lagging = Vec::new();
        let mut received = 0;
        for _ in 0..4096 {
            lagging = io.fan_out(Stream::Stdout, &chunk);
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                received += n;
            }
            if !lagging.is_empty() {
                break;
            }
        }
        assert_eq!(
            lagging,
            vec![Lagging {
                client: 1,
                capacity: DEFAULT_PIPE_BYTES
            }]
        );
        let clients: Vec<usize> = io.attachers.iter().map(|a| a.client).collect();
        assert_eq!(clients, vec![2, 3]);
        // The closed stream is forgotten, the attacher kept (it still gets the code).
        assert!(io.attachers[0].out.is_none() && io.attachers[0].err.is_some());
        assert!(received > 64 * 1024);
    }

    fn stdin_io(mode: StdinMode) -> (ContainerIo, OwnedFd) {
        let (r, w) = sys::pipe().unwrap();
        (ContainerIo::new(Some(w), None, mode), r)
    }

    #[test]
    fn only_a_stdin_attacher_takes_a_stdin_once_pipe() {
        let once = StdinMode {
            stdin: true,
            stdin_once: true,
        };
        let (mut io, _r) = stdin_io(once);
        // Output only: two pipes, no stdin; the pipe stays with the monitor.
        let (reply, fds) = io.attach("c", 1, false).unwrap();
        assert!(matches!(
            reply,
            Reply::Attached {
                terminal: false,
                stdin: false
            }
        ));
        assert_eq!(fds.len(), 2);
        assert!(io.input.is_some());
        // The first stdin attacher takes it; a later one gets none.
        let (reply, fds) = io.attach("c", 2, true).unwrap();
        assert!(matches!(reply, Reply::Attached { stdin: true, .. }));
        assert_eq!(fds.len(), 3);
        assert!(io.input.is_none());
        let (reply, fds) = io.attach("c", 3, true).unwrap();
        assert!(matches!(reply, Reply::Attached { stdin: false, .. }));
        assert_eq!(fds.len(), 2);
    }

    #[test]
    fn a_stdin_attacher_gets_a_copy_when_stdin_stays_open() {
        let open = StdinMode {
            stdin: true,
            stdin_once: false,
        };
        let (mut io, _r) = stdin_io(open);
        for client in 1..3 {
            let (reply, fds) = io.attach("c", client, true).unwrap();
            assert!(matches!(reply, Reply::Attached { stdin: true, .. }));
            assert_eq!(fds.len(), 3);
        }
        assert!(io.input.is_some());
        let (_, fds) = io.attach("c", 3, false).unwrap();
        assert_eq!(fds.len(), 2);
        assert_eq!(io.end(), vec![1, 2, 3]);
    }
}
