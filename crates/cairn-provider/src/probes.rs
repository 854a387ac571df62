//! The provider's prober role: when the chain draws it to probe a lease's round, it requests
//! the SLA's probe path through the serving provider's public address, as a client would, and
//! reports what it saw (`ReportProbe`).
//!
//! The moment is its own secret: a height between a quarter and a half of the way through the
//! round, derived from this provider's private key, the lease and the round. So the serving
//! provider cannot know when it is probed, and the probe carries nothing a client's request
//! would not.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_types::{LeaseId, ReportProbe, TxBody, hash_domain};
use serde::Deserialize;
use tracing::{info, warn};

use crate::daemon::Ctx;

#[derive(Debug, Clone, Deserialize)]
struct Owed {
    lease: LeaseId,
    round: u32,
    round_start: u64,
    round_end: u64,
    url: String,
    latency_ms: u32,
}

#[derive(Deserialize)]
struct ProbesView {
    probes: Vec<Owed>,
}

/// Answer probe draws, forever.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    let taken: Arc<Mutex<BTreeSet<(LeaseId, u32)>>> = Arc::default();
    let http = match reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "no HTTP client; this provider will not probe");
            return;
        }
    };
    loop {
        let me = ctx.me;
        match ctx.client.get::<ProbesView>(&format!("/api/providers/{me}/probes")).await {
            Ok(v) => {
                let mut t = taken.lock().unwrap_or_else(|p| p.into_inner());
                for p in v.probes {
                    if t.insert((p.lease, p.round)) {
                        let (c, h, done) = (ctx.clone(), http.clone(), taken.clone());
                        tokio::spawn(async move {
                            let key = (p.lease, p.round);
                            probe(&c, &h, p).await;
                            // Forget it after the round is surely over, so the set stays small.
                            tokio::time::sleep(Duration::from_secs(600)).await;
                            done.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                        });
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read this provider's probe draws"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The height this prober probes at: a secret point in the round's second quarter.
fn probe_height(ctx: &Ctx, p: &Owed) -> u64 {
    let len = p.round_end.saturating_sub(p.round_start).max(1);
    let h = hash_domain("cairn probe moment v1", &[&ctx.salt_key, &p.lease.0, &p.round.to_le_bytes()]);
    let r = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    let span = (len / 4).max(1);
    p.round_start.saturating_add(len / 4).saturating_add(r % span)
}

async fn probe(ctx: &Ctx, http: &reqwest::Client, p: Owed) {
    let at = probe_height(ctx, &p);
    loop {
        match ctx.client.status().await {
            Ok(s) if s.height >= p.round_end => return,
            Ok(s) if s.height >= at => break,
            _ => tokio::time::sleep(Duration::from_millis(150)).await,
        }
    }
    // A client would give up long after the SLA's latency; so does a probe.
    let limit = Duration::from_millis(u64::from(p.latency_ms).saturating_mul(4).max(2_000));
    let started = Instant::now();
    let ok = match http.get(&p.url).timeout(limit).send().await {
        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
        Err(_) => false,
    };
    let latency_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
    let body = TxBody::ReportProbe(ReportProbe { lease: p.lease, round: p.round, ok, latency_ms });
    match ctx.sender.submit(body).await {
        Ok(_) => info!(lease = %p.lease.short(), round = p.round, ok, latency_ms, "probe reported"),
        Err(e) => warn!(lease = %p.lease.short(), round = p.round, error = %e, "probe report not accepted"),
    }
}
