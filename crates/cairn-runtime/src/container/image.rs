//! Container images: a root filesystem as one uncompressed tar archive, named by the BLAKE3
//! of its bytes (an OCI layer is such a tar). No registry is involved: an image is a blob like
//! any workload, fetched and verified by content id before it is unpacked.
//!
//! [`build`] makes the archive from a directory reproducibly (sorted paths, zero times and
//! owners), so the same tree gives the same image id on every machine. [`unpack`] refuses
//! entries that would land outside the target (absolute paths, `..`, links through symlinks)
//! and anything but directories, regular files, symlinks and hard links.

use std::io::Read;
use std::path::{Component, Path};

use crate::{Result, RunError, io};

/// A reproducible tar of `dir`'s tree: directories, regular files (mode kept, setuid and
/// setgid bits dropped) and symlinks, in sorted order, with zero times and owners.
///
/// # Errors
/// [`RunError::Io`] when the tree cannot be read, or holds other file types.
pub fn build(dir: &Path) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    b.follow_symlinks(false);
    for (rel, meta) in super::tree(dir)? {
        let p = dir.join(&rel);
        let mut h = tar::Header::new_ustar();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        let ty = meta.file_type();
        if ty.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, &rel, std::io::empty()).map_err(io)?;
        } else if ty.is_symlink() {
            let target = std::fs::read_link(&p).map_err(io)?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_link(&mut h, &rel, target).map_err(io)?;
        } else if ty.is_file() {
            use std::os::unix::fs::PermissionsExt as _;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(meta.permissions().mode() & 0o777);
            h.set_size(meta.len());
            let f = std::fs::File::open(&p).map_err(io)?;
            b.append_data(&mut h, &rel, f).map_err(io)?;
        } else {
            return Err(RunError::Io(format!("{}: not a file, directory or symlink", rel.display())));
        }
    }
    b.into_inner().map_err(io)
}

/// Unpack an image archive into `dest` (which must not exist yet).
///
/// # Errors
/// [`RunError::InvalidWorkload`] for a malformed archive, an entry that would escape `dest`,
/// or an entry type other than a directory, file or link; [`RunError::Io`] for host errors.
pub fn unpack(archive: impl Read, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(io)?;
    let mut a = tar::Archive::new(archive);
    a.set_preserve_permissions(false);
    a.set_preserve_mtime(false);
    a.set_unpack_xattrs(false);
    a.set_overwrite(true);
    let bad = |m: String| RunError::InvalidWorkload(format!("image: {m}"));
    for entry in a.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        if path.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(bad(format!("{}: an entry outside the image", path.display())));
        }
        match entry.header().entry_type() {
            tar::EntryType::Directory
            | tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::Symlink
            | tar::EntryType::Link => {}
            // Extended headers are read by the archive itself.
            tar::EntryType::XHeader
            | tar::EntryType::XGlobalHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            other => {
                return Err(bad(format!("{}: entries of type {other:?} are not allowed", path.display())));
            }
        }
        // unpack_in refuses paths that resolve outside `dest`, through symlinks included.
        let inside = entry.unpack_in(dest).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        if !inside {
            return Err(bad(format!("{}: an entry outside the image", path.display())));
        }
    }
    Ok(())
}

/// Busybox tools linked into [`busybox_tree`]'s `/bin`.
pub const BUSYBOX_TOOLS: &[&str] = &[
    "sh",
    "ash",
    "cat",
    "cp",
    "cut",
    "date",
    "echo",
    "env",
    "expr",
    "false",
    "grep",
    "gzip",
    "head",
    "httpd",
    "id",
    "ln",
    "ls",
    "md5sum",
    "mkdir",
    "mv",
    "nc",
    "od",
    "ping",
    "printf",
    "rm",
    "sed",
    "seq",
    "sha256sum",
    "sleep",
    "sort",
    "tail",
    "tar",
    "tee",
    "test",
    "touch",
    "tr",
    "true",
    "uniq",
    "wc",
    "wget",
    "xargs",
];

/// The host's static busybox, if installed (Debian's `busybox-static`).
pub fn find_busybox() -> Option<std::path::PathBuf> {
    ["/usr/bin/busybox", "/bin/busybox"].iter().map(std::path::PathBuf::from).find(|p| p.is_file())
}

/// A minimal root filesystem in `dir`: the static `busybox` binary as `/bin/busybox`, its
/// common tools linked beside it, and empty `/etc`. [`build`] makes it an image.
///
/// # Errors
/// [`RunError::Io`] when the tree cannot be written.
pub fn busybox_tree(busybox: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("bin")).map_err(io)?;
    std::fs::create_dir_all(dir.join("etc")).map_err(io)?;
    std::fs::copy(busybox, dir.join("bin/busybox")).map_err(io)?;
    for t in BUSYBOX_TOOLS {
        let link = dir.join("bin").join(t);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("busybox", link).map_err(io)?;
    }
    Ok(())
}
