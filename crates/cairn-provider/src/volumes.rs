//! The provider's volume role: keep the chain's copy of each served lease's volume current.
//!
//! Every [`SAVE_EVERY`] it looks at the volume of each container service it runs that has one
//! (a cheap walk of names, sizes and change times). When something was written since the last
//! save, it saves the volume (the container frozen for the copy), uploads the archive to the
//! validator signed, and records it on chain with `SaveVolume`. A provider the lease moves to
//! starts the service on that copy; so a service loses at most the writes of its last few
//! seconds when its provider dies. On SIGTERM every volume is saved once more before the
//! services stop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_types::{ContentId, LeaseId, SaveVolume, TxBody, TxStatus};
use tracing::{info, warn};

use crate::daemon::Ctx;
use crate::services::Services;

/// How often volumes are looked at (and saved when they changed).
pub(crate) const SAVE_EVERY: Duration = Duration::from_secs(2);

/// What was last saved of one lease's volume.
#[derive(Clone, Debug)]
pub(crate) struct Saved {
    /// The volume's fingerprint when it was last saved (or found unchanged).
    pub(crate) fingerprint: Option<[u8; 32]>,
    /// The archive the chain holds for it.
    pub(crate) blob: Option<ContentId>,
    /// The largest archive the chain takes for it.
    pub(crate) max_archive: u64,
}

/// Save changed volumes, forever.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    let Some(svc) = ctx.services.clone() else { return };
    loop {
        tokio::time::sleep(SAVE_EVERY).await;
        save_changed(&ctx, &svc).await;
    }
}

/// Save every volume that changed since its last save.
pub(crate) async fn save_changed(ctx: &Ctx, svc: &Arc<Services>) {
    let leases: BTreeMap<LeaseId, Saved> = svc.volumes();
    for (lease, last) in leases {
        if let Err(e) = save_one(ctx, svc, lease, last).await {
            warn!(lease = %lease.short(), error = %e, "cannot save the service's volume; will try again");
        }
    }
}

async fn save_one(ctx: &Ctx, svc: &Arc<Services>, lease: LeaseId, last: Saved) -> crate::Result<()> {
    let name = lease.to_string();
    let s = svc.clone();
    let n = name.clone();
    let Some(fingerprint) = tokio::task::spawn_blocking(move || s.host().volume_fingerprint(&n).transpose())
        .await
        .map_err(join)??
    else {
        return Ok(());
    };
    if last.fingerprint == Some(fingerprint) {
        return Ok(());
    }
    let s = svc.clone();
    let packed = tokio::task::spawn_blocking(move || s.host().save_volume(&name)).await.map_err(join)?;
    // What the service wrote cannot be saved (a path too long): not again until it changes.
    let bytes = packed.inspect_err(|_| svc.volume_seen(&lease, fingerprint, None))?;
    let (blob, size) = (ContentId::of(&bytes), bytes.len() as u64);
    if last.blob == Some(blob) {
        svc.volume_seen(&lease, fingerprint, Some(blob));
        return Ok(());
    }
    if size > last.max_archive {
        svc.volume_seen(&lease, fingerprint, None);
        return Err(crate::Error::Config(format!(
            "the volume's archive is {size} bytes, over the {} its spec allows (too many long names); it is not saved",
            last.max_archive
        )));
    }
    ctx.fetcher.upload(&ctx.cfg.node, bytes).await?;
    let body = TxBody::SaveVolume(SaveVolume { lease, blob, size });
    match ctx.sender.submit_and_wait(body, Duration::from_secs(30)).await {
        Ok(TxStatus::Ok) => {
            svc.volume_seen(&lease, fingerprint, Some(blob));
            info!(lease = %lease.short(), blob = %blob.short(), bytes = size, "volume saved");
            Ok(())
        }
        Ok(TxStatus::Failed(code) | TxStatus::Rejected(code)) => {
            // A refusal (the lease moved or closed) is not retried, so no fee is spent on it
            // again; a change to the volume tries once more.
            svc.volume_seen(&lease, fingerprint, None);
            Err(crate::Error::Config(format!("the chain refused the save: {code}")))
        }
        Err(e) => Err(e.into()),
    }
}

fn join(e: tokio::task::JoinError) -> crate::Error {
    crate::Error::Config(format!("volume thread: {e}"))
}
