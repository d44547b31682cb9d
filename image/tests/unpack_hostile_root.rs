//! A corpus of hostile layers: none may write outside the unpack target.
//! Needs root (device nodes, ownership); CI runs as root.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::Layer;
use wharf_image::unpack::{unpack, UnpackOptions};

struct Arena {
    outer: tempfile::TempDir,
}

impl Arena {
    fn new() -> Arena {
        let outer = tempfile::tempdir().unwrap();
        fs::create_dir(outer.path().join("root")).unwrap();
        fs::write(outer.path().join("canary"), b"untouched").unwrap();
        Arena { outer }
    }
    fn root(&self) -> std::path::PathBuf {
        self.outer.path().join("root")
    }
    fn apply(&self, tar: &[u8], opts: &UnpackOptions) -> wharf_image::Result<()> {
        unpack(tar, &self.root(), "test-layer", opts).map(|_| ())
    }
    /// Nothing but `root` and the untouched canary may exist beside the root.
    fn assert_contained(&self) {
        let mut names: Vec<_> = fs::read_dir(self.outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["canary", "root"],
            "something was written outside the root"
        );
        let canary = self.outer.path().join("canary");
        assert_eq!(fs::read(&canary).unwrap(), b"untouched");
        assert_eq!(
            fs::symlink_metadata(&canary).unwrap().nlink(),
            1,
            "canary was hardlinked"
        );
    }
}

fn both_modes() -> [UnpackOptions; 2] {
    [UnpackOptions::snapshot(), UnpackOptions::flat()]
}

#[test]
fn dotdot_and_absolute_paths_are_neutralized() {
    for opts in both_modes() {
        let a = Arena::new();
        let tar = Layer::new()
            .file("../evil", b"x")
            .file("../../../../evil2", b"x")
            .file("/abs-evil", b"x")
            .file("a/../../evil3", b"x")
            .tar();
        a.apply(&tar, &opts).unwrap();
        a.assert_contained();
        for n in ["evil", "evil2", "abs-evil", "evil3"] {
            assert!(
                a.root().join(n).is_file(),
                "{n} should land inside the root"
            );
        }
    }
}

#[test]
fn symlink_then_file_through_it_stays_inside() {
    for opts in both_modes() {
        let a = Arena::new();
        let outer = a.outer.path().display().to_string();
        let tar = Layer::new()
            .symlink("up", "../..")
            .symlink("abs", &outer)
            .symlink("slash", "/")
            .file("up/evil", b"x")
            .file("abs/evil", b"x")
            .file("slash/evil", b"x")
            .dir("slash/tmp/newdir")
            .file("up/up/canary", b"pwned")
            .tar();
        a.apply(&tar, &opts).unwrap();
        a.assert_contained();
        assert!(a.root().join("evil").is_file());
        assert!(a
            .root()
            .join(outer.trim_start_matches('/'))
            .join("evil")
            .is_file());
    }
}

#[test]
fn symlink_in_one_layer_file_through_it_in_the_next() {
    let a = Arena::new();
    let outer = a.outer.path().display().to_string();
    let l1 = Layer::new()
        .symlink("etc", &outer)
        .symlink("rel", "../../..")
        .tar();
    let l2 = Layer::new()
        .file("etc/canary", b"pwned")
        .file("rel/canary", b"pwned")
        .tar();
    a.apply(&l1, &UnpackOptions::flat()).unwrap();
    a.apply(&l2, &UnpackOptions::flat()).unwrap();
    a.assert_contained();
    assert_eq!(fs::read(a.root().join("canary")).unwrap(), b"pwned");
}

#[test]
fn existing_symlink_is_replaced_not_followed() {
    let a = Arena::new();
    let l1 = Layer::new()
        .symlink("f", "../canary")
        .symlink("d", "..")
        .tar();
    let l2 = Layer::new().file("f", b"pwned").dir("d").tar();
    a.apply(&l1, &UnpackOptions::flat()).unwrap();
    a.apply(&l2, &UnpackOptions::flat()).unwrap();
    a.assert_contained();
    assert!(fs::symlink_metadata(a.root().join("f")).unwrap().is_file());
    assert!(fs::symlink_metadata(a.root().join("d")).unwrap().is_dir());
}

#[test]
fn hardlink_escapes_fail_or_stay_inside() {
    for opts in both_modes() {
        let a = Arena::new();
        let outside = a.outer.path().join("canary").display().to_string();
        for (name, target) in [
            ("h1", "../canary"),
            ("h2", outside.as_str()),
            ("h3", "../../../../etc/passwd"),
        ] {
            let tar = Layer::new().hardlink(name, target).tar();
            let err = a.apply(&tar, &opts).unwrap_err();
            assert!(err.to_string().contains("hardlink"), "{err}");
        }
        // Through a symlink: the link names the symlink itself, never the file it points at.
        let tar = Layer::new()
            .symlink("s", "../canary")
            .hardlink("h", "s")
            .tar();
        a.apply(&tar, &opts).unwrap();
        assert!(fs::symlink_metadata(a.root().join("h"))
            .unwrap()
            .file_type()
            .is_symlink());
        // Through a symlinked parent directory: resolved inside the root.
        let tar = Layer::new()
            .symlink("up", "..")
            .file("x", b"in")
            .hardlink("h4", "up/up/x")
            .tar();
        a.apply(&tar, &opts).unwrap();
        assert_eq!(fs::read(a.root().join("h4")).unwrap(), b"in");
        a.assert_contained();
    }
}

#[test]
fn whiteouts_and_opaque_markers_through_symlinks_stay_inside() {
    let a = Arena::new();
    let l1 = Layer::new().symlink("up", "../..").file("keep", b"k").tar();
    let l2 = Layer::new()
        .file("../.wh.canary", b"")
        .file("up/.wh.canary", b"")
        .file("up/.wh..wh..opq", b"")
        .tar();
    a.apply(&l1, &UnpackOptions::flat()).unwrap();
    a.apply(&l2, &UnpackOptions::flat()).unwrap();
    a.assert_contained();
    // The opaque marker resolved to the root itself and cleared the lower layer's files.
    assert!(!a.root().join("keep").exists());
}

#[test]
fn forged_overlay_xattrs_are_dropped() {
    let a = Arena::new();
    let tar = Layer::new()
        .file_with_xattr("f", b"x", "trusted.overlay.redirect", b"/etc")
        .file_with_xattr("g", b"x", "user.ok", b"fine")
        .tar();
    a.apply(&tar, &UnpackOptions::snapshot()).unwrap();
    let get = |p: &Path, k: &str| {
        let mut buf = [0u8; 64];
        rustix::fs::getxattr(p, k, &mut buf)
            .ok()
            .map(|n| buf[..n].to_vec())
    };
    assert_eq!(get(&a.root().join("f"), "trusted.overlay.redirect"), None);
    assert_eq!(get(&a.root().join("g"), "user.ok"), Some(b"fine".to_vec()));
}

#[test]
fn truncated_and_corrupt_streams_are_clear_errors() {
    let a = Arena::new();
    let gz = Layer::new().file("a", &[7u8; 100_000]).gzip();
    let err = a
        .apply(&gz[..gz.len() / 2], &UnpackOptions::snapshot())
        .unwrap_err();
    assert!(err.to_string().contains("test-layer"), "{err}");
    let mut bad = gz.clone();
    let n = bad.len();
    bad[n - 6] ^= 0xff; // gzip trailer: CRC32 / length
    assert!(a.apply(&bad, &UnpackOptions::snapshot()).is_err());
    a.assert_contained();
}
