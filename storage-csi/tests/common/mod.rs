//! Shared test setup: a hostpath driver on a real unix socket in a temporary directory.
#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wharf_core::backend::volume::{AccessMode, AccessType, VolumeCapability};
use wharf_storage_csi::mount::{Mounter, RecordedMounts};
use wharf_storage_csi::server::RunningDriver;
use wharf_storage_csi::{ClientOptions, CsiPlugin, HostPathConfig, HostPathDriver, RetryPolicy};

pub const NODE: &str = "node-1";
pub const GIB: u64 = 1 << 30;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub mounts: Arc<dyn Mounter>,
    pub recorded: Option<Arc<RecordedMounts>>,
    pub running: Option<RunningDriver>,
}

impl Harness {
    /// A driver with recorded (fake) mounts: runs without root.
    pub fn recorded() -> Harness {
        let recorded = Arc::new(RecordedMounts::new());
        let mut h = Harness {
            dir: tempfile::tempdir().unwrap(),
            mounts: recorded.clone(),
            recorded: Some(recorded),
            running: None,
        };
        h.start();
        h
    }

    /// A driver making real mounts (root).
    pub fn real() -> Harness {
        let mut h = Harness {
            dir: tempfile::tempdir().unwrap(),
            mounts: Arc::new(wharf_storage_csi::mount::LinuxMounter),
            recorded: None,
            running: None,
        };
        h.start();
        h
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("driver")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("csi.sock")
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn config(&self) -> HostPathConfig {
        HostPathConfig::new(NODE, self.root())
            .unwrap()
            .with_capacity(10 * GIB)
    }

    pub fn driver(&self) -> HostPathDriver {
        HostPathDriver::with_mounter(self.config(), self.mounts.clone()).unwrap()
    }

    pub fn start(&mut self) {
        self.running = Some(RunningDriver::spawn(self.driver(), self.socket()).unwrap());
    }

    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
    }

    pub async fn client(&self) -> CsiPlugin {
        CsiPlugin::connect(&self.endpoint(), options())
            .await
            .unwrap()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn volume_dir(&self, id: &str) -> PathBuf {
        self.root().join("volumes").join(id)
    }
}

pub fn options() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy {
            call_timeout: Duration::from_secs(5),
            max_attempts: 8,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
        },
        ready_timeout: Duration::from_secs(10),
    }
}

pub fn rwo() -> VolumeCapability {
    VolumeCapability {
        access_type: AccessType::Mount {
            fs_type: String::new(),
            mount_flags: vec![],
        },
        access_mode: AccessMode::SingleNodeWriter,
    }
}

pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Whether the tests run as root (real mounts need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Even when a test fails half-way, leave no mount behind.
        if self.recorded.is_none() {
            for mount in mounts_under(self.dir.path()) {
                let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}
