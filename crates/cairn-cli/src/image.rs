//! `cairn image …`: container images for `kind: container` jobs — a root filesystem as one
//! reproducible tar, named by its content id (no registry: the file is the image).

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use cairn_runtime::container::image;
use cairn_types::ContentId;
use clap::{Args, Subcommand};

/// Container image commands.
#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Pack a root filesystem directory into an image (the same tree gives the same id).
    Build(BuildArgs),
    /// A minimal image from this machine's static busybox (Debian's `busybox-static`).
    Busybox(BusyboxArgs),
    /// An image of installed Debian packages and everything they depend on (e.g. `blender`).
    Debian(DebianArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DebianArgs {
    /// Installed packages to include, with their dependencies.
    #[arg(required = true)]
    packages: Vec<String>,
    /// Where to write the image.
    #[arg(long, short)]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// The root filesystem directory.
    dir: PathBuf,
    /// Where to write the image.
    #[arg(long, short)]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct BusyboxArgs {
    /// Where to write the image.
    #[arg(long, short)]
    out: PathBuf,
}

fn write(bytes: &[u8], out: &PathBuf) -> Result<()> {
    std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
    println!("{}  {} ({} bytes)", ContentId::of(bytes), out.display(), bytes.len());
    Ok(())
}

pub(crate) fn run(cmd: ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::Build(a) => {
            if !a.dir.is_dir() {
                bail!("{} is not a directory", a.dir.display());
            }
            write(&image::build(&a.dir)?, &a.out)
        }
        ImageCommand::Debian(a) => {
            let tmp = std::env::temp_dir().join(format!("cairn-debian-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let names: Vec<&str> = a.packages.iter().map(String::as_str).collect();
            let tree = cairn_runtime::container::debian::debian_tree(&names, &tmp);
            let bytes = tree.as_ref().ok().map(|_| image::build(&tmp));
            let _ = std::fs::remove_dir_all(&tmp);
            let tree = tree?;
            println!("{} packages, {} files", tree.packages.len(), tree.files);
            for u in &tree.unresolved {
                println!("not included (no installed package by that name): {u}");
            }
            write(&bytes.context("no image")??, &a.out)
        }
        ImageCommand::Busybox(a) => {
            let Some(busybox) = image::find_busybox() else {
                bail!("no static busybox here: apt-get install busybox-static");
            };
            let tmp = std::env::temp_dir().join(format!("cairn-busybox-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            image::busybox_tree(&busybox, &tmp)?;
            let bytes = image::build(&tmp);
            let _ = std::fs::remove_dir_all(&tmp);
            write(&bytes?, &a.out)
        }
    }
}
