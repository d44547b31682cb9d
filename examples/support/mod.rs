//! What the real-mode examples share: the root check, getting a busybox image without help,
//! a plain HTTP GET, and the check that nothing was left behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wharf::core::backend::image::PullOptions;
use wharf::core::backend::ImageService;
use wharf::image::build::{build, BuildOptions};
use wharf::image::{layout, ImageStore};

/// `true` when the effective user is root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `GET /` over HTTP/1.0; the body.
pub async fn http_get(addr: SocketAddr) -> Result<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: wharf-example\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .with_context(|| format!("GET http://{addr}/ timed out"))?
        .with_context(|| format!("GET http://{addr}/"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        bail!("GET http://{addr}/ answered {:?}", head.lines().next());
    }
    Ok(body.to_string())
}

/// Puts a busybox image named `tag` into `images`: imported from `given` (an OCI layout or
/// tarball), else pulled through `service` (15 s limit), else built from the host's static
/// `/bin/busybox` in a build context under `base`. Says which it used.
pub async fn obtain_busybox(
    base: &Path,
    images: &ImageStore,
    service: &dyn ImageService,
    given: Option<PathBuf>,
    tag: &str,
) -> Result<String> {
    if let Some(path) = given {
        let imported = layout::import(images, &path)
            .with_context(|| format!("importing {}", path.display()))?;
        let first = imported.first().context("the archive holds no image")?;
        images.tag(&first.id.to_string(), tag)?;
        return Ok(format!("imported from {}", path.display()));
    }
    println!("image: no --image given; trying a pull of busybox (15s limit)");
    let pull = tokio::time::timeout(
        Duration::from_secs(15),
        service.pull(tag, &PullOptions::default()),
    )
    .await;
    match pull {
        Ok(Ok(_)) => return Ok("pulled from its registry".to_string()),
        Ok(Err(e)) => println!("image: pull failed: {e}"),
        Err(_) => println!("image: pull timed out"),
    }
    build_from_host_busybox(base, images, tag)?;
    Ok("built from the host's static /bin/busybox (FROM scratch + COPY)".to_string())
}

/// Builds image `tag` from the host's static `/bin/busybox` (`FROM scratch` + `COPY`), in a
/// build context under `base` that is removed afterwards.
pub fn build_from_host_busybox(base: &Path, images: &ImageStore, tag: &str) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    let static_binary = std::fs::read(busybox)
        .ok()
        .is_some_and(|b| is_static_elf64(&b));
    if !static_binary {
        bail!("no image: give one with --image <OCI layout or tarball>, allow a registry pull, or install busybox-static (apt-get install busybox-static) so the example can build one");
    }
    let context = base.join("build");
    std::fs::create_dir_all(&context)?;
    std::fs::copy(busybox, context.join("busybox"))?;
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"sh\"]\n",
    )?;
    build(
        images,
        &BuildOptions {
            context: context.clone(),
            tags: vec![tag.to_string()],
            ..BuildOptions::default()
        },
    )
    .context("building an image from /bin/busybox")?;
    std::fs::remove_dir_all(&context)?;
    Ok(())
}

/// An ELF64 executable without a PT_INTERP program header (no dynamic loader needed).
fn is_static_elf64(b: &[u8]) -> bool {
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(|a| u64::from_le_bytes(a) as usize)
    };
    if !b.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).all(|i| u32_at(phoff + i * phentsize).is_some_and(|t| t != 3))
}

/// Checks that nothing is left (mounts under `base`, the bridge) and removes `base`.
pub fn check_nothing_left(base: &Path, bridge: &str) -> Result<()> {
    let mut problems = Vec::new();
    let prefix = base.to_string_lossy().into_owned();
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    if !mounts.is_empty() {
        problems.push(format!("mounts left: {mounts:?}"));
    }
    if Path::new("/sys/class/net").join(bridge).exists() {
        problems.push(format!("bridge {bridge} left"));
    }
    if mounts.is_empty() {
        if let Err(e) = std::fs::remove_dir_all(base) {
            if e.kind() != std::io::ErrorKind::NotFound {
                problems.push(format!("removing {}: {e}", base.display()));
            }
        }
    }
    if problems.is_empty() {
        println!(
            "  nothing left: no mounts under {}, bridge {bridge} gone, directory removed",
            base.display()
        );
        Ok(())
    } else {
        bail!("teardown left things behind: {}", problems.join("; "))
    }
}
