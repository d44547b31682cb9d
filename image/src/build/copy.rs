//! COPY and ADD: the uncompressed tar of one step, made from files under a source root
//! (the build context, or another stage's or image's root filesystem for `--from`).
//! Nothing outside the source root is read.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{clean_abs, dockerfile, ignore, State, Step};
use crate::error::Result;
use crate::unpack::Compression;
use ignore::Ignore;

pub(super) struct CopyFlags {
    owner: Option<(u64, u64)>,
    mode: Option<u32>,
}

/// A parsed COPY/ADD: flags, sources and destination (variables expanded).
pub(super) struct CopyArgs {
    /// `--from=<stage name | stage index | image>`.
    pub from: Option<String>,
    flags: CopyFlags,
    srcs: Vec<String>,
    dest: String,
}

/// Where COPY reads from.
pub(super) enum Source<'a> {
    /// The build context: paths are taken as they are, `.dockerignore` applies.
    Context(&'a Path, &'a Ignore),
    /// A root filesystem (`--from`): symlinks, absolute or relative, resolve inside it.
    Root(&'a Path),
}

/// Parses the flags and words of a COPY/ADD instruction.
pub(super) fn parse(step: &Step<'_>, vars: &BTreeMap<String, String>) -> Result<CopyArgs> {
    let mut flags = CopyFlags {
        owner: None,
        mode: None,
    };
    let mut from = None;
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
            Some(("from", v)) if step.ins.keyword == "COPY" => {
                let v = dockerfile::expand(v, vars).map_err(|e| step.err(e))?;
                if v.is_empty() {
                    return Err(step.err("--from needs a stage name, index or image"));
                }
                from = Some(v);
            }
            _ => return Err(step.err(format!("--{flag} is not supported"))),
        }
    }
    let mut words = match dockerfile::json_array(rest) {
        Some(v) => v,
        None => dockerfile::words(rest),
    };
    let mut words: Vec<String> = words
        .drain(..)
        .map(|w| dockerfile::expand(&w, vars).map_err(|e| step.err(e)))
        .collect::<Result<_>>()?;
    if words.len() < 2 {
        return Err(step.err("expected at least one source and a destination"));
    }
    let dest = words.pop().expect("len checked");
    Ok(CopyArgs {
        from,
        flags,
        srcs: words,
        dest,
    })
}

/// The uncompressed tar of one COPY/ADD step.
pub(super) fn layer(
    step: &Step<'_>,
    args: &CopyArgs,
    source: &Source<'_>,
    st: &State,
) -> Result<Vec<u8>> {
    let is_add = step.ins.keyword == "ADD";
    let (dest, srcs, flags) = (&args.dest, &args.srcs, &args.flags);
    let (context, ignore, confined) = match source {
        Source::Context(dir, ignore) => (*dir, *ignore, false),
        Source::Root(dir) => (*dir, &Ignore::default(), true),
    };
    let locate = |rel: &Path| -> Result<PathBuf> {
        if confined {
            resolve_in_root(context, rel)
                .map_err(|e| step.err(format!("{}: {e}", Path::new("/").join(rel).display())))
        } else {
            Ok(context.join(rel))
        }
    };
    let workdir = st.workdir();
    let dest_dir_syntax = dest.ends_with('/') || dest == "." || srcs.len() > 1;
    let dest_path = clean_abs(&Path::new(&workdir).join(dest));

    // Resolve sources (a glob in the last component), never outside the source root.
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
            let dir = locate(parent)?;
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
                    sources.push((locate(&r)?, r.to_string_lossy().into_owned()));
                }
            }
        } else {
            let r = rel.to_string_lossy().into_owned();
            if !r.is_empty() && ignore.excluded(&r) {
                return Err(step.err(format!("{s}: excluded by .dockerignore")));
            }
            sources.push((locate(&rel)?, r));
        }
    }
    if sources.is_empty() {
        return Err(step.err("no source files matched"));
    }
    if sources.len() > 1 && !dest_dir_syntax {
        // Docker's rule: several sources (here from a wildcard) need a directory `dest/`.
        return Err(step.err(format!(
            "{} sources matched, so the destination {dest:?} must be a directory ending with /",
            sources.len()
        )));
    }
    let mut b = tar::Builder::new(Vec::new());
    // Parents of the destination, so the layer stands alone.
    let mut parent = PathBuf::new();
    let dest_rel = dest_path.strip_prefix("/").expect("absolute").to_path_buf();
    let parents: Vec<_> = if dest_dir_syntax {
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
            walk_into(&mut b, abs, rel, &dest_rel, ignore, flags)
                .map_err(|e| step.err(format!("{rel}: {e}")))?;
            continue;
        }
        let target = if dest_dir_syntax {
            dest_rel.join(
                Path::new(rel)
                    .file_name()
                    .or(abs.file_name())
                    .expect("a file has a name"),
            )
        } else {
            dest_rel.clone()
        };
        if is_add && md.is_file() && is_archive(abs) {
            extract_into(&mut b, abs, &dest_rel, flags)
                .map_err(|e| step.err(format!("{rel}: {e}")))?;
            continue;
        }
        append_path(&mut b, abs, &md, &target, flags)
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

/// `rel` inside `root` with every symlink on the way (the last one too) resolved as if
/// `root` were `/`: what a process chrooted there would open. Absolute links restart at
/// `root`, `..` never climbs above it.
fn resolve_in_root(root: &Path, rel: &Path) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let mut pending: Vec<std::ffi::OsString> = rel
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut cur = PathBuf::new();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&name);
        let md = fs::symlink_metadata(root.join(&next));
        if md.as_ref().is_ok_and(|m| m.file_type().is_symlink()) {
            links += 1;
            if links > 40 {
                return Err(std::io::Error::from_raw_os_error(
                    rustix::io::Errno::LOOP.raw_os_error(),
                ));
            }
            let target = fs::read_link(root.join(&next))?;
            if target.is_absolute() {
                cur = PathBuf::new();
            }
            for c in target.components().rev() {
                match c {
                    Component::Normal(n) => pending.push(n.to_os_string()),
                    Component::ParentDir => pending.push("..".into()),
                    _ => {}
                }
            }
        } else {
            cur = next;
        }
    }
    Ok(root.join(cur))
}
