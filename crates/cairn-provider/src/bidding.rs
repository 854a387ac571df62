//! The bid engine's loop: screen open tasks, seal a bid on those this provider can run, and
//! reveal it once sealing ends.

use cairn_state::model::{Task, TaskState};
use cairn_types::{Bid, JobSpec, Offer, ProviderInfo, TaskId, TxBody, WorkloadKind};
use std::collections::BTreeSet;
use tracing::{info, warn};

use crate::daemon::{Ctx, TasksView, info_from, serves, spec_of};

pub(crate) async fn bid(ctx: &Ctx) {
    let Ok(v) = ctx.client.get::<TasksView>("/api/tasks?state=open").await else { return };
    let Ok(status) = ctx.client.status().await else { return };
    // Forget tasks that are no longer open (the sets stay bounded; a task re-opened after a
    // missed deadline is considered afresh).
    let open: BTreeSet<TaskId> = v.tasks.iter().map(|t| t.id).collect();
    ctx.bid_on.lock().unwrap_or_else(|p| p.into_inner()).retain(|id| open.contains(id));
    ctx.sealed.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| open.contains(id));
    for t in v.tasks {
        let TaskState::Open { auction_end, .. } = t.state else { continue };
        // Sealing is over: open our bid (the chain takes reveals until the auction closes).
        if status.height > auction_end {
            let price = ctx.sealed.lock().unwrap_or_else(|p| p.into_inner()).remove(&t.id);
            if let Some(price) = price {
                let salt = bid_salt(ctx, &t);
                match ctx
                    .sender
                    .submit(TxBody::Bid(Bid { task: t.id, offer: Offer::Reveal { price, salt } }))
                    .await
                {
                    Ok(_) => info!(task = %t.id.short(), %price, "bid revealed"),
                    Err(e) => warn!(task = %t.id.short(), error = %e, "bid reveal not accepted"),
                }
            }
            continue;
        }
        if ctx.bid_on.lock().unwrap_or_else(|p| p.into_inner()).contains(&t.id)
            || t.excluded.contains(&ctx.me)
        {
            continue;
        }
        let Some(spec) = spec_of(ctx, &t.job).await else { continue };
        let Some(posted) = serves(ctx, &spec) else { continue };
        let info = info_from(ctx);
        let fits = spec.constraints.regions.is_empty() || spec.constraints.regions.contains(&info.region);
        let attrs = spec.constraints.attributes.iter().all(|(k, v)| info.attributes.get(k) == Some(v));
        let room = spec.resources.cpu_millis <= info.capacity.cpu_millis
            && spec.resources.memory_mb <= info.capacity.memory_mb
            && gpus_fit(&spec, &info, ctx.infer.on_gpu());
        ctx.bid_on.lock().unwrap_or_else(|p| p.into_inner()).insert(t.id);
        if !(fits && attrs && room) {
            continue;
        }
        let Some(price) = ctx.pricing.price(&spec, posted) else { continue };
        // Sealed: the price stays hidden from other bidders until the auction stops taking bids.
        let commitment = Bid::commitment(&t.id, &ctx.me, price, &bid_salt(ctx, &t));
        match ctx.sender.submit(TxBody::Bid(Bid { task: t.id, offer: Offer::Sealed(commitment) })).await {
            Ok(_) => {
                info!(task = %t.id.short(), %price, "sealed bid");
                ctx.sealed.lock().unwrap_or_else(|p| p.into_inner()).insert(t.id, price);
            }
            Err(e) => warn!(task = %t.id.short(), error = %e, "bid not accepted"),
        }
    }
}

/// The salt sealing this provider's bid on a task's attempt: secret (derived from the key),
/// and reproducible without storing anything random.
fn bid_salt(ctx: &Ctx, t: &Task) -> cairn_types::Hash32 {
    cairn_types::Hash32(cairn_types::hash_domain(
        "cairn bid salt v1",
        &[&ctx.salt_key, &t.id.0, &t.attempt.to_le_bytes()],
    ))
}

/// Whether the job's GPU request can be met here: none asked, or enough GPUs with the VRAM
/// asked and an executor that runs on them (inference in GPU mode; WASM never uses a GPU).
pub(crate) fn gpus_fit(spec: &JobSpec, info: &ProviderInfo, inference_on_gpu: bool) -> bool {
    if spec.resources.gpus == 0 {
        return true;
    }
    let usable = info.capacity.gpus.iter().filter(|g| g.vram_mb >= spec.resources.gpu_vram_mb).count();
    spec.kind == WorkloadKind::Inference && inference_on_gpu && usable >= spec.resources.gpus as usize
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use cairn_types::{Capacity, Gpu, JobSpec, PriceSheet, ProviderInfo};

    use super::gpus_fit;

    fn spec(kind: &str, gpus: u32, vram: u64) -> JobSpec {
        let mut s = JobSpec::from_yaml(&format!(
            "kind: {kind}\nworkload: {}\nmax_price_per_task: 1 CRN\n",
            cairn_types::ContentId::of(b"w")
        ))
        .unwrap();
        s.resources.gpus = gpus;
        s.resources.gpu_vram_mb = vram;
        s
    }

    #[test]
    fn a_gpu_box_bids_on_gpu_inference_it_can_hold_and_nothing_else_asks_it_for_gpus() {
        let h100 = Gpu { model: "H100".into(), vram_mb: 80_000 };
        let info = ProviderInfo {
            endpoint: "http://127.0.0.1:1".into(),
            region: "DE".parse().unwrap(),
            attributes: Default::default(),
            capacity: Capacity { cpu_millis: 8_000, memory_mb: 64_000, gpus: vec![h100.clone(), h100] },
            prices: PriceSheet::default(),
            storage: None,
        };
        assert!(gpus_fit(&spec("inference", 0, 0), &info, false), "no GPU asked");
        assert!(gpus_fit(&spec("inference", 2, 40_000), &info, true));
        assert!(!gpus_fit(&spec("inference", 3, 0), &info, true), "only two GPUs");
        assert!(!gpus_fit(&spec("inference", 1, 100_000), &info, true), "not enough VRAM");
        assert!(!gpus_fit(&spec("inference", 1, 0), &info, false), "inference runs on the CPU here");
        assert!(!gpus_fit(&spec("wasm", 1, 0), &info, true), "WASM never uses a GPU");
    }
}
