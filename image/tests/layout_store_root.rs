//! Store, layout import/export and docker-archive round trips, checked with skopeo and
//! umoci; overlay stacks of snapshots. Needs root (ownership, device nodes, overlay mounts).

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::{multi_layer_image, run, write_image, write_layout};
use wharf_image::store::ImageStore;
use wharf_image::{layout, snapshot, ImageError};

fn check_rootfs(root: &Path) {
    assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"changed\n");
    assert!(!root.join("etc/gone").exists(), "whiteout applied");
    assert!(
        !root.join("opt/old").exists(),
        "opaque dir hides the lower content"
    );
    assert_eq!(fs::read(root.join("opt/new")).unwrap(), b"new");
    let secret = fs::metadata(root.join("etc/secret")).unwrap();
    assert_eq!(
        (secret.uid(), secret.gid(), secret.mode() & 0o7777),
        (1234, 5678, 0o4750)
    );
    assert_eq!(
        fs::read_link(root.join("etc/link")).unwrap(),
        Path::new("/etc/hostname")
    );
    assert!(fs::metadata(root.join("etc/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let dev = fs::metadata(root.join("dev-null")).unwrap();
    assert!(dev.file_type().is_char_device());
    assert_eq!(dev.rdev(), rustix::fs::makedev(1, 3));
    let bb = fs::metadata(root.join("bin/busybox")).unwrap();
    assert_eq!(
        fs::metadata(root.join("bin/sh")).unwrap().ino(),
        bb.ino(),
        "hardlink kept"
    );
    assert_eq!(bb.mode() & 0o777, 0o755);
}

#[test]
fn multi_layer_layout_import_snapshots_overlay_and_flat() {
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("layout");
    let desc = write_image(&lay, &multi_layer_image(), "amd64");
    write_layout(&lay, vec![(desc, "docker.io/library/multi:1")]);
    let store = ImageStore::open(t.path().join("store")).unwrap();
    let images = layout::import(&store, &lay).unwrap();
    assert_eq!(images.len(), 1);
    let img = &images[0];
    assert_eq!(img.repo_tags[0].to_string(), "docker.io/library/multi:1");
    assert_eq!(
        img.config.config.cmd.as_deref(),
        Some(&["/bin/sh".to_string()][..])
    );
    assert_eq!(img.config.config.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(img.layers.len(), 3);
    // Snapshots hold overlay markers.
    let wh = fs::metadata(img.layers[1].join("etc/gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    let mut v = [0u8; 4];
    let n =
        rustix::fs::getxattr(img.layers[2].join("opt"), "trusted.overlay.opaque", &mut v).unwrap();
    assert_eq!(&v[..n], b"y");

    // The overlay stack and the flat unpack show the same tree.
    let flat = t.path().join("flat");
    fs::create_dir(&flat).unwrap();
    store.unpack_flat("multi:1", &flat).unwrap();
    check_rootfs(&flat);
    let (upper, work, merged) = (
        t.path().join("upper"),
        t.path().join("work"),
        t.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    snapshot::mount_overlay(&img.layers, &t.path().join("empty"), &upper, &work, &merged).unwrap();
    let checked = std::panic::catch_unwind(|| check_rootfs(&merged));
    let out = Command::new("chroot")
        .arg(&merged)
        .args(["/bin/sh", "-c", "cat /etc/hostname"])
        .output();
    rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::DETACH).unwrap();
    checked.unwrap();
    assert_eq!(out.unwrap().stdout, b"changed\n");

    // Importing again is a no-op that finds the same image.
    let again = layout::import(&store, &lay).unwrap();
    assert_eq!(again[0].id, img.id);
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn umoci_layout_imports_and_exports_round_trip_through_skopeo() {
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("umoci");
    let bundle = t.path().join("bundle");
    let l = lay.to_str().unwrap();
    run(Command::new("umoci").args(["init", "--layout", l]));
    run(Command::new("umoci").args(["new", "--image", &format!("{l}:v1")]));
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image", &format!("{l}:v1")])
        .arg(&bundle));
    fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
    fs::copy("/bin/busybox", bundle.join("rootfs/bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", bundle.join("rootfs/bin/sh")).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &format!("{l}:v1")])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &format!("{l}:v1"),
        "--config.cmd",
        "/bin/sh",
        "--os",
        "linux",
        "--architecture",
        "amd64",
    ]));

    let store = ImageStore::open(t.path().join("store")).unwrap();
    let imported = layout::import(&store, &lay).unwrap();
    assert_eq!(imported.len(), 1);
    let id = imported[0].id.to_string();
    assert!(
        imported[0].repo_tags.is_empty(),
        "a bare tag names no repository"
    );
    let snap = &imported[0].layers[0];
    assert!(snap.join("bin/busybox").is_file());
    store.tag(&id, "localhost/roundtrip:v1").unwrap();

    // OCI layout directory → skopeo and umoci read it.
    let out = t.path().join("out");
    layout::export_layout_dir(&store, &["localhost/roundtrip:v1"], &out).unwrap();
    let o = out.to_str().unwrap();
    let inspect = run(Command::new("skopeo").args(["inspect", &format!("oci:{o}:v1")]));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(
        v["Digest"].as_str().unwrap(),
        imported[0].digest.to_string()
    );
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image", &format!("{o}:v1")])
        .arg(t.path().join("check")));
    assert!(t.path().join("check/rootfs/bin/busybox").is_file());

    // OCI archive and docker archive → skopeo reads both; both import back to the same id.
    let oci_tar = t.path().join("img.oci.tar");
    layout::export_layout_tar(&store, &["localhost/roundtrip:v1"], &oci_tar).unwrap();
    run(Command::new("skopeo").args(["inspect", &format!("oci-archive:{}:v1", oci_tar.display())]));
    let docker_tar = t.path().join("img.docker.tar");
    layout::export_docker_archive(&store, &["localhost/roundtrip:v1"], &docker_tar).unwrap();
    let inspect = run(Command::new("skopeo").args([
        "inspect",
        "--config",
        &format!("docker-archive:{}", docker_tar.display()),
    ]));
    assert!(inspect.contains("/bin/sh"), "{inspect}");
    for archive in [&oci_tar, &docker_tar] {
        let other = ImageStore::open(t.path().join(format!(
            "store-{}",
            archive.file_name().unwrap().to_string_lossy()
        )))
        .unwrap();
        let back = layout::import(&other, archive).unwrap();
        assert_eq!(back[0].id.to_string(), id);
        assert_eq!(back[0].repo_tags[0].to_string(), "localhost/roundtrip:v1");
    }
    // skopeo's own docker-archive → import.
    let sk = t.path().join("skopeo.docker.tar");
    run(Command::new("skopeo").args([
        "copy",
        &format!("oci:{o}:v1"),
        &format!("docker-archive:{}:localhost/fromskopeo:v2", sk.display()),
    ]));
    let back = layout::import(&store, &sk).unwrap();
    assert_eq!(back[0].id.to_string(), id);
    // skopeo rewrote the manifest (Docker schema2), so it is another manifest of the same id.
    assert_eq!(
        back[0]
            .repo_tags
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>(),
        ["localhost/fromskopeo:v2"]
    );
}

#[test]
fn tag_remove_lease_gc_and_disk_usage() {
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("layout");
    let layers = multi_layer_image();
    let a = write_image(&lay, &layers[..1], "amd64");
    let b = write_image(&lay, &layers, "amd64");
    write_layout(&lay, vec![(a, "localhost/a:1"), (b, "localhost/b:1")]);
    let store = ImageStore::open(t.path().join("store")).unwrap();
    let imgs = layout::import(&store, &lay).unwrap();
    let (a, b) = (&imgs[0], &imgs[1]);
    assert_eq!(
        a.layers[0], b.layers[0],
        "the shared base layer has one snapshot"
    );
    let du = store.disk_usage().unwrap();
    assert_eq!((du.images, du.snapshots, du.reclaimable_bytes), (2, 3, 0));
    assert!(du.snapshot_bytes > 1_000_000, "busybox is in there: {du:?}");

    store.tag("localhost/a:1", "localhost/a:2").unwrap();
    assert_eq!(
        store
            .inspect(&a.id.to_string()[7..19])
            .unwrap()
            .repo_tags
            .len(),
        2,
        "id prefix resolves"
    );
    // Untagging one of two tags keeps the image.
    let r = store.remove("localhost/a:1", false).unwrap();
    assert_eq!((r.untagged.len(), r.deleted.is_none()), (1, true));

    store.lease("container-1", "localhost/a:2").unwrap();
    let err = store.remove("localhost/a:2", false).unwrap_err();
    assert!(
        matches!(err, ImageError::ImageInUse { ref containers, .. } if containers == &["container-1"]),
        "{err}"
    );
    // Forced: the tag goes now, the content when the lease goes.
    let r = store.remove("localhost/a:2", true).unwrap();
    assert_eq!(r.deleted, None);
    assert!(matches!(
        store.inspect("localhost/a:2"),
        Err(ImageError::ImageNotFound(_))
    ));
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(a.layers[0].exists());
    store.release("container-1").unwrap();
    assert!(matches!(
        store.inspect(&a.id.to_string()),
        Err(ImageError::ImageNotFound(_))
    ));
    assert!(b.layers[0].exists(), "shared snapshot kept for b");

    let r = store.remove(&b.id.to_string(), false).unwrap();
    assert_eq!(r.deleted, Some(b.digest.clone()));
    let du = store.disk_usage().unwrap();
    assert_eq!((du.images, du.blobs, du.snapshots), (0, 0, 0));
    assert!(matches!(
        store.remove("localhost/b:1", false),
        Err(ImageError::ImageNotFound(_))
    ));
}

#[test]
fn bad_layouts_leave_no_image() {
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("layout");
    let layers = multi_layer_image();
    let desc = write_image(&lay, &layers, "amd64");
    write_layout(&lay, vec![(desc.clone(), "localhost/bad:1")]);
    // Corrupt one layer blob (same size, different content).
    let manifest: wharf_image::spec::Manifest = serde_json::from_slice(
        &fs::read(lay.join("blobs/sha256").join(desc.digest.hex())).unwrap(),
    )
    .unwrap();
    let victim = lay
        .join("blobs/sha256")
        .join(manifest.layers[1].digest.hex());
    let mut bytes = fs::read(&victim).unwrap();
    bytes[600] ^= 1;
    fs::write(&victim, bytes).unwrap();
    let store = ImageStore::open(t.path().join("store")).unwrap();
    let err = layout::import(&store, &lay).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
    store.gc().unwrap();
    let du = store.disk_usage().unwrap();
    assert_eq!((du.blobs, du.snapshots), (0, 0));
    assert_eq!(
        fs::read_dir(t.path().join("store/snapshots"))
            .unwrap()
            .count(),
        0,
        "no half snapshot"
    );
}

#[test]
fn flat_unpack_checks_the_stored_blobs_digest() {
    use std::io::{Read, Write};
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("layout");
    let desc = write_image(&lay, &multi_layer_image(), "amd64");
    write_layout(&lay, vec![(desc, "localhost/flat:1")]);
    let store = ImageStore::open(t.path().join("store")).unwrap();
    let img = layout::import(&store, &lay).unwrap().remove(0);
    // The stored blob of a layer, recompressed: the same tar (so the diff id still
    // matches), other compressed bytes.
    let layer = img.manifest.layers[0].digest.clone();
    let blob = store.blobs().path(&layer);
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(fs::File::open(&blob).unwrap())
        .read_to_end(&mut tar)
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar).unwrap();
    let recompressed = gz.finish().unwrap();
    assert_ne!(recompressed, fs::read(&blob).unwrap());
    fs::write(&blob, recompressed).unwrap();
    let flat = t.path().join("flat");
    fs::create_dir(&flat).unwrap();
    let err = store.unpack_flat("localhost/flat:1", &flat).unwrap_err();
    match &err {
        ImageError::DigestMismatch { what, expected, .. } => {
            assert_eq!(expected, &layer, "{err}");
            assert!(what.contains(&layer.to_string()), "{err}");
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
}

#[test]
fn archive_symlinks_cannot_read_host_files() {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("host-secret"), b"{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}").unwrap();
    let secret = t.path().join("host-secret").display().to_string();
    let manifest = br#"[{"Config":"cfg.json","RepoTags":["localhost/evil:1"],"Layers":[]}]"#;
    let tar = common::Layer::new()
        .symlink("cfg.json", &secret)
        .file("manifest.json", manifest)
        .tar();
    let archive = t.path().join("evil.tar");
    fs::write(&archive, tar).unwrap();
    let store = ImageStore::open(t.path().join("store")).unwrap();
    let err = layout::import(&store, &archive).unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }), "{err}");
    assert!(store.list().unwrap().is_empty());
}
