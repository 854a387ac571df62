//! `cairn bench service`: the `hello-service` example on a fresh 3-provider devnet — submit to
//! first good answer for several leases, then one provider SIGKILLed under its lease: how long
//! until the chain accounts the downtime, moves the lease and the service answers again, and
//! whether the refund is exact and the volume moved with the lease; then the time a provider's
//! volume save (freeze, tar, thaw) takes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cairn_client::Client;
use cairn_types::{Amount, Event, RoundVerdict, Transfer, TxBody};
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct ServiceArgs {
    /// Leases opened one after another for the start-up figure.
    #[arg(long, default_value_t = 5)]
    leases: usize,
    /// Where the network lives while measured.
    #[arg(long, default_value = ".cairn/bench-service")]
    home: PathBuf,
    /// Size of the volume whose save is timed, in MiB.
    #[arg(long, default_value_t = 64)]
    volume_mb: u64,
}

/// Events of blocks `from..=to`, with their heights.
async fn events(client: &Client, from: u64, to: u64) -> Result<Vec<(u64, Event)>> {
    let mut out = Vec::new();
    for h in from..=to {
        let v: serde_json::Value = client.get(&format!("/api/blocks/{h}/receipts")).await?;
        for r in v["receipts"].as_array().cloned().unwrap_or_default() {
            for e in r["events"].as_array().cloned().unwrap_or_default() {
                if let Ok(ev) = serde_json::from_value::<Event>(e) {
                    out.push((h, ev));
                }
            }
        }
    }
    Ok(out)
}

async fn answers(url: &str) -> bool {
    match reqwest::Client::new().get(url).timeout(Duration::from_secs(2)).send().await {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    }
}

pub(crate) async fn run(a: ServiceArgs) -> Result<()> {
    let busybox = cairn_runtime::container::image::find_busybox().context("needs busybox-static")?;
    if !cairn_runtime::container::available(std::path::Path::new("runc")) {
        bail!("needs runc, as root");
    }
    let (mut net, client, faucet, dir) = crate::bench::bench_network(&a.home, 27_700).await?;
    let tree = dir.join("rootfs");
    cairn_runtime::container::image::busybox_tree(&busybox, &tree)?;
    std::fs::write(dir.join("busybox.tar"), cairn_runtime::container::image::build(&tree)?)?;
    std::fs::remove_dir_all(&tree)?;
    let key = cairn_types::SecretKey::generate()?;
    let fund = Amount::from_base_units(1_000_000_000);
    crate::job::send(&client, &faucet, TxBody::Transfer(Transfer { to: key.address(), amount: fund }))
        .await?;
    let (_, _, params) = crate::job::fee_and_chain(&client).await?;

    let mut starts = Vec::new();
    let mut last = None;
    for i in 0..a.leases {
        let opened = crate::service::demo_open(&client, &key, &dir, true).await?.context("no image")?;
        let ms = opened.serving_ms.context("the service did not answer")?;
        eprintln!("lease {i}: serving {ms} ms after submitting");
        starts.push(ms as f64);
        if let Some(prev) = last.replace(opened) {
            let prev: crate::service::Opened = prev;
            crate::service::close(&client, &key, prev.lease).await?;
        }
    }
    let opened = last.context("no lease")?;
    // Let a round pass and the volume be saved, then kill the provider serving the last lease.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let view = crate::service::lease_view(&client, &opened.lease).await?;
    let born = match &view.url {
        Some(url) => reqwest::get(format!("{url}born")).await?.text().await?,
        None => bail!("the lease has no url"),
    };
    let saved = view.lease.volume.clone().context("the provider did not save the volume in 3 s")?;
    let victim =
        net.providers.iter().position(|e| view.url.as_deref().is_some_and(|u| u.starts_with(e.as_str())));
    let victim = victim.context("the lease's provider is not one of the bench's")?;
    // (A first round probed before the service was up is refunded too: count from here.)
    let refunded_before = view.lease.refunded_blocks;
    let killed_at = client.status().await?.height;
    let killed = Instant::now();
    net.kill_provider(victim);
    let mut accounted = None;
    let (served_ms, moved_at, same_state) = loop {
        if killed.elapsed() > Duration::from_secs(120) {
            bail!("the lease did not move within two minutes");
        }
        let v = crate::service::lease_view(&client, &opened.lease).await?;
        if accounted.is_none() && v.lease.refunded_blocks > refunded_before {
            accounted = Some((killed.elapsed().as_millis() as f64, client.status().await?.height));
        }
        if v.lease.migrations > 0
            && let Some(url) = &v.url
            && answers(&format!("{url}health")).await
        {
            let moved_born = reqwest::get(format!("{url}born")).await?.text().await?;
            break (killed.elapsed().as_millis() as f64, client.status().await?.height, moved_born == born);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (paid, refunded) = crate::service::close(&client, &key, opened.lease).await?;
    let tip = client.status().await?.height;
    // Exactness: every failed round refunded price × blocks, and the lease's totals add up.
    let mut price = Amount::ZERO;
    let mut exact = true;
    let mut failed_rounds = 0;
    for (_, e) in events(&client, 1, tip).await? {
        match e {
            Event::LeaseOpened { lease, price_per_block, .. }
            | Event::LeaseMigrated { lease, price_per_block, .. }
                if lease == opened.lease =>
            {
                price = price_per_block;
            }
            Event::LeaseRoundSettled {
                lease, verdict: RoundVerdict::Failed, blocks, refunded, paid, ..
            } if lease == opened.lease => {
                failed_rounds += 1;
                exact &= paid.is_zero() && price.checked_mul(u128::from(blocks)) == Some(refunded);
            }
            _ => {}
        }
    }
    let l = crate::service::lease_view(&client, &opened.lease).await?.lease;
    exact &= l.paid.checked_add(l.refunded) == Some(l.deposit) && l.paid == paid;
    let (lag_ms, lag_at) = accounted.unwrap_or((f64::NAN, 0));
    let interval = params.probe_interval;
    let window = 10 * interval;
    let mut sorted = starts.clone();
    let p50 = crate::bench::median(&mut sorted);
    let max = starts.iter().copied().fold(0.0, f64::max);
    println!("| measure | value | target |");
    println!("|---|---:|---|");
    println!("| service start, submit → first good answer (p50 of {}) | {p50:.0} ms | ≤ 3000 ms |", a.leases);
    println!("| service start, worst | {max:.0} ms | ≤ 3000 ms |");
    println!(
        "| SIGKILL → first refunded round on chain | {lag_ms:.0} ms ({} blocks) | one round: {interval} blocks after the probe |",
        lag_at.saturating_sub(killed_at)
    );
    println!(
        "| SIGKILL → moved and answering again | {served_ms:.0} ms ({} blocks) | ≤ one SLA window ({window} blocks) |",
        moved_at.saturating_sub(killed_at)
    );
    println!(
        "| failed rounds refunded exactly | {failed_rounds} round(s), {} | exact |",
        if exact { "exact" } else { "NOT exact" }
    );
    println!(
        "| lease totals | paid {paid}, refunded {refunded} ({} / {} blocks) | paid + refunded = deposit |",
        l.paid_blocks, l.refunded_blocks
    );
    println!(
        "| volume moved with the lease (stamp of the first start served after the move) | {} (save {} bytes, block {}) | same |",
        if same_state { "same" } else { "DIFFERENT" },
        saved.size,
        saved.at
    );
    // The killed provider's service still runs (its next start would remove it): remove it.
    let victim_services = net.root.join(format!("provider-{victim}/runtime/services"));
    drop(net);
    let (save_ms, size) = volume_save(&dir, a.volume_mb, &victim_services)?;
    println!(
        "| volume save, {} MiB (freeze, tar, thaw; p50 of 5) | {save_ms:.0} ms ({:.0} MiB/s) | — |",
        a.volume_mb,
        size as f64 / 1048576.0 / (save_ms / 1000.0)
    );
    Ok(())
}

/// Time the provider's volume save on a running service whose volume holds `mb` MiB of
/// random bytes: (median ms of five saves, archive bytes). The services a killed provider
/// left in `reap` are removed first.
fn volume_save(dir: &std::path::Path, mb: u64, reap: &std::path::Path) -> Result<(f64, usize)> {
    use cairn_runtime::Executor as _;
    use cairn_runtime::container::service::{ServiceHost, ServiceRun};
    let bytes = std::fs::read(dir.join("busybox.tar"))?;
    let image = cairn_types::ContentId::of(&bytes);
    let exec = std::sync::Arc::new(cairn_runtime::ContainerExecutor::new(
        cairn_runtime::ContainerConfig::in_dir(dir.join("volume-bench")),
    )?);
    exec.prepare(&image, &bytes)?;
    drop(ServiceHost::new(exec.clone(), reap)?);
    let host = ServiceHost::new(exec, dir.join("volume-bench/services"))?;
    let script = format!(
        "busybox dd if=/dev/urandom of=/data/blob bs=1048576 count={mb} 2>/dev/null; exec httpd -f -p 8080 -h /data"
    );
    host.start(&ServiceRun {
        name: "volume-bench".into(),
        image,
        args: vec!["/bin/sh".into(), "-c".into(), script],
        env: Default::default(),
        inputs: Vec::new(),
        port: 8080,
        memory_mb: mb.saturating_mul(2).saturating_add(64),
        cpu_millis: 0,
        network: false,
        volume: Some(cairn_runtime::container::volume::VolumeRun {
            path: "/data".into(),
            max_bytes: mb.saturating_add(8) << 20,
            restore: None,
        }),
    })?;
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        let t = Instant::now();
        size = host.save_volume("volume-bench")?.len();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok((crate::bench::median(&mut times), size))
}
