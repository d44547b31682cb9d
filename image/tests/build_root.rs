//! Dockerfile builds into the store: every supported instruction, `.dockerignore`, ADD
//! of a local archive, the layer cache, and errors naming the Dockerfile line.
//! Needs root (unpacking keeps ownership).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{multi_layer_image, write_image, write_layout, Layer};
use wharf_image::build::{build, BuildOptions};
use wharf_image::store::ImageStore;
use wharf_image::{layout, ImageError};

const DOCKERFILE: &str = r#"# a test image
ARG BASE=localhost/base:1
FROM ${BASE} AS final
MAINTAINER someone@example.invalid
ARG VERSION=0.1
ENV APP_HOME=/srv/app \
    MODE="fast mode"
ENV LEGACY legacy value
LABEL org.example.version=$VERSION "org.example.name"="demo app"
WORKDIR $APP_HOME
WORKDIR sub
COPY --chown=1000:1001 app/ ./
COPY top.txt notes*.md /etc/demo/
ADD --chmod=600 bundle.tar.gz /opt/
EXPOSE 8080 53/udp
VOLUME ["/data"]
USER 1000:1001
STOPSIGNAL SIGTERM
ENTRYPOINT ["/bin/busybox"]
CMD ["sh"]
"#;

fn context(dir: &Path) {
    fs::create_dir_all(dir.join("app/lib")).unwrap();
    fs::write(dir.join("app/main.sh"), "echo hi\n").unwrap();
    fs::set_permissions(
        dir.join("app/main.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    fs::write(dir.join("app/lib/util.sh"), "true\n").unwrap();
    fs::write(dir.join("app/debug.log"), "noise\n").unwrap();
    fs::write(dir.join("top.txt"), "top\n").unwrap();
    fs::write(dir.join("notes-a.md"), "a\n").unwrap();
    fs::write(dir.join("notes-b.md"), "b\n").unwrap();
    fs::write(dir.join(".dockerignore"), "**/*.log\n").unwrap();
    fs::write(
        dir.join("bundle.tar.gz"),
        Layer::new()
            .dir("pkg")
            .file("pkg/readme", b"from archive")
            .gzip(),
    )
    .unwrap();
    fs::write(dir.join("Dockerfile"), DOCKERFILE).unwrap();
}

fn base_store(dir: &Path) -> ImageStore {
    let lay = dir.join("layout");
    let d = write_image(&lay, &multi_layer_image()[..1], "amd64");
    write_layout(&lay, vec![(d, "localhost/base:1")]);
    let store = ImageStore::open(dir.join("store")).unwrap();
    layout::import(&store, &lay).unwrap();
    store
}

#[test]
fn dockerfile_build_config_filesystem_and_cache() {
    let t = tempfile::tempdir().unwrap();
    let store = base_store(t.path());
    let ctx = t.path().join("ctx");
    context(&ctx);
    let opts = BuildOptions {
        context: ctx.clone(),
        tags: vec!["localhost/demo:1".into()],
        build_args: BTreeMap::from([("VERSION".to_string(), "2.0".to_string())]),
        ..Default::default()
    };
    let b = build(&store, &opts).unwrap();
    assert_eq!((b.layers_built, b.layers_cached), (3, 0));
    let c = &b.image.config;
    assert_eq!(c.author.as_deref(), Some("someone@example.invalid"));
    let cc = &c.config;
    let env = cc.env.clone().unwrap();
    assert!(
        env.contains(&"APP_HOME=/srv/app".to_string())
            && env.contains(&"MODE=fast mode".to_string())
    );
    assert!(env.contains(&"LEGACY=legacy value".to_string()));
    assert!(
        env.contains(&"PATH=/bin".to_string()),
        "base env kept: {env:?}"
    );
    let labels = cc.labels.clone().unwrap();
    assert_eq!(labels["org.example.version"], "2.0");
    assert_eq!(labels["org.example.name"], "demo app");
    assert_eq!(cc.working_dir.as_deref(), Some("/srv/app/sub"));
    assert_eq!(cc.user.as_deref(), Some("1000:1001"));
    assert_eq!(cc.stop_signal.as_deref(), Some("SIGTERM"));
    assert_eq!(cc.entrypoint.clone().unwrap(), ["/bin/busybox"]);
    assert_eq!(cc.cmd.clone().unwrap(), ["sh"]);
    let ports: Vec<_> = cc.exposed_ports.clone().unwrap().into_keys().collect();
    assert_eq!(ports, ["53/udp", "8080/tcp"]);
    assert!(cc.volumes.clone().unwrap().contains_key("/data"));
    assert_eq!(c.rootfs.diff_ids.len(), 4);
    assert_eq!(c.history.iter().filter(|h| !h.empty_layer).count(), 3 + 1);

    let root = t.path().join("root");
    fs::create_dir(&root).unwrap();
    store.unpack_flat("localhost/demo:1", &root).unwrap();
    let main = fs::metadata(root.join("srv/app/sub/main.sh")).unwrap();
    assert_eq!(
        (main.uid(), main.gid(), main.mode() & 0o777),
        (1000, 1001, 0o755)
    );
    assert_eq!(
        fs::read(root.join("srv/app/sub/lib/util.sh")).unwrap(),
        b"true\n"
    );
    assert!(
        !root.join("srv/app/sub/debug.log").exists(),
        ".dockerignore applied"
    );
    assert_eq!(fs::read(root.join("etc/demo/top.txt")).unwrap(), b"top\n");
    assert!(root.join("etc/demo/notes-a.md").exists() && root.join("etc/demo/notes-b.md").exists());
    assert_eq!(
        fs::read(root.join("opt/pkg/readme")).unwrap(),
        b"from archive"
    );
    assert!(root.join("bin/busybox").exists(), "base layer below");

    // Rebuild: every layer from the cache, same layers.
    let again = build(&store, &opts).unwrap();
    assert_eq!((again.layers_built, again.layers_cached), (0, 3));
    assert_eq!(again.image.manifest.layers, b.image.manifest.layers);
    // A changed input rebuilds its layer and the ones after it.
    fs::write(ctx.join("top.txt"), "changed\n").unwrap();
    let changed = build(&store, &opts).unwrap();
    assert_eq!((changed.layers_built, changed.layers_cached), (2, 1));
}

#[test]
fn errors_name_the_line() {
    let t = tempfile::tempdir().unwrap();
    let store = base_store(t.path());
    let ctx = t.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("one.txt"), "1").unwrap();
    fs::write(ctx.join("two.txt"), "2").unwrap();
    let cases = [
        ("FROM scratch\nCOPY missing.txt /\n", 2, "missing.txt"),
        (
            "FROM scratch\nCOPY *.txt /dest\n",
            2,
            "must be a directory ending with /",
        ),
        (
            "FROM scratch\nENV A=1\nRUN echo hi\n",
            3,
            "needs a container runtime",
        ),
        ("FROM localhost/none:1\n", 1, "not in the store"),
        ("ENV A=1\nFROM scratch\n", 1, "first instruction"),
        ("FROM scratch\nEXPOSE 99999\n", 2, "invalid port"),
        (
            "FROM scratch AS a\nFROM scratch AS A\n",
            2,
            "duplicate stage name",
        ),
        (
            "FROM scratch\nCOPY --from=nope /x /\n",
            2,
            "no stage of that name",
        ),
        ("FROM scratch\nCOPY --from=3 /x /\n", 2, "no earlier stage"),
        ("FROM scratch\nCOPY --chown=app:app a /\n", 2, "numeric"),
    ];
    for (df, line, needle) in cases {
        fs::write(ctx.join("Dockerfile"), df).unwrap();
        let err = build(
            &store,
            &BuildOptions {
                context: ctx.clone(),
                ..Default::default()
            },
        )
        .unwrap_err();
        match &err {
            ImageError::Dockerfile {
                line: l, reason, ..
            } => {
                assert_eq!(*l, line, "{err}");
                assert!(reason.contains(needle), "{err}");
            }
            other => panic!("{df:?}: {other}"),
        }
        assert!(
            err.to_string().contains(&format!("Dockerfile:{line}:")),
            "{err}"
        );
    }
    // scratch + COPY makes a one-layer image.
    fs::write(ctx.join("f"), "x").unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY f /f\nCMD [\"/f\"]\n",
    )
    .unwrap();
    let b = build(
        &store,
        &BuildOptions {
            context: ctx.clone(),
            tags: vec!["localhost/s:1".into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(b.image.layers.len(), 1);
    assert_eq!(fs::read(b.image.layers[0].join("f")).unwrap(), b"x");
}
