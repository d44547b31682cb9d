//! In-tree volume sources through `LocalVolumes`: configMap atomic updates seen by a
//! concurrent reader, optional sources, hostPath teardown; and, as root, secrets and
//! memory emptyDirs on tmpfs with the requested modes and sizes, with nothing left behind.

#![allow(missing_docs)]
mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{is_root, mounts_under};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, EmptyDirVolumeSource, HostPathVolumeSource, KeyToPath, Pod,
    Secret, SecretVolumeSource, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use wharf_storage_csi::intree::{LocalVolumes, ObjectLookup, StaticObjects};
use wharf_storage_csi::mount::{LinuxMounter, Mounter, RecordedMounts};

/// Objects that can change while volumes are mounted.
#[derive(Default)]
struct MutableObjects(std::sync::Mutex<StaticObjects>);

#[async_trait::async_trait]
impl ObjectLookup for MutableObjects {
    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<ConfigMap>, String> {
        let objects = self.0.lock().unwrap().clone();
        objects.config_map(ns, name).await
    }
    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Secret>, String> {
        let objects = self.0.lock().unwrap().clone();
        objects.secret(ns, name).await
    }
}

fn pod() -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("p".into()),
            namespace: Some("ns".into()),
            uid: Some("uid-1".into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn config_map(value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("cfg".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("config".to_string(), value.repeat(64 * 1024)),
            ("other".to_string(), "x".into()),
        ])),
        ..Default::default()
    }
}

fn cm_volume(optional: bool, name: &str) -> Volume {
    Volume {
        name: "cfg".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: name.into(),
            optional: Some(optional),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_map_updates_are_atomic_for_a_running_reader() {
    let dir = tempfile::tempdir().unwrap();
    let objects = Arc::new(MutableObjects::default());
    objects
        .0
        .lock()
        .unwrap()
        .config_maps
        .insert("ns/cfg".into(), config_map("A"));
    let volumes = LocalVolumes::new(Arc::new(RecordedMounts::new()), objects.clone());
    let target = dir.path().join("vol");
    volumes
        .setup(&pod(), &cm_volume(false, "cfg"), &target)
        .await
        .unwrap();

    // A reader that must only ever see a whole old or a whole new file.
    let stop = Arc::new(AtomicBool::new(false));
    let file = target.join("config");
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                let content = std::fs::read(&file).expect("the file never disappears");
                assert_eq!(content.len(), 64 * 1024, "never a partial file");
                assert!(
                    content.iter().all(|b| *b == content[0]),
                    "never a mix of versions"
                );
                seen.insert(content[0]);
                reads += 1;
            }
            (reads, seen)
        })
    };
    for i in 0..200 {
        let value = if i % 2 == 0 { "B" } else { "A" };
        objects
            .0
            .lock()
            .unwrap()
            .config_maps
            .insert("ns/cfg".into(), config_map(value));
        volumes
            .setup(&pod(), &cm_volume(false, "cfg"), &target)
            .await
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, seen) = reader.join().unwrap();
    assert!(reads > 0);
    assert!(!seen.is_empty());
    assert_eq!(std::fs::read_to_string(target.join("other")).unwrap(), "x");
    volumes
        .teardown(&pod(), &cm_volume(false, "cfg"), &target)
        .await
        .unwrap();
    assert!(!target.exists());
}

#[tokio::test]
async fn optional_and_missing_sources() {
    let dir = tempfile::tempdir().unwrap();
    let volumes = LocalVolumes::new(
        Arc::new(RecordedMounts::new()),
        Arc::new(StaticObjects::default()),
    );
    let target = dir.path().join("vol");
    let err = volumes
        .setup(&pod(), &cm_volume(false, "absent"), &target)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("configmap ns/absent not found"),
        "{err}"
    );
    volumes
        .setup(&pod(), &cm_volume(true, "absent"), &target)
        .await
        .unwrap();
    assert!(
        target.join("..data").exists(),
        "an optional missing configMap is an empty volume"
    );
    volumes
        .teardown(&pod(), &cm_volume(true, "absent"), &target)
        .await
        .unwrap();
}

#[tokio::test]
async fn host_path_is_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    let volume = Volume {
        name: "h".into(),
        host_path: Some(HostPathVolumeSource {
            path: host.display().to_string(),
            type_: Some("DirectoryOrCreate".into()),
        }),
        ..Default::default()
    };
    let volumes = LocalVolumes::new(
        Arc::new(RecordedMounts::new()),
        Arc::new(StaticObjects::default()),
    );
    assert_eq!(
        volumes
            .setup(&pod(), &volume, &dir.path().join("unused"))
            .await
            .unwrap(),
        host
    );
    std::fs::write(host.join("keep"), b"1").unwrap();
    volumes.teardown(&pod(), &volume, &host).await.unwrap();
    assert!(host.join("keep").exists());
}

#[tokio::test]
async fn disk_empty_dir_size_limit_is_measured() {
    let dir = tempfile::tempdir().unwrap();
    let volumes = LocalVolumes::new(
        Arc::new(RecordedMounts::new()),
        Arc::new(StaticObjects::default()),
    );
    let volume = Volume {
        name: "scratch".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(Quantity("16Ki".into())),
        }),
        ..Default::default()
    };
    let target = dir.path().join("scratch");
    volumes.setup(&pod(), &volume, &target).await.unwrap();
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o777
    );
    assert_eq!(volumes.size_limit_exceeded(&volume, &target).unwrap(), None);
    std::fs::write(target.join("big"), vec![1u8; 64 * 1024]).unwrap();
    let (used, limit) = volumes
        .size_limit_exceeded(&volume, &target)
        .unwrap()
        .unwrap();
    assert!(used > limit && limit == 16 * 1024);
    volumes.teardown(&pod(), &volume, &target).await.unwrap();
    assert!(!target.exists());
}

fn fs_type(path: &Path) -> String {
    let canonical = std::fs::canonicalize(path).unwrap();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .rev()
        .filter(|l| l.split(' ').nth(4).map(Path::new) == Some(canonical.as_path()))
        .filter_map(|l| l.split(" - ").nth(1)?.split(' ').next().map(str::to_string))
        .next()
        .unwrap_or_default()
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        for m in mounts_under(&self.0) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[tokio::test]
async fn root_secret_files_have_their_modes_on_tmpfs() {
    if !is_root() {
        eprintln!("skipped: needs root for tmpfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _guard = Unmount(dir.path().to_path_buf());
    let mut objects = StaticObjects::default();
    objects.secrets.insert(
        "ns/creds".into(),
        Secret {
            data: Some(BTreeMap::from([
                ("user".to_string(), ByteString(b"admin".to_vec())),
                ("password".to_string(), ByteString(b"s3cret".to_vec())),
            ])),
            ..Default::default()
        },
    );
    let mounter: Arc<dyn Mounter> = Arc::new(LinuxMounter);
    let volumes = LocalVolumes::new(mounter, Arc::new(objects));
    let volume = Volume {
        name: "creds".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some("creds".into()),
            default_mode: Some(0o400),
            items: Some(vec![
                KeyToPath {
                    key: "user".into(),
                    path: "user".into(),
                    mode: None,
                },
                KeyToPath {
                    key: "password".into(),
                    path: "nested/pw".into(),
                    mode: Some(0o600),
                },
            ]),
            optional: None,
        }),
        ..Default::default()
    };
    let target = dir.path().join("creds");
    volumes.setup(&pod(), &volume, &target).await.unwrap();
    assert_eq!(fs_type(&target), "tmpfs");
    let mode = |p: &str| {
        std::fs::metadata(target.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("user"), 0o400);
    assert_eq!(mode("nested/pw"), 0o600);
    assert_eq!(std::fs::read(target.join("nested/pw")).unwrap(), b"s3cret");
    // Setting up again (a refresh) keeps the one tmpfs.
    volumes.setup(&pod(), &volume, &target).await.unwrap();
    assert_eq!(mounts_under(dir.path()).len(), 1);
    volumes.teardown(&pod(), &volume, &target).await.unwrap();
    assert!(mounts_under(dir.path()).is_empty());
    assert!(!target.exists());
}

#[tokio::test]
async fn root_memory_empty_dir_is_a_sized_tmpfs() {
    if !is_root() {
        eprintln!("skipped: needs root for tmpfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _guard = Unmount(dir.path().to_path_buf());
    let volumes = LocalVolumes::new(Arc::new(LinuxMounter), Arc::new(StaticObjects::default()));
    let volume = Volume {
        name: "cache".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity("8Mi".into())),
        }),
        ..Default::default()
    };
    let target = dir.path().join("cache");
    volumes.setup(&pod(), &volume, &target).await.unwrap();
    assert_eq!(fs_type(&target), "tmpfs");
    let stat = nix::sys::statvfs::statvfs(&target).unwrap();
    assert_eq!(stat.blocks() as u64 * stat.fragment_size() as u64, 8 << 20);
    let err = std::fs::write(target.join("too-big"), vec![0u8; 9 << 20]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC));
    volumes.teardown(&pod(), &volume, &target).await.unwrap();
    assert!(mounts_under(dir.path()).is_empty());
    assert!(!target.exists());
}
