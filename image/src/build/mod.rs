//! A Dockerfile builder: instructions applied to a base image from the store (or
//! `scratch`), COPY/ADD layers made from the build context, a layer cache, `.dockerignore`,
//! and errors that name the Dockerfile line. The result is an ordinary OCI image in the store.
//!
//! Supported: FROM (one stage), COPY and ADD (local files; ADD extracts local tar, gzip and
//! zstd archives; `--chown=uid:gid` numeric, `--chmod=octal`), WORKDIR, ENV, ARG, EXPOSE,
//! CMD, ENTRYPOINT, USER, LABEL, MAINTAINER, VOLUME, STOPSIGNAL. RUN needs a container
//! runtime and is refused, as are multi-stage builds and URL sources.

pub mod dockerfile;
pub mod ignore;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::reference::Reference;
use crate::spec::{
    media, ContainerConfig, Descriptor, History, ImageConfig, Manifest, Platform, RootFs,
};
use crate::store::{Image, ImageStore};
use crate::unpack::Compression;
use dockerfile::Instruction;
use ignore::Ignore;

/// What to build.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile (default `<context>/Dockerfile`).
    pub dockerfile: Option<PathBuf>,
    /// Tags for the result.
    pub tags: Vec<String>,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// Ignore the layer cache.
    pub no_cache: bool,
}

/// What a build made.
#[derive(Clone, Debug)]
pub struct Built {
    /// The image.
    pub image: Image,
    /// Layers this build made (COPY/ADD steps).
    pub layers_built: usize,
    /// Layer steps answered from the cache.
    pub layers_cached: usize,
}

#[derive(Clone, Serialize, Deserialize)]
struct CacheEntry {
    layer: Descriptor,
    diff_id: Digest,
}

struct Step<'a> {
    file: &'a Path,
    ins: &'a Instruction,
}

impl Step<'_> {
    fn err(&self, reason: impl std::fmt::Display) -> ImageError {
        ImageError::Dockerfile {
            file: self.file.to_path_buf(),
            line: self.ins.line,
            reason: format!("{} {}: {reason}", self.ins.keyword, self.ins.args),
        }
    }
}

struct State {
    config: ImageConfig,
    layers: Vec<Descriptor>,
    args: BTreeMap<String, String>,
    key: Digest,
    cmd_set_here: bool,
}

impl State {
    fn vars(&self) -> BTreeMap<String, String> {
        let mut v = self.args.clone();
        for kv in self.config.config.env.iter().flatten() {
            if let Some((k, val)) = kv.split_once('=') {
                v.insert(k.to_string(), val.to_string());
            }
        }
        v
    }

    fn chain(&mut self, what: &str) {
        self.key = Digest::of(format!("{}\n{what}", self.key).as_bytes());
    }
}

/// Builds the image `opts` describes into `store`.
pub fn build(store: &ImageStore, opts: &BuildOptions) -> Result<Built> {
    let file = opts
        .dockerfile
        .clone()
        .unwrap_or_else(|| opts.context.join("Dockerfile"));
    let text = fs::read_to_string(&file).map_err(|e| ImageError::io("read", &file, e))?;
    let instructions = dockerfile::parse(&text).map_err(|e| ImageError::Dockerfile {
        file: file.clone(),
        line: e.line,
        reason: e.reason,
    })?;
    let ignore = match fs::read_to_string(opts.context.join(".dockerignore")) {
        Ok(t) => Ignore::parse(&t),
        Err(_) => Ignore::default(),
    };
    let cache_path = store.root().join("build-cache.json");
    let mut cache: BTreeMap<Digest, CacheEntry> = fs::read(&cache_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let (mut built, mut cached) = (0, 0);
    let mut state: Option<State> = None;
    let mut pre_from_args: BTreeMap<String, String> = BTreeMap::new();
    for ins in &instructions {
        let step = Step { file: &file, ins };
        let Some(st) = state.as_mut() else {
            match ins.keyword.as_str() {
                "ARG" => {
                    for (k, v) in arg_defs(&step, &pre_from_args, &opts.build_args)? {
                        pre_from_args.insert(k, v);
                    }
                }
                "FROM" => state = Some(from(store, &step, &pre_from_args)?),
                _ => return Err(step.err("the first instruction must be FROM (or ARG before it)")),
            }
            continue;
        };
        let vars = st.vars();
        let x = |s: &str| dockerfile::expand(s, &vars).map_err(|e| step.err(e));
        let mut layer = None;
        match ins.keyword.as_str() {
            "FROM" => return Err(step.err("multi-stage builds are not supported")),
            "RUN" => {
                return Err(
                    step.err("RUN needs a container runtime; this builder does not run commands")
                )
            }
            "ENV" => {
                let pairs = dockerfile::pairs(&ins.args, true).map_err(|e| step.err(e))?;
                let env = st.config.config.env.get_or_insert_with(Vec::new);
                for (k, v) in pairs {
                    let v = x(&v)?;
                    env.retain(|e| e.split_once('=').map_or(e.as_str(), |(ek, _)| ek) != k);
                    env.push(format!("{k}={v}"));
                }
            }
            "ARG" => {
                for (k, v) in arg_defs(&step, &vars, &opts.build_args)? {
                    st.args.insert(k, v);
                }
            }
            "LABEL" => {
                let pairs = dockerfile::pairs(&ins.args, true).map_err(|e| step.err(e))?;
                let labels = st.config.config.labels.get_or_insert_with(BTreeMap::new);
                for (k, v) in pairs {
                    labels.insert(x(&k)?, x(&v)?);
                }
            }
            "MAINTAINER" => st.config.author = Some(x(&ins.args)?),
            "EXPOSE" => {
                let ports = st
                    .config
                    .config
                    .exposed_ports
                    .get_or_insert_with(BTreeMap::new);
                for w in dockerfile::words(&x(&ins.args)?) {
                    let (port, proto) = w.split_once('/').unwrap_or((&w, "tcp"));
                    let ok_port = port
                        .split('-')
                        .all(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
                    if !ok_port
                        || !matches!(proto.to_ascii_lowercase().as_str(), "tcp" | "udp" | "sctp")
                    {
                        return Err(step.err(format!("invalid port {w:?}")));
                    }
                    ports.insert(
                        format!("{port}/{}", proto.to_ascii_lowercase()),
                        serde_json::json!({}),
                    );
                }
            }
            "USER" => {
                let u = x(&ins.args)?;
                if u.is_empty() {
                    return Err(step.err("USER needs a user"));
                }
                st.config.config.user = Some(u);
            }
            "WORKDIR" => {
                let w = x(&ins.args)?;
                if w.is_empty() {
                    return Err(step.err("WORKDIR needs a path"));
                }
                let base = st
                    .config
                    .config
                    .working_dir
                    .clone()
                    .unwrap_or_else(|| "/".into());
                let joined = clean_abs(&Path::new(&base).join(w));
                st.config.config.working_dir = Some(joined.display().to_string());
            }
            "STOPSIGNAL" => st.config.config.stop_signal = Some(x(&ins.args)?),
            "VOLUME" => {
                let vols = match dockerfile::json_array(&ins.args) {
                    Some(v) => v,
                    None => dockerfile::words(&x(&ins.args)?),
                };
                let map = st.config.config.volumes.get_or_insert_with(BTreeMap::new);
                for v in vols {
                    map.insert(v, serde_json::json!({}));
                }
            }
            "CMD" => {
                st.config.config.cmd = Some(command(&ins.args));
                st.cmd_set_here = true;
            }
            "ENTRYPOINT" => {
                st.config.config.entrypoint = Some(command(&ins.args));
                // An inherited CMD does not survive a new ENTRYPOINT (Docker's rule).
                if !st.cmd_set_here {
                    st.config.config.cmd = None;
                }
            }
            "COPY" | "ADD" => {
                let tar = copy_layer(&step, &opts.context, &ignore, st, &vars)?;
                let diff_id = Digest::of(&tar);
                st.chain(&format!("{} {} {diff_id}", ins.keyword, ins.args));
                let hit = (!opts.no_cache)
                    .then(|| cache.get(&st.key))
                    .flatten()
                    .filter(|c| {
                        store.blobs().size(&c.layer.digest) == Some(c.layer.size)
                            && c.diff_id == diff_id
                    })
                    .cloned();
                let entry = match hit {
                    Some(e) => {
                        cached += 1;
                        e
                    }
                    None => {
                        built += 1;
                        let mut gz =
                            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                        gz.write_all(&tar).map_err(|e| step.err(e))?;
                        let bytes = gz.finish().map_err(|e| step.err(e))?;
                        let d = store.blobs().put(&bytes)?;
                        let e = CacheEntry {
                            layer: Descriptor::new(media::OCI_LAYER_GZIP, d, bytes.len() as u64),
                            diff_id: diff_id.clone(),
                        };
                        cache.insert(st.key.clone(), e.clone());
                        e
                    }
                };
                layer = Some(entry);
            }
            other => return Err(step.err(format!("{other} is not supported by this builder"))),
        }
        if layer.is_none() {
            st.chain(&format!("{} {}", ins.keyword, ins.args));
        }
        st.config.history.push(History {
            created: Some(rfc3339_now()),
            created_by: Some(format!("{} {}", ins.keyword, ins.args)),
            comment: Some("wharf build".into()),
            empty_layer: layer.is_none(),
        });
        if let Some(e) = layer {
            st.layers.push(e.layer);
            st.config.rootfs.diff_ids.push(e.diff_id);
        }
    }
    let st = state.ok_or_else(|| ImageError::Dockerfile {
        file: file.clone(),
        line: 1,
        reason: "no FROM instruction".into(),
    })?;
    let tmp = cache_path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec(&cache).expect("cache serializes"))
        .map_err(|e| ImageError::io("write", &tmp, e))?;
    fs::rename(&tmp, &cache_path).map_err(|e| ImageError::io("rename into", &cache_path, e))?;

    let mut config = st.config;
    config.created = Some(rfc3339_now());
    let cbytes = serde_json::to_vec(&config).expect("config serializes");
    let cdigest = store.blobs().put(&cbytes)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        config: Descriptor::new(media::OCI_CONFIG, cdigest, cbytes.len() as u64),
        layers: st.layers,
        annotations: BTreeMap::new(),
    };
    let mbytes = serde_json::to_vec(&manifest).expect("manifest serializes");
    let mdigest = store.blobs().put(&mbytes)?;
    let tags = opts
        .tags
        .iter()
        .map(|t| Reference::parse(t))
        .collect::<Result<Vec<_>>>()?;
    let image = store.commit_image(&mdigest, &tags, None, &|_| {})?;
    Ok(Built {
        image,
        layers_built: built,
        layers_cached: cached,
    })
}

fn arg_defs(
    step: &Step<'_>,
    vars: &BTreeMap<String, String>,
    build_args: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for w in dockerfile::words(&step.ins.args) {
        let (name, default) = match w.split_once('=') {
            Some((n, d)) => (n.to_string(), Some(d.to_string())),
            None => (w.clone(), None),
        };
        if name.is_empty() {
            return Err(step.err("ARG needs a name"));
        }
        let value = match build_args.get(&name) {
            Some(v) => v.clone(),
            None => match default {
                Some(d) => dockerfile::expand(&d, vars).map_err(|e| step.err(e))?,
                None => String::new(),
            },
        };
        out.push((name, value));
    }
    Ok(out)
}

fn from(store: &ImageStore, step: &Step<'_>, args: &BTreeMap<String, String>) -> Result<State> {
    let words =
        dockerfile::words(&dockerfile::expand(&step.ins.args, args).map_err(|e| step.err(e))?);
    if words.iter().any(|w| w.starts_with("--")) {
        return Err(step.err("FROM flags (--platform) are not supported"));
    }
    let base = match words.as_slice() {
        [b] => b.clone(),
        [b, as_, _] if as_.eq_ignore_ascii_case("as") => b.clone(),
        _ => return Err(step.err("expected FROM <image> [AS <name>]")),
    };
    let seed = Digest::of(format!("FROM {base}").as_bytes());
    if base == "scratch" {
        let p = Platform::host();
        return Ok(State {
            config: ImageConfig {
                created: None,
                author: None,
                architecture: p.architecture,
                os: p.os,
                variant: p.variant,
                config: ContainerConfig::default(),
                rootfs: RootFs {
                    kind: "layers".into(),
                    diff_ids: Vec::new(),
                },
                history: Vec::new(),
            },
            layers: Vec::new(),
            args: BTreeMap::new(),
            key: seed,
            cmd_set_here: false,
        });
    }
    let img = store.inspect(&base).map_err(|e| match e {
        ImageError::ImageNotFound(_) => step.err(format!(
            "base image {base} is not in the store (pull or import it first)"
        )),
        e => e,
    })?;
    Ok(State {
        key: Digest::of(format!("FROM {}", img.id).as_bytes()),
        config: img.config,
        layers: img.manifest.layers,
        args: BTreeMap::new(),
        cmd_set_here: false,
    })
}

fn command(args: &str) -> Vec<String> {
    match dockerfile::json_array(args) {
        Some(v) => v,
        None => vec!["/bin/sh".into(), "-c".into(), args.to_string()],
    }
}

/// `/`-rooted, `..`-free form of `p`.
fn clean_abs(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

struct CopyFlags {
    owner: Option<(u64, u64)>,
    mode: Option<u32>,
}

/// The uncompressed tar of one COPY/ADD step.
fn copy_layer(
    step: &Step<'_>,
    context: &Path,
    ignore: &Ignore,
    st: &State,
    vars: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let is_add = step.ins.keyword == "ADD";
    let mut flags = CopyFlags {
        owner: None,
        mode: None,
    };
    let mut rest = step.ins.args.trim();
    while let Some(f) = rest.strip_prefix("--") {
        let (flag, after) = f.split_once(char::is_whitespace).unwrap_or((f, ""));
        rest = after.trim_start();
        match flag.split_once('=') {
            Some(("chown", v)) => {
                let v = dockerfile::expand(v, vars).map_err(|e| step.err(e))?;
                let (u, g) = v.split_once(':').unwrap_or((&v, &v));
                match (u.parse(), g.parse()) {
                    (Ok(u), Ok(g)) => flags.owner = Some((u, g)),
                    _ => {
                        return Err(
                            step.err(format!("--chown={v}: only numeric uid:gid is supported"))
                        )
                    }
                }
            }
            Some(("chmod", v)) => {
                flags.mode = Some(
                    u32::from_str_radix(v, 8)
                        .map_err(|_| step.err(format!("--chmod={v}: expected octal")))?,
                )
            }
            _ => return Err(step.err(format!("--{flag} is not supported"))),
        }
    }
    let mut words = match dockerfile::json_array(rest) {
        Some(v) => v,
        None => dockerfile::words(rest),
    };
    let words: Vec<String> = words
        .drain(..)
        .map(|w| dockerfile::expand(&w, vars).map_err(|e| step.err(e)))
        .collect::<Result<_>>()?;
    if words.len() < 2 {
        return Err(step.err("expected at least one source and a destination"));
    }
    let (dest, srcs) = words.split_last().expect("len checked");
    let workdir = st
        .config
        .config
        .working_dir
        .clone()
        .unwrap_or_else(|| "/".into());
    let dest_dir_syntax = dest.ends_with('/') || dest == "." || srcs.len() > 1;
    let dest_path = clean_abs(&Path::new(&workdir).join(dest));

    // Resolve sources (a glob in the last component), never outside the context.
    let mut sources: Vec<(PathBuf, String)> = Vec::new();
    for s in srcs {
        if s.contains("://") {
            return Err(step.err(format!("{s}: URL sources are not supported")));
        }
        let rel = clean_abs(Path::new(s));
        let rel = rel.strip_prefix("/").expect("absolute").to_path_buf();
        let name = rel.file_name().map(|n| n.to_string_lossy().into_owned());
        let globbed = name.as_deref().is_some_and(|n| n.contains(['*', '?']));
        if globbed {
            let parent = rel.parent().unwrap_or(Path::new(""));
            let pat = name.expect("globbed has a name");
            let dir = context.join(parent);
            let rd = fs::read_dir(&dir).map_err(|e| step.err(format!("{}: {e}", dir.display())))?;
            let mut names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in names
                .into_iter()
                .filter(|n| ignore::glob(pat.as_bytes(), n.as_bytes()))
            {
                let r = parent.join(&n);
                if !ignore.excluded(&r.to_string_lossy()) {
                    sources.push((context.join(&r), r.to_string_lossy().into_owned()));
                }
            }
        } else {
            let r = rel.to_string_lossy().into_owned();
            if !r.is_empty() && ignore.excluded(&r) {
                return Err(step.err(format!("{s}: excluded by .dockerignore")));
            }
            sources.push((context.join(&rel), r));
        }
    }
    if sources.is_empty() {
        return Err(step.err("no source files matched"));
    }
    let mut b = tar::Builder::new(Vec::new());
    // Parents of the destination, so the layer stands alone.
    let mut parent = PathBuf::new();
    let dest_rel = dest_path.strip_prefix("/").expect("absolute").to_path_buf();
    let parents: Vec<_> = if dest_dir_syntax || sources.len() > 1 {
        dest_rel.components().collect()
    } else {
        dest_rel
            .parent()
            .map(|p| p.components().collect())
            .unwrap_or_default()
    };
    for c in parents {
        parent.push(c);
        append_dir(&mut b, &parent, 0o755, 0, (0, 0)).map_err(|e| step.err(e))?;
    }
    for (abs, rel) in &sources {
        let md = fs::symlink_metadata(abs).map_err(|e| step.err(format!("{rel}: {e}")))?;
        if md.is_dir() {
            walk_into(&mut b, abs, rel, &dest_rel, ignore, &flags)
                .map_err(|e| step.err(format!("{rel}: {e}")))?;
            continue;
        }
        let target = if dest_dir_syntax {
            dest_rel.join(abs.file_name().expect("a file has a name"))
        } else {
            dest_rel.clone()
        };
        if is_add && md.is_file() && is_archive(abs) {
            extract_into(&mut b, abs, &dest_rel, &flags)
                .map_err(|e| step.err(format!("{rel}: {e}")))?;
            continue;
        }
        append_path(&mut b, abs, &md, &target, &flags)
            .map_err(|e| step.err(format!("{rel}: {e}")))?;
    }
    b.into_inner().map_err(|e| step.err(e))
}

fn header_for(kind: tar::EntryType, mode: u32, mtime: u64, owner: (u64, u64)) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(owner.0);
    h.set_gid(owner.1);
    h.set_size(0);
    h
}

fn append_dir(
    b: &mut tar::Builder<Vec<u8>>,
    path: &Path,
    mode: u32,
    mtime: u64,
    owner: (u64, u64),
) -> std::io::Result<()> {
    let mut h = header_for(tar::EntryType::Directory, mode, mtime, owner);
    b.append_data(&mut h, path, std::io::empty())
}

fn append_path(
    b: &mut tar::Builder<Vec<u8>>,
    abs: &Path,
    md: &fs::Metadata,
    target: &Path,
    f: &CopyFlags,
) -> std::io::Result<()> {
    let owner = f.owner.unwrap_or((0, 0));
    let mode = f.mode.unwrap_or(md.permissions().mode() & 0o7777);
    let mtime = md.mtime().max(0) as u64;
    if md.file_type().is_symlink() {
        let mut h = header_for(tar::EntryType::Symlink, 0o777, mtime, owner);
        let link = fs::read_link(abs)?;
        return b.append_link(&mut h, target, link);
    }
    if md.is_dir() {
        return append_dir(b, target, mode, mtime, owner);
    }
    if !md.is_file() {
        return Err(std::io::Error::other(
            "only regular files, directories and symlinks can be copied",
        ));
    }
    let mut h = header_for(tar::EntryType::Regular, mode, mtime, owner);
    h.set_size(md.len());
    b.append_data(&mut h, target, fs::File::open(abs)?)
}

fn walk_into(
    b: &mut tar::Builder<Vec<u8>>,
    dir: &Path,
    rel: &str,
    dest: &Path,
    ignore: &Ignore,
    f: &CopyFlags,
) -> std::io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for n in names {
        let child_rel = if rel.is_empty() {
            n.to_string_lossy().into_owned()
        } else {
            format!("{rel}/{}", n.to_string_lossy())
        };
        if ignore.excluded(&child_rel) && !ignore.has_exceptions() {
            continue;
        }
        let abs = dir.join(&n);
        let md = fs::symlink_metadata(&abs)?;
        let target = dest.join(&n);
        if md.is_dir() {
            if !ignore.excluded(&child_rel) {
                append_path(b, &abs, &md, &target, f)?;
            }
            walk_into(b, &abs, &child_rel, &target, ignore, f)?;
        } else if !ignore.excluded(&child_rel) {
            append_path(b, &abs, &md, &target, f)?;
        }
    }
    Ok(())
}

fn is_archive(p: &Path) -> bool {
    let mut head = [0u8; 512];
    let Ok(mut f) = fs::File::open(p) else {
        return false;
    };
    let n = f.read(&mut head).unwrap_or(0);
    match Compression::detect(&head[..n]) {
        Compression::Gzip | Compression::Zstd => true,
        Compression::None => n >= 262 && &head[257..262] == b"ustar",
    }
}

/// Re-emits a local archive's entries under `dest` (ADD's auto-extraction). Paths are
/// cleaned so nothing lands outside `dest`; the unpacker confines them again later.
fn extract_into(
    b: &mut tar::Builder<Vec<u8>>,
    archive: &Path,
    dest: &Path,
    f: &CopyFlags,
) -> std::io::Result<()> {
    let file = std::io::BufReader::new(fs::File::open(archive)?);
    let mut head = std::io::BufReader::new(file);
    let comp = {
        use std::io::BufRead;
        Compression::detect(head.fill_buf()?)
    };
    let reader: Box<dyn Read> = match comp {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(head)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(head)?),
        Compression::None => Box::new(head),
    };
    let mut a = tar::Archive::new(reader);
    for entry in a.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some(clean) = crate::unpack::rootfd::clean(&path) else {
            continue;
        };
        let mut h = entry.header().clone();
        if let Some((u, g)) = f.owner {
            h.set_uid(u);
            h.set_gid(g);
        }
        let target = dest.join(&clean);
        match h.entry_type() {
            tar::EntryType::Link => {
                let link = entry.link_name()?.unwrap_or_default().into_owned();
                let link = dest.join(crate::unpack::rootfd::clean(&link).unwrap_or_default());
                b.append_link(&mut h, &target, link)?;
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name()?.unwrap_or_default().into_owned();
                b.append_link(&mut h, &target, link)?;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            _ => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data)?;
                b.append_data(&mut h, &target, &data[..])?;
            }
        }
    }
    Ok(())
}

/// RFC 3339 UTC timestamp of now (days-from-civil arithmetic; no calendar crate needed).
fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    rfc3339(secs)
}

fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn paths_and_commands() {
        assert_eq!(clean_abs(Path::new("/a/../../b/./c")), Path::new("/b/c"));
        assert_eq!(command(r#"["a","b"]"#), ["a", "b"]);
        assert_eq!(command("echo hi"), ["/bin/sh", "-c", "echo hi"]);
    }
}
