//! Running one plugin binary: environment, stdin, stdout, stderr, timeout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::types::CniError;
use crate::error::{NetworkError, Result};

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    /// Attach.
    Add,
    /// Detach.
    Del,
    /// Verify an attachment.
    Check,
    /// Is the plugin ready for ADDs.
    Status,
    /// Release resources of attachments not in a valid list.
    Gc,
    /// Which versions the plugin speaks.
    Version,
}

impl CniCommand {
    /// The value of `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Status => "STATUS",
            CniCommand::Gc => "GC",
            CniCommand::Version => "VERSION",
        }
    }
}

/// The per-attachment part of a plugin's environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct AttachmentEnv {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

/// Finds the binary for plugin `plugin_type` on `path`.
pub fn find_plugin(plugin_type: &str, path: &[PathBuf]) -> Result<PathBuf> {
    path.iter()
        .map(|dir| dir.join(plugin_type))
        .find(|p| p.is_file())
        .ok_or_else(|| NetworkError::PluginNotFound {
            plugin: plugin_type.to_string(),
            path: path.to_vec(),
        })
}

/// One plugin run: the binary, what to tell it, how long to wait.
pub(crate) struct Invocation<'a> {
    pub binary: &'a Path,
    pub plugin_type: &'a str,
    pub network: &'a str,
    pub command: CniCommand,
    pub attachment: Option<&'a AttachmentEnv>,
    pub cni_path: &'a [PathBuf],
    pub timeout: Duration,
}

impl Invocation<'_> {
    /// Runs the plugin with `stdin`; returns its stdout on success. A non-zero exit
    /// becomes [`NetworkError::PluginFailed`] with the error object the plugin printed.
    pub async fn run(&self, stdin: &[u8]) -> Result<Vec<u8>> {
        let command = self.command.as_str();
        let mut cmd = Command::new(self.binary);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_PATH", join_path(self.cni_path))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(a) = self.attachment {
            cmd.env("CNI_CONTAINERID", &a.container_id)
                .env("CNI_NETNS", &a.netns)
                .env("CNI_IFNAME", &a.ifname)
                .env("CNI_ARGS", &a.args);
        }
        let mut child = self.spawn(&mut cmd)?;
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = stdin.to_vec();
        // Feed stdin concurrently: a plugin may answer before reading all of it.
        let feeder = tokio::spawn(async move {
            let _ = pipe.write_all(&input).await;
        });
        let output = tokio::time::timeout(self.timeout, child.wait_with_output()).await;
        feeder.abort();
        let output = match output {
            Ok(out) => out.map_err(|source| NetworkError::PluginSpawn {
                plugin: self.plugin_type.to_string(),
                command,
                source,
            })?,
            // Dropping the future drops the child, which kill_on_drop kills and tokio reaps.
            Err(_) => {
                return Err(NetworkError::PluginTimeout {
                    plugin: self.plugin_type.to_string(),
                    command,
                    timeout: self.timeout,
                })
            }
        };
        if !output.stderr.is_empty() {
            tracing::debug!(
                plugin = self.plugin_type,
                command,
                stderr = %String::from_utf8_lossy(&output.stderr).trim_end(),
                "CNI plugin stderr"
            );
        }
        if output.status.success() {
            return Ok(output.stdout);
        }
        let error =
            serde_json::from_slice::<CniError>(&output.stdout).unwrap_or_else(|_| CniError {
                code: 0,
                msg: format!("exited with {} without a CNI error object", output.status),
                details: excerpt(&output.stdout, &output.stderr),
            });
        Err(NetworkError::PluginFailed {
            plugin: self.plugin_type.to_string(),
            command,
            network: self.network.to_string(),
            error,
        })
    }

    fn spawn(&self, cmd: &mut Command) -> Result<tokio::process::Child> {
        // A binary written by another thread of this process may still be open for
        // writing in a concurrently forked child: ETXTBSY is transient, as libcni knows.
        let mut attempts = 0;
        loop {
            match cmd.spawn() {
                Ok(child) => return Ok(child),
                Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && attempts < 20 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(source) => {
                    return Err(NetworkError::PluginSpawn {
                        plugin: self.plugin_type.to_string(),
                        command: self.command.as_str(),
                        source,
                    })
                }
            }
        }
    }
}

fn join_path(path: &[PathBuf]) -> String {
    path.iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join(":")
}

fn excerpt(stdout: &[u8], stderr: &[u8]) -> String {
    let cut = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let s = s.trim();
        match s.char_indices().nth(300) {
            Some((i, _)) => format!("{}…", &s[..i]),
            None => s.to_string(),
        }
    };
    format!("stdout: {:?}; stderr: {:?}", cut(stdout), cut(stderr))
}
