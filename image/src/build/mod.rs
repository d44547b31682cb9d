//! A Dockerfile builder: instructions applied to a base image from the store (or
//! `scratch`), COPY/ADD layers made from the build context, a layer cache, `.dockerignore`,
//! and errors that name the Dockerfile line. The result is an ordinary OCI image in the store.
//!
//! Supported: FROM (stages, `AS name`, a base that is an earlier stage), RUN (shell and
//! exec forms, executed through a [`ContainerRuntime`], see [`run`]), COPY and ADD (local
//! files; ADD extracts local tar, gzip and zstd archives; `--chown=uid:gid` numeric,
//! `--chmod=octal`; COPY `--from=<stage name|stage index|image>`), WORKDIR, ENV, ARG,
//! EXPOSE, CMD, ENTRYPOINT, USER, LABEL, MAINTAINER, VOLUME, STOPSIGNAL. The last stage (or
//! [`BuildOptions::target`]) is the result. Not supported: URL sources, SHELL,
//! HEALTHCHECK, ONBUILD.

mod copy;
mod diff;
pub mod dockerfile;
pub mod ignore;
pub mod run;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use wharf_core::backend::runtime::ContainerRuntime;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::reference::Reference;
use crate::spec::{
    media, ContainerConfig, Descriptor, History, ImageConfig, Manifest, Platform, RootFs,
};
use crate::store::{Image, ImageStore, Pin};
use dockerfile::Instruction;
use ignore::Ignore;
use run::Runner;

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
    /// The stage to build (its `AS` name or its index); the last stage when `None`.
    pub target: Option<String>,
}

/// What a build made.
#[derive(Clone, Debug)]
pub struct Built {
    /// The image.
    pub image: Image,
    /// Layers this build made (RUN, COPY and ADD steps, every stage).
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

#[derive(Clone)]
struct State {
    /// The stage's `AS` name, lowercased.
    name: Option<String>,
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

    /// The working directory (`/` when unset).
    fn workdir(&self) -> String {
        self.config
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    }

    fn chain(&mut self, what: &str) {
        self.key = Digest::of(format!("{}\n{what}", self.key).as_bytes());
    }
}

/// Builds the image `opts` describes into `store`. RUN instructions are refused: they
/// need a container runtime ([`build_with_runtime`]).
pub fn build(store: &ImageStore, opts: &BuildOptions) -> Result<Built> {
    build_with(store, opts, None)
}

/// Builds the image `opts` describes into `store`, executing RUN instructions in
/// containers of `runtime`. The build's file work runs on tokio's blocking pool.
pub async fn build_with_runtime(
    store: Arc<ImageStore>,
    opts: BuildOptions,
    runtime: Arc<dyn ContainerRuntime>,
) -> Result<Built> {
    let runner = Runner::new(runtime, tokio::runtime::Handle::current());
    let context = opts.context.clone();
    match tokio::task::spawn_blocking(move || build_with(&store, &opts, Some(&runner))).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(ImageError::io("build", context, std::io::Error::other(e))),
    }
}

/// Builds the image `opts` describes into `store`; RUN steps go to `runner` (refused
/// without one). Call from a thread that may block (not a tokio worker).
pub fn build_with(
    store: &ImageStore,
    opts: &BuildOptions,
    runner: Option<&Runner>,
) -> Result<Built> {
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
    let cache: BTreeMap<Digest, CacheEntry> = fs::read(&cache_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut b = Builder {
        store,
        opts,
        runner,
        ignore,
        cache,
        built: 0,
        cached: 0,
        stages: Vec::new(),
        scratch: Scratch::new(store.root()),
        roots: HashMap::new(),
        _pins: Vec::new(),
    };
    let mut state: Option<State> = None;
    let mut pre_from_args: BTreeMap<String, String> = BTreeMap::new();
    let target = opts.target.as_deref().map(str::to_ascii_lowercase);
    let is_target = |st: &State, index: usize| {
        target
            .as_deref()
            .is_some_and(|t| st.name.as_deref() == Some(t) || t == index.to_string())
    };
    for ins in &instructions {
        let step = Step { file: &file, ins };
        match (state.as_mut(), ins.keyword.as_str()) {
            (None, "ARG") => {
                for (k, v) in arg_defs(&step, &pre_from_args, &opts.build_args)? {
                    pre_from_args.insert(k, v);
                }
            }
            (_, "FROM") => {
                if let Some(done) = state.take() {
                    if is_target(&done, b.stages.len()) {
                        state = Some(done);
                        break;
                    }
                    b.stages.push(done);
                }
                state = Some(b.from(&step, &pre_from_args)?);
            }
            (None, _) => {
                return Err(step.err("the first instruction must be FROM (or ARG before it)"))
            }
            (Some(st), _) => b.instruction(&step, st)?,
        }
    }
    let st = state.ok_or_else(|| ImageError::Dockerfile {
        file: file.clone(),
        line: 1,
        reason: "no FROM instruction".into(),
    })?;
    if let Some(t) = &target {
        if !is_target(&st, b.stages.len()) {
            return Err(ImageError::Dockerfile {
                file: file.clone(),
                line: 1,
                reason: format!("target stage {t:?} not found"),
            });
        }
    }
    let tmp = cache_path.with_extension("json.tmp");
    fs::write(
        &tmp,
        serde_json::to_vec(&b.cache).expect("cache serializes"),
    )
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
        layers_built: b.built,
        layers_cached: b.cached,
    })
}

/// A directory under the store's `tmp/` for one build (RUN mounts, `--from` root
/// filesystems), removed when the build ends.
struct Scratch {
    base: PathBuf,
    dir: Option<PathBuf>,
}

impl Scratch {
    fn new(store_root: &Path) -> Scratch {
        Scratch {
            base: store_root.join("tmp"),
            dir: None,
        }
    }

    fn dir(&mut self) -> Result<&Path> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        if self.dir.is_none() {
            let d = self.base.join(format!(
                "build-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&d).map_err(|e| ImageError::io("create directory", &d, e))?;
            self.dir = Some(d);
        }
        Ok(self.dir.as_deref().expect("set above"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            if let Err(e) = fs::remove_dir_all(d) {
                tracing::warn!(dir = %d.display(), error = %e, "build scratch directory not removed");
            }
        }
    }
}

struct Builder<'a> {
    store: &'a ImageStore,
    opts: &'a BuildOptions,
    runner: Option<&'a Runner>,
    ignore: Ignore,
    cache: BTreeMap<Digest, CacheEntry>,
    built: usize,
    cached: usize,
    /// Finished stages, in order.
    stages: Vec<State>,
    scratch: Scratch,
    /// Flat root filesystems of stages and images that `COPY --from` read, by stage
    /// index or image id.
    roots: HashMap<String, PathBuf>,
    /// Keeps the layers this build stacks or reads safe from garbage collection.
    _pins: Vec<Pin>,
}

impl Builder<'_> {
    /// One instruction of a stage (every keyword but FROM and pre-FROM ARG).
    fn instruction(&mut self, step: &Step<'_>, st: &mut State) -> Result<()> {
        let (ins, opts) = (step.ins, self.opts);
        let vars = st.vars();
        let x = |s: &str| dockerfile::expand(s, &vars).map_err(|e| step.err(e));
        let mut layer = None;
        match ins.keyword.as_str() {
            "RUN" => layer = Some(self.run(step, st)?),
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
                for (k, v) in arg_defs(step, &vars, &opts.build_args)? {
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
                let joined = clean_abs(&Path::new(&st.workdir()).join(w));
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
            "COPY" | "ADD" => layer = Some(self.copy(step, st, &vars)?),
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
        Ok(())
    }

    /// The cache entry under the stage's current key, if its blob is still stored.
    fn cache_hit(&self, st: &State, diff_id: Option<&Digest>) -> Option<CacheEntry> {
        if self.opts.no_cache {
            return None;
        }
        self.cache
            .get(&st.key)
            .filter(|c| {
                self.store.blobs().size(&c.layer.digest) == Some(c.layer.size)
                    && diff_id.is_none_or(|d| *d == c.diff_id)
            })
            .cloned()
    }

    /// Writes a layer: `write` produces the uncompressed tar into the writer it gets; the
    /// result is gzip-compressed into the blob store and remembered under the stage's key.
    fn store_layer(
        &mut self,
        st: &State,
        write: impl FnOnce(&mut dyn Write) -> std::result::Result<(), ImageError>,
    ) -> Result<CacheEntry> {
        self.store_layer_with(st, None, write)
    }

    /// [`Self::store_layer`] for a tar whose diff id the caller already computed (it is
    /// not hashed again).
    fn store_layer_with(
        &mut self,
        st: &State,
        known_diff_id: Option<Digest>,
        write: impl FnOnce(&mut dyn Write) -> std::result::Result<(), ImageError>,
    ) -> Result<CacheEntry> {
        let ingest = self.store.blobs().ingest()?;
        let mut gz = flate2::write::GzEncoder::new(ingest, flate2::Compression::fast());
        let (gz, diff_id) = match known_diff_id {
            Some(diff_id) => {
                write(&mut gz)?;
                (gz, diff_id)
            }
            None => {
                let mut tar = crate::digest::HashingWriter::new(gz);
                write(&mut tar)?;
                let (gz, diff_id, _) = tar.finish();
                (gz, diff_id)
            }
        };
        let ingest = gz
            .finish()
            .map_err(|e| ImageError::io("compress layer into", self.store.root(), e))?;
        let blob = ingest.commit(None, None)?;
        let entry = CacheEntry {
            layer: Descriptor::new(media::OCI_LAYER_GZIP, blob.digest, blob.size),
            diff_id,
        };
        self.built += 1;
        self.cache.insert(st.key.clone(), entry.clone());
        Ok(entry)
    }

    fn copy(
        &mut self,
        step: &Step<'_>,
        st: &mut State,
        vars: &BTreeMap<String, String>,
    ) -> Result<CacheEntry> {
        let args = copy::parse(step, vars)?;
        let tar = match &args.from {
            None => copy::layer(
                step,
                &args,
                &copy::Source::Context(&self.opts.context, &self.ignore),
                st,
            )?,
            Some(from) => {
                let root = self.root_of(step, from)?;
                copy::layer(step, &args, &copy::Source::Root(&root), st)?
            }
        };
        let diff_id = Digest::of(&tar);
        st.chain(&format!("{} {} {diff_id}", step.ins.keyword, step.ins.args));
        if let Some(hit) = self.cache_hit(st, Some(&diff_id)) {
            self.cached += 1;
            return Ok(hit);
        }
        self.store_layer_with(st, Some(diff_id), |w| {
            w.write_all(&tar)
                .map_err(|e| step.err(format!("write the layer: {e}")))
        })
    }

    fn run(&mut self, step: &Step<'_>, st: &mut State) -> Result<CacheEntry> {
        let Some(runner) = self.runner else {
            return Err(
                step.err("RUN needs a container runtime (build with build::build_with_runtime)")
            );
        };
        let mut env: BTreeMap<String, String> = st.args.clone();
        for kv in st.config.config.env.iter().flatten() {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            env.insert(k.to_string(), v.to_string());
        }
        let cmd = run::Command {
            argv: command(&step.ins.args),
            env: env.into_iter().collect(),
            working_dir: st.workdir(),
            user: st.config.config.user.clone(),
        };
        // The key covers what the process sees, build arguments included.
        st.chain(&format!(
            "RUN {}\n{:?}\n{}\n{:?}",
            step.ins.args, cmd.env, cmd.working_dir, cmd.user
        ));
        let entry = match self.cache_hit(st, None) {
            Some(hit) => {
                self.cached += 1;
                hit
            }
            None => {
                let layers = self.snapshots(st)?;
                let scratch = self.scratch.dir()?.to_path_buf();
                self.store_layer(st, |w| match run::run(runner, &scratch, &layers, &cmd, w) {
                    Ok(_) => Ok(()),
                    Err(run::RunError::Exit { code, tail }) => Err(step.err(format!(
                        "the command exited with code {code}; its last output:\n{tail}"
                    ))),
                    Err(run::RunError::Failed(why)) => Err(step.err(why)),
                })?
            }
        };
        // What follows depends on what this step made, not only on its text.
        st.chain(&format!("layer {}", entry.diff_id));
        Ok(entry)
    }

    /// The stage's layers as snapshot directories (unpacked when missing), lowest first.
    fn snapshots(&mut self, st: &State) -> Result<Vec<PathBuf>> {
        let diff_ids = &st.config.rootfs.diff_ids;
        self._pins.push(
            self.store.pin(
                st.layers
                    .iter()
                    .map(|l| l.digest.clone())
                    .chain(diff_ids.iter().cloned()),
            ),
        );
        st.layers
            .iter()
            .zip(diff_ids)
            .map(|(layer, diff_id)| {
                self.store.ensure_snapshot(layer, diff_id)?;
                Ok(self.store.snapshots().path(diff_id))
            })
            .collect()
    }

    /// The flat root filesystem `COPY --from=<from>` reads: an earlier stage (by name or
    /// index) or an image in the store.
    fn root_of(&mut self, step: &Step<'_>, from: &str) -> Result<PathBuf> {
        let lower = from.to_ascii_lowercase();
        let stage = self
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
            .or_else(|| {
                from.parse::<usize>()
                    .ok()
                    .filter(|i| *i < self.stages.len())
            });
        let (key, layers) = match stage {
            Some(i) => {
                let s = &self.stages[i];
                let layers: Vec<_> = s
                    .layers
                    .iter()
                    .cloned()
                    .zip(s.config.rootfs.diff_ids.iter().cloned())
                    .collect();
                (format!("stage-{i}"), layers)
            }
            None if from.parse::<usize>().is_ok() => {
                return Err(step.err(format!("--from={from}: no earlier stage has that index")))
            }
            None => {
                let img = self.store.inspect(from).map_err(|e| match e {
                    ImageError::ImageNotFound(_) | ImageError::InvalidReference { .. } => {
                        step.err(format!(
                            "--from={from}: no stage of that name and no such image in the store"
                        ))
                    }
                    e => e,
                })?;
                let layers = img
                    .manifest
                    .layers
                    .into_iter()
                    .zip(img.config.rootfs.diff_ids)
                    .collect();
                (format!("image-{}", img.id.hex()), layers)
            }
        };
        if let Some(p) = self.roots.get(&key) {
            return Ok(p.clone());
        }
        let dir = self.scratch.dir()?.join(&key);
        fs::create_dir_all(&dir).map_err(|e| ImageError::io("create directory", &dir, e))?;
        self._pins
            .push(self.store.pin(layers.iter().map(|(l, _)| l.digest.clone())));
        self.store
            .unpack_layers_flat(layers.iter().map(|(l, d)| (l, d)), &dir)?;
        self.roots.insert(key, dir.clone());
        Ok(dir)
    }

    /// A new stage: `FROM <image | earlier stage | scratch> [AS name]`.
    fn from(&self, step: &Step<'_>, args: &BTreeMap<String, String>) -> Result<State> {
        from(self.store, &self.stages, step, args)
    }
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

fn from(
    store: &ImageStore,
    stages: &[State],
    step: &Step<'_>,
    args: &BTreeMap<String, String>,
) -> Result<State> {
    let words =
        dockerfile::words(&dockerfile::expand(&step.ins.args, args).map_err(|e| step.err(e))?);
    if words.iter().any(|w| w.starts_with("--")) {
        return Err(step.err("FROM flags (--platform) are not supported"));
    }
    let (base, name) = match words.as_slice() {
        [b] => (b.clone(), None),
        [b, as_, n] if as_.eq_ignore_ascii_case("as") => (b.clone(), Some(n.to_ascii_lowercase())),
        _ => return Err(step.err("expected FROM <image> [AS <name>]")),
    };
    if let Some(n) = &name {
        let valid = n.starts_with(|c: char| c.is_ascii_alphabetic())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid {
            return Err(step.err(format!("invalid stage name {n:?}")));
        }
        if stages.iter().any(|s| s.name.as_deref() == Some(n.as_str())) {
            return Err(step.err(format!("duplicate stage name {n:?}")));
        }
    }
    let lower = base.to_ascii_lowercase();
    if let Some(earlier) = stages
        .iter()
        .find(|s| s.name.as_deref() == Some(lower.as_str()))
    {
        // A stage built on an earlier one continues from where that one ended.
        return Ok(State {
            name,
            args: BTreeMap::new(),
            cmd_set_here: false,
            ..earlier.clone()
        });
    }
    if base == "scratch" {
        let p = Platform::host();
        return Ok(State {
            name,
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
            key: Digest::of(b"FROM scratch"),
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
        name,
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

/// RFC 3339 UTC timestamp of now, to the second.
fn rfc3339_now() -> String {
    rfc3339(jiff::Timestamp::now().as_second())
}

/// RFC 3339 UTC timestamp of `secs` since the epoch (`1970-01-01T00:00:00Z`).
fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string()
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
