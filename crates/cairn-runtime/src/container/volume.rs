//! A service's state volume: a tmpfs of the spec's cap, mounted on the host and bound into the
//! container at the spec's path, so the kernel holds the service to its size (and
//! [`cairn_types::service_limits::VOLUME_INODES`] files) and the provider can read it.
//!
//! [`pack`] saves it as a reproducible tar (sorted paths, zero owners): directories, regular
//! files (permission bits and modification time kept) and symlinks (kept as links, never
//! followed); sockets and pipes are left out. The provider freezes the container while it
//! packs, so the copy is one instant of the volume. [`unpack`] restores such an archive into
//! a fresh volume before the service starts there: only plain relative paths, no entry written
//! through a symlink, everything owned by the service's user.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use cairn_types::service_limits::VOLUME_INODES;

use super::oci::NOBODY;
use super::tree;
use crate::{Result, RunError, io};

/// Longest path (inside the volume), or link target, a save keeps.
pub const MAX_PATH: usize = 1_024;

/// A service's volume as its host is asked to give it.
#[derive(Clone, Debug)]
pub struct VolumeRun {
    /// Where it is mounted in the container.
    pub path: String,
    /// Its size cap in bytes.
    pub max_bytes: u64,
    /// An archive to start from (a saved copy), when the volume is new on this host.
    pub restore: Option<PathBuf>,
}

/// Mount a fresh volume at `dir` (created), owned by the service's user.
pub(crate) fn mount(dir: &Path, max_bytes: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io)?;
    super::mount_tmpfs(
        dir,
        &format!(
            "size={},nr_inodes={VOLUME_INODES},mode=0755,uid={NOBODY},gid={NOBODY},nosuid,nodev",
            max_bytes.max(4096)
        ),
    )
}

/// Unmount and remove a volume (a directory not mounted is just removed).
pub(crate) fn unmount(dir: &Path) {
    let _ = Command::new("umount").arg("-l").arg(dir).stderr(Stdio::null()).status();
    let _ = std::fs::remove_dir_all(dir);
}

/// Unmount every mount at or under `root`, deepest first: what a provider killed outright
/// left mounted (service volumes, task outputs), before its directory is removed.
pub fn unmount_all_under(root: &Path) {
    let (Ok(root), Ok(table)) = (std::fs::canonicalize(root), std::fs::read_to_string("/proc/self/mounts"))
    else {
        return;
    };
    // /proc/self/mounts writes space, tab, newline and backslash in octal.
    let unescape = |p: &str| {
        p.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
    };
    let mut points: Vec<PathBuf> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(&root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(&p).stderr(Stdio::null()).status();
    }
}

/// A cheap summary of the volume's tree (paths, types, sizes, modes, change times): it differs
/// whenever anything in the volume was written since.
///
/// # Errors
/// [`RunError::Io`] when the tree cannot be read.
pub fn fingerprint(dir: &Path) -> Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    for (rel, m) in tree(dir)? {
        let p = rel.as_os_str().as_encoded_bytes();
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
        for v in [
            u64::from(m.mode()),
            m.size(),
            m.ino(),
            m.mtime().cast_unsigned(),
            m.mtime_nsec().cast_unsigned(),
            m.ctime().cast_unsigned(),
            m.ctime_nsec().cast_unsigned(),
        ] {
            h.update(&v.to_le_bytes());
        }
    }
    Ok(*h.finalize().as_bytes())
}

/// A reader giving exactly `left` bytes: the file's, then zeros if it came up short.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let mut n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            buf[..want].fill(0);
            n = want;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Save the volume at `dir` as a tar archive written to `out`; returns the entries kept.
///
/// # Errors
/// [`RunError::Io`] when the tree cannot be read or a path is longer than [`MAX_PATH`].
pub fn pack(dir: &Path, out: impl Write) -> Result<usize> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Deterministic);
    b.follow_symlinks(false);
    let mut kept = 0;
    for (rel, meta) in tree(dir)? {
        if rel.as_os_str().len() > MAX_PATH {
            return Err(RunError::Io(format!(
                "{}…: a path in the volume is too long to save",
                rel.display()
            )));
        }
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let ty = meta.file_type();
        if ty.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(meta.permissions().mode() & 0o777);
            h.set_size(0);
            b.append_data(&mut h, &rel, std::io::empty()).map_err(io)?;
        } else if ty.is_symlink() {
            let target = std::fs::read_link(dir.join(&rel)).map_err(io)?;
            if target.as_os_str().len() > MAX_PATH {
                return Err(RunError::Io(format!("{}: a link's target is too long to save", rel.display())));
            }
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_link(&mut h, &rel, target).map_err(io)?;
        } else if ty.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(meta.permissions().mode() & 0o777);
            h.set_mtime(meta.mtime().max(0).cast_unsigned());
            h.set_size(meta.len());
            // Never follow a link, nor block on something that became a pipe.
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits().cast_signed())
                .open(dir.join(&rel))
                .map_err(io)?;
            b.append_data(&mut h, &rel, Exact { inner: f.take(meta.len()), left: meta.len() }).map_err(io)?;
        } else {
            // Sockets and pipes are a running program's, not state.
            continue;
        }
        kept += 1;
    }
    b.into_inner().map_err(io)?.flush().map_err(io)?;
    Ok(kept)
}

fn bad(m: String) -> RunError {
    RunError::InvalidWorkload(format!("volume: {m}"))
}

/// Whether `rel`'s ancestors inside `dir` are real directories (or absent), so nothing made
/// at `rel` lands outside `dir` through a link.
fn ancestors_are_dirs(dir: &Path, rel: &Path) -> bool {
    let mut at = dir.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for c in parts.iter().take(parts.len().saturating_sub(1)) {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if !m.is_dir() => return false,
            _ => {}
        }
    }
    true
}

/// Restore a saved volume into `dir` (an empty, mounted volume).
///
/// # Errors
/// [`RunError::InvalidWorkload`] for a malformed archive, a path that is absolute or has
/// `..`, an entry type other than a directory, file or symlink, or more than the volume
/// holds; [`RunError::Io`] for host errors.
pub fn unpack(archive: impl Read, dir: &Path) -> Result<()> {
    let mut a = tar::Archive::new(archive);
    let mut links = Vec::new();
    for entry in a.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let rel = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(bad(format!("{}: not a plain relative path", rel.display())));
        }
        let at = dir.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&at).map_err(|e| bad(format!("{}: {e}", rel.display())))?;
                std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode | 0o700)).map_err(io)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = at.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| bad(format!("{}: {e}", rel.display())))?;
                }
                // A new file only (O_EXCL): never one a link points to.
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&at)
                    .map_err(|e| bad(format!("{}: {e}", rel.display())))?;
                std::io::copy(&mut entry, &mut f).map_err(|e| bad(format!("{}: {e}", rel.display())))?;
                if let Ok(t) = entry.header().mtime() {
                    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t);
                    let _ = f.set_modified(when);
                }
            }
            tar::EntryType::Symlink => {
                let to = entry.link_name().map_err(|e| bad(e.to_string()))?.unwrap_or_default().into_owned();
                links.push((rel, to));
                continue;
            }
            tar::EntryType::XHeader
            | tar::EntryType::XGlobalHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            other => return Err(bad(format!("{}: entries of type {other:?} are not kept", rel.display()))),
        }
    }
    // Links last, so no file above was written through one; none is made under another.
    for (rel, to) in links {
        if !ancestors_are_dirs(dir, &rel) {
            return Err(bad(format!("{}: a link under a link", rel.display())));
        }
        let at = dir.join(&rel);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).map_err(|e| bad(format!("{}: {e}", rel.display())))?;
        }
        std::os::unix::fs::symlink(&to, &at).map_err(|e| bad(format!("{}: {e}", rel.display())))?;
    }
    // Everything (directories made on the way included) belongs to the service's user.
    for (rel, _) in tree(dir)? {
        std::os::unix::fs::lchown(dir.join(rel), Some(NOBODY), Some(NOBODY)).map_err(io)?;
    }
    Ok(())
}
