//! Interactive exec sessions on the client side: the monitor hands over the process's
//! stdio descriptors (pipes, or the pty master) with its `exec_started` reply, and this
//! module turns them into async streams, a resize channel and a wait future.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::monitor::Reply;

/// A non-blocking descriptor (pipe end or pty master) as an async byte stream.
/// A pty master reports `EIO` once the terminal's last user is gone: that reads as
/// end of file. Shutting it down closes the descriptor (so a process reading the other
/// end of a stdin pipe sees end of file).
pub struct FdStream {
    fd: Option<AsyncFd<std::fs::File>>,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the stream was shut down")
}

impl FdStream {
    /// Wraps `fd` (made non-blocking). Needs a tokio runtime.
    pub fn new(fd: OwnedFd) -> io::Result<FdStream> {
        crate::sys::set_nonblocking(fd.as_fd(), true)?;
        let file = std::fs::File::from(fd);
        // SAFETY: the File owns its descriptor and is owned by the AsyncFd for its whole
        // life, so the descriptor stays open and the same.
        let fd = unsafe { AsyncFd::register(file) }
            .map_err(|e| io::Error::other(format!("register with the reactor: {e}")))?;
        Ok(FdStream { fd: Some(fd) })
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let fd = self.fd.as_ref().ok_or_else(closed)?;
            let mut guard = ready!(fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|f| io::Read::read(&mut f.get_ref(), unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let fd = self.fd.as_ref().ok_or_else(closed)?;
            let mut guard = ready!(fd.poll_write_ready(cx))?;
            match guard.try_io(|f| io::Write::write(&mut f.get_ref(), buf)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.fd = None;
        Poll::Ready(Ok(()))
    }
}

/// Reads the first reply of an exec request and the descriptors that came with it,
/// from a blocking stream. Returns the reply, the descriptors and any bytes already
/// read past the reply's line (the start of the next reply).
pub fn read_reply_with_fds(
    stream: &std::os::unix::net::UnixStream,
) -> io::Result<(Reply, Vec<OwnedFd>, Vec<u8>)> {
    let mut data = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(pos) = data.iter().position(|b| *b == b'\n') {
            let rest = data.split_off(pos + 1);
            let reply = serde_json::from_slice(&data)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            return Ok((reply, fds, rest));
        }
        let (n, got) = crate::pty::recv_fds(stream.as_fd(), &mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        fds.extend(got);
        data.extend_from_slice(&buf[..n]);
    }
}

/// Resizes the terminal behind `master` on every message until the sender is dropped.
pub fn resize_task(master: OwnedFd) -> tokio::sync::mpsc::Sender<(u16, u16)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u16, u16)>(8);
    tokio::spawn(async move {
        while let Some((cols, rows)) = rx.recv().await {
            if let Err(e) = crate::pty::set_size(master.as_fd(), cols, rows) {
                tracing::debug!(fd = master.as_raw_fd(), error = %e, "terminal resize failed");
            }
        }
    });
    tx
}
