//! Root filesystems from Debian packages installed on this machine: a package, everything it
//! depends on (recursively, the first installed choice of each alternative), and the files
//! `dpkg` lists for each, copied into a tree that [`super::image::build`] packs. This is how a
//! native program with shared libraries (Blender, Python) becomes an image without a registry.
//!
//! Documentation, manual pages and translations are left out. The merged-`/usr` links of the
//! host (`/bin → usr/bin`, `/lib → usr/lib`, …) are recreated first, so a file `dpkg` lists under
//! either path lands once.

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::process::Command;

use crate::{Result, RunError, io};

/// Trees of files left out of an image.
const SKIPPED: &[&str] =
    &["/usr/share/doc", "/usr/share/man", "/usr/share/info", "/usr/share/locale", "/usr/share/lintian"];

/// What [`debian_tree`] put in the tree.
#[derive(Clone, Debug, Default)]
pub struct DebianTree {
    /// The packages copied, sorted.
    pub packages: Vec<String>,
    /// Dependencies named by a package that no installed package satisfies under that name
    /// (usually virtual packages another installed package provides), sorted.
    pub unresolved: Vec<String>,
    /// Files copied.
    pub files: usize,
}

fn dpkg(args: &[&str]) -> Result<Option<String>> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| RunError::Io(format!("{}: {e} (a Debian system with dpkg is needed)", args[0])))?;
    Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Whether `name` is installed, and its dependency fields.
fn installed(name: &str) -> Result<Option<String>> {
    let Some(out) =
        dpkg(&["dpkg-query", "-W", "-f", "${db:Status-Status}\t${Pre-Depends}, ${Depends}", name])?
    else {
        return Ok(None);
    };
    let mut lines = out.lines();
    Ok(match lines.next().and_then(|l| l.split_once('\t')) {
        Some(("installed", deps)) => Some(deps.to_string()),
        _ => None,
    })
}

/// Package names of a dependency field: each alternative group as its names, without versions
/// or architecture qualifiers.
fn groups(field: &str) -> Vec<Vec<String>> {
    field
        .split(',')
        .map(|g| {
            g.split('|')
                .filter_map(|alt| {
                    let name = alt.split_whitespace().next()?.split(':').next()?.to_string();
                    (!name.is_empty()).then_some(name)
                })
                .collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect()
}

/// `packages` and their installed dependencies, copied into `dir` (created).
///
/// # Errors
/// [`RunError::InvalidWorkload`] when a named package is not installed; [`RunError::Io`] when
/// `dpkg` cannot run or the tree cannot be written.
pub fn debian_tree(packages: &[&str], dir: &Path) -> Result<DebianTree> {
    tree(packages, dir, false)
}

/// [`debian_tree`] with the files hard-linked rather than copied where `dir` is on the same
/// filesystem (copied otherwise): a root for this machine's own sandboxes that costs no disk.
/// The links share the host files' contents, so such a tree must only ever be mounted
/// read-only.
///
/// # Errors
/// As [`debian_tree`].
pub fn debian_tree_linked(packages: &[&str], dir: &Path) -> Result<DebianTree> {
    tree(packages, dir, true)
}

fn tree(packages: &[&str], dir: &Path, link: bool) -> Result<DebianTree> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut unresolved: BTreeSet<String> = BTreeSet::new();
    let mut queue: VecDeque<String> = VecDeque::new();
    for p in packages {
        if installed(p)?.is_none() {
            return Err(RunError::InvalidWorkload(format!(
                "package {p:?} is not installed here (apt-get install {p})"
            )));
        }
        queue.push_back((*p).to_string());
    }
    while let Some(p) = queue.pop_front() {
        if !seen.insert(p.clone()) {
            continue;
        }
        let Some(deps) = installed(&p)? else { continue };
        for group in groups(&deps) {
            let mut chosen = None;
            for alt in &group {
                if seen.contains(alt) || installed(alt)?.is_some() {
                    chosen = Some(alt.clone());
                    break;
                }
            }
            match chosen {
                Some(c) => queue.push_back(c),
                None => {
                    unresolved.insert(group.join(" | "));
                }
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    for link in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = Path::new("/").join(link);
        if let Ok(target) = std::fs::read_link(&host) {
            let at = dir.join(link);
            if target.is_relative() {
                std::fs::create_dir_all(dir.join(&target)).map_err(io)?;
            }
            if std::fs::symlink_metadata(&at).is_err() {
                std::os::unix::fs::symlink(target, at).map_err(io)?;
            }
        }
    }
    let mut files = 0;
    let mut links = Vec::new();
    for p in &seen {
        let Some(list) = dpkg(&["dpkg-query", "-L", p])? else { continue };
        for path in list.lines().filter(|l| l.starts_with('/') && *l != "/.") {
            if SKIPPED.iter().any(|s| path == *s || path.starts_with(&format!("{s}/"))) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(path) else { continue };
            let to = dir.join(path.trim_start_matches('/'));
            // Already there: a directory, a merged-`/usr` link, or a file listed twice.
            if std::fs::symlink_metadata(&to).is_ok() {
                continue;
            }
            let ty = meta.file_type();
            if ty.is_dir() {
                std::fs::create_dir_all(&to).map_err(io)?;
            } else if ty.is_symlink() {
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                std::os::unix::fs::symlink(std::fs::read_link(path).map_err(io)?, &to).map_err(io)?;
                links.push(std::path::PathBuf::from(path));
            } else if ty.is_file() {
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                if !(link && std::fs::hard_link(path, &to).is_ok()) {
                    std::fs::copy(path, &to).map_err(io)?;
                }
                files += 1;
            }
        }
    }
    links.extend(alternatives(dir));
    files += follow_links(dir, links, link)?;
    Ok(DebianTree {
        packages: seen.into_iter().collect(),
        unresolved: unresolved.into_iter().collect(),
        files,
    })
}

/// Links that point outside what the packages list — Debian's alternatives
/// (`liblapack.so.3 → /etc/alternatives/… → the chosen implementation`) — followed on the host
/// and their targets added, link by link. Returns the files added.
fn follow_links(dir: &Path, mut links: Vec<std::path::PathBuf>, link: bool) -> Result<usize> {
    let mut files = 0;
    let mut steps = 0;
    while let Some(at) = links.pop() {
        steps += 1;
        if steps > 100_000 {
            break;
        }
        let Ok(target) = std::fs::read_link(&at) else { continue };
        let host = normalize(&at.parent().unwrap_or(Path::new("/")).join(target));
        let to = dir.join(host.strip_prefix("/").unwrap_or(&host));
        if std::fs::symlink_metadata(&to).is_ok() {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&host) else { continue };
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&host).map_err(io)?, &to).map_err(io)?;
            links.push(host);
        } else if meta.is_file() {
            if !(link && std::fs::hard_link(&host, &to).is_ok()) {
                std::fs::copy(&host, &to).map_err(io)?;
            }
            files += 1;
        }
    }
    Ok(files)
}

/// The links Debian's alternatives system made (`update-alternatives`, which `dpkg -L` does not
/// list) whose choice is a file in the tree: the host's links, to be copied into it with what
/// they point through.
fn alternatives(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/var/lib/dpkg/alternatives") else { return out };
    for e in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
        let mut lines = text.lines().skip(1);
        let mut pairs =
            vec![(e.file_name().to_string_lossy().into_owned(), lines.next().unwrap_or("").to_string())];
        // Slave links: name and path pairs up to a blank line.
        while let (Some(name), Some(path)) = (lines.next().filter(|l| !l.is_empty()), lines.next()) {
            pairs.push((name.to_string(), path.to_string()));
        }
        for (name, link) in pairs {
            let chosen = std::fs::read_link(Path::new("/etc/alternatives").join(&name));
            let in_tree = chosen.is_ok_and(|t| {
                std::fs::symlink_metadata(dir.join(t.strip_prefix("/").unwrap_or(&t))).is_ok()
            });
            let to = dir.join(link.trim_start_matches('/'));
            if in_tree
                && !link.is_empty()
                && std::fs::symlink_metadata(&to).is_err()
                && let (Some(parent), Ok(target)) = (to.parent(), std::fs::read_link(&link))
                && std::fs::create_dir_all(parent).is_ok()
                && std::os::unix::fs::symlink(target, &to).is_ok()
            {
                out.push(std::path::PathBuf::from(link));
            }
        }
    }
    out.sort();
    out
}

/// `p` with `.` and `..` resolved by name (no links followed).
fn normalize(p: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::from("/");
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_fields_parse_to_alternative_groups() {
        let g = groups(
            "libc6 (>= 2.34), libjack-jackd2-0 (>= 1.9) | libjack-0.125, python3:any,  , debconf | debconf-2.0",
        );
        assert_eq!(
            g,
            vec![
                vec!["libc6".to_string()],
                vec!["libjack-jackd2-0".to_string(), "libjack-0.125".to_string()],
                vec!["python3".to_string()],
                vec!["debconf".to_string(), "debconf-2.0".to_string()],
            ]
        );
        assert!(groups(", ").is_empty());
    }
}
