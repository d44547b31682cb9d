//! Container output in the CRI log format, with size-based rotation.
//!
//! Each line is `<RFC 3339 nano timestamp> <stream> <tag> <message>`, the tag being `F`
//! for a full line and `P` for a partial one (a line longer than 16 KiB is split, and
//! the last piece gets `F`). When the file grows past `max_bytes` it is renamed to
//! `<name>.1` (older files shift up, at most `max_files` kept in total) and reopened.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where and how much to log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogTarget {
    /// The log file.
    pub path: PathBuf,
    /// Rotate past this size (0: never).
    pub max_bytes: u64,
    /// Files kept, the live one included (at least 1).
    pub max_files: u32,
}

/// Maximum length of one log line's message before it is split.
pub const MAX_LINE: usize = 16 * 1024;

/// A CRI log file being written.
#[derive(Debug)]
pub struct CriLog {
    target: LogTarget,
    file: File,
    size: u64,
    pending: [Vec<u8>; 2],
}

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl CriLog {
    /// Opens (appends to) the target's file.
    pub fn open(target: LogTarget) -> io::Result<CriLog> {
        if let Some(dir) = target.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::options()
            .create(true)
            .append(true)
            .open(&target.path)?;
        let size = file.metadata()?.len();
        Ok(CriLog {
            target,
            file,
            size,
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Logs a chunk read from `stream`; complete lines are written, a trailing partial
    /// line waits for more (or for [`CriLog::flush_stream`]).
    pub fn write(&mut self, stream: Stream, data: &[u8], now: &str) -> io::Result<()> {
        let idx = stream as usize;
        let mut buf = std::mem::take(&mut self.pending[idx]);
        buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = buf[start..start + pos].to_vec();
            self.emit_line(stream, &line, now)?;
            start += pos + 1;
        }
        let mut rest = buf.split_off(start);
        while rest.len() > MAX_LINE {
            let tail = rest.split_off(MAX_LINE);
            self.emit(stream, "P", &rest, now)?;
            rest = tail;
        }
        self.pending[idx] = rest;
        Ok(())
    }

    /// Writes what is left of `stream` (at EOF).
    pub fn flush_stream(&mut self, stream: Stream, now: &str) -> io::Result<()> {
        let rest = std::mem::take(&mut self.pending[stream as usize]);
        if !rest.is_empty() {
            self.emit(stream, "F", &rest, now)?;
        }
        Ok(())
    }

    fn emit_line(&mut self, stream: Stream, line: &[u8], now: &str) -> io::Result<()> {
        let mut chunks = line.chunks(MAX_LINE).peekable();
        if chunks.peek().is_none() {
            return self.emit(stream, "F", b"", now);
        }
        while let Some(c) = chunks.next() {
            let tag = if chunks.peek().is_some() { "P" } else { "F" };
            self.emit(stream, tag, c, now)?;
        }
        Ok(())
    }

    fn emit(&mut self, stream: Stream, tag: &str, msg: &[u8], now: &str) -> io::Result<()> {
        let mut line = Vec::with_capacity(msg.len() + 48);
        line.extend_from_slice(now.as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.name().as_bytes());
        line.push(b' ');
        line.extend_from_slice(tag.as_bytes());
        line.push(b' ');
        line.extend_from_slice(msg);
        line.push(b'\n');
        if self.target.max_bytes > 0
            && self.size > 0
            && self.size + line.len() as u64 > self.target.max_bytes
        {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.target.max_files.max(1);
        let name = |n: u32| -> PathBuf { rotated(&self.target.path, n) };
        if keep == 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(name(keep - 1));
        for n in (1..keep - 1).rev() {
            let _ = std::fs::rename(name(n), name(n + 1));
        }
        std::fs::rename(&self.target.path, name(1))?;
        self.file = File::options()
            .create(true)
            .append(true)
            .open(&self.target.path)?;
        self.size = 0;
        Ok(())
    }
}

/// `<path>.<n>`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Parses one CRI log line into (timestamp, stream, full-line?, message).
pub fn parse_line(line: &str) -> Option<(&str, &str, bool, &str)> {
    let mut it = line.splitn(4, ' ');
    let ts = it.next()?;
    let stream = it.next()?;
    let tag = it.next()?;
    let msg = it.next().unwrap_or("");
    Some((ts, stream, tag == "F", msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wharf-logs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn lines_and_partials() {
        let d = tmp("lines");
        let path = d.join("c.log");
        let mut log = CriLog::open(LogTarget {
            path: path.clone(),
            max_bytes: 0,
            max_files: 1,
        })
        .unwrap();
        log.write(Stream::Stdout, b"hello\nwor", "T").unwrap();
        log.write(Stream::Stderr, b"oops\n", "T").unwrap();
        log.write(Stream::Stdout, b"ld\n", "T").unwrap();
        log.write(Stream::Stdout, b"tail", "T").unwrap();
        log.flush_stream(Stream::Stdout, "T").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "T stdout F hello\nT stderr F oops\nT stdout F world\nT stdout F tail\n"
        );
        assert_eq!(
            parse_line("T stdout P ab c"),
            Some(("T", "stdout", false, "ab c"))
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn long_line_is_split() {
        let d = tmp("long");
        let path = d.join("c.log");
        let mut log = CriLog::open(LogTarget {
            path: path.clone(),
            max_bytes: 0,
            max_files: 1,
        })
        .unwrap();
        let mut data = vec![b'x'; MAX_LINE + 10];
        data.push(b'\n');
        log.write(Stream::Stdout, &data, "T").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let tags: Vec<bool> = text.lines().map(|l| parse_line(l).unwrap().2).collect();
        assert_eq!(tags, vec![false, true]);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn rotation_keeps_max_files() {
        let d = tmp("rotate");
        let path = d.join("c.log");
        let mut log = CriLog::open(LogTarget {
            path: path.clone(),
            max_bytes: 64,
            max_files: 3,
        })
        .unwrap();
        for i in 0..20 {
            log.write(
                Stream::Stdout,
                format!("line number {i:02}\n").as_bytes(),
                "T",
            )
            .unwrap();
        }
        assert!(path.exists() && rotated(&path, 1).exists() && rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists());
        assert!(std::fs::metadata(&path).unwrap().len() <= 64);
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.contains("line number 19"));
        std::fs::remove_dir_all(d).unwrap();
    }
}
