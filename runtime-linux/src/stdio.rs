//! The standard streams of a process the monitor forks (a container's init, or a
//! process exec'd into a container): `/dev/null`, or pipes whose other ends the
//! monitor keeps (to log and fan out output, to hold stdin open) or hands to a client.
//! Made before the fork; after it, [`ChildStdio::into_parent_ends`] closes the child's
//! ends so the monitor sees end of file when the process's side is gone.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::error::{Error, Result};
use crate::logs::Stream;
use crate::sys;

/// A forked process's stdin, stdout and stderr, before the fork.
pub struct ChildStdio {
    /// `/dev/null` opened for reading, when stdin is not a pipe.
    null_in: Option<File>,
    /// `/dev/null` opened for writing, when the output is not piped.
    null_out: Option<File>,
    /// (read, write) of the stdin pipe.
    stdin: Option<(OwnedFd, OwnedFd)>,
    /// (read, write) of the stdout and stderr pipes.
    output: Option<[(OwnedFd, OwnedFd); 2]>,
}

/// The monitor's ends of a forked process's pipes.
pub struct ParentEnds {
    /// The write end of its stdin pipe.
    pub stdin: Option<OwnedFd>,
    /// The read ends of its stdout and stderr pipes (empty when not piped).
    pub output: Vec<(OwnedFd, Stream)>,
}

impl ChildStdio {
    /// Pipes for stdin (with `stdin`) and for stdout and stderr (with `output`);
    /// `/dev/null` for the others. `id` names the container in errors.
    pub fn new(id: &str, stdin: bool, output: bool) -> Result<ChildStdio> {
        let pipe = || sys::pipe().map_err(|e| Error::os(id, "pipe", e));
        let null = |write: bool| {
            std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .open("/dev/null")
                .map_err(|e| Error::os(id, "open /dev/null", e))
        };
        Ok(ChildStdio {
            null_in: (!stdin).then(|| null(false)).transpose()?,
            null_out: (!output).then(|| null(true)).transpose()?,
            stdin: stdin.then(pipe).transpose()?,
            output: if output {
                Some([pipe()?, pipe()?])
            } else {
                None
            },
        })
    }

    /// The descriptors to install as the process's 0, 1 and 2.
    pub fn fds(&self) -> [Option<RawFd>; 3] {
        let null_in = self.null_in.as_ref().map(AsRawFd::as_raw_fd);
        let null_out = self.null_out.as_ref().map(AsRawFd::as_raw_fd);
        let stdin = self.stdin.as_ref().map(|(r, _)| r.as_raw_fd()).or(null_in);
        let [out, err] = match &self.output {
            Some([(_, out), (_, err)]) => [Some(out.as_raw_fd()), Some(err.as_raw_fd())],
            None => [null_out, null_out],
        };
        [stdin, out, err]
    }

    /// Once the process is forked: closes its ends and returns the monitor's.
    pub fn into_parent_ends(self) -> ParentEnds {
        let output = self
            .output
            .map(|[(out, _), (err, _)]| vec![(out, Stream::Stdout), (err, Stream::Stderr)])
            .unwrap_or_default();
        ParentEnds {
            stdin: self.stdin.map(|(_, w)| w),
            output,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn pipes_connect_the_child_ends_to_the_parent_ends() {
        let stdio = ChildStdio::new("c", true, true).unwrap();
        let [stdin, out, err] = stdio.fds();
        // The process's descriptors 0, 1 and 2 (the same pipes, opened anew).
        let reopen = |fd: Option<RawFd>, write: bool| {
            std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .open(format!("/proc/self/fd/{}", fd.unwrap()))
                .unwrap()
        };
        let (mut stdin, mut out, mut err) =
            (reopen(stdin, false), reopen(out, true), reopen(err, true));
        let ends = stdio.into_parent_ends();
        File::from(ends.stdin.unwrap()).write_all(b"in").unwrap();
        out.write_all(b"out").unwrap();
        err.write_all(b"err").unwrap();
        drop((out, err));
        let mut got = [0u8; 2];
        stdin.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"in");
        // The child's write ends are closed: reading the output ends meets end of file.
        for ((fd, stream), want) in ends.output.into_iter().zip(["out", "err"]) {
            let mut s = String::new();
            File::from(fd).read_to_string(&mut s).unwrap();
            assert_eq!(s, want, "{stream:?}");
        }
    }

    #[test]
    fn streams_not_piped_are_dev_null() {
        let stdio = ChildStdio::new("c", false, false).unwrap();
        for fd in stdio.fds() {
            let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.unwrap())).unwrap();
            assert_eq!(link, std::path::Path::new("/dev/null"));
        }
        let ends = stdio.into_parent_ends();
        assert!(ends.stdin.is_none() && ends.output.is_empty());
    }
}
