//! Training jobs on the command line: follow the rounds with their held-out loss, and turn the
//! committed checkpoints into a metrics table, a loss-curve PNG and a model package.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use cairn_blobs::BlobStore;
use cairn_client::Client;
use cairn_runtime::train::{Metrics, decode_metrics};
use cairn_types::{JobId, OutputBundle, TrainRole, TrainSpec};

use crate::job::{JobView, fetch_output, finished, job_view, output_of};

/// The plan of a training job, or an error naming what the job is.
pub(crate) fn plan(v: &JobView) -> Result<&TrainSpec> {
    v.spec
        .as_ref()
        .and_then(|s| s.train.as_deref())
        .with_context(|| format!("job {} is not a training job", v.job.id))
}

/// Each round's committed aggregation bundle, fetched (and verified) once.
#[derive(Default)]
pub(crate) struct Rounds {
    bundles: BTreeMap<u32, OutputBundle>,
}

impl Rounds {
    /// Fetch the aggregations committed since the last call.
    pub(crate) async fn update(
        &mut self,
        client: &Client,
        store: &BlobStore,
        v: &JobView,
    ) -> Result<Vec<u32>> {
        let plan = plan(v)?;
        let mut new = Vec::new();
        for t in &v.tasks {
            let (round, role) = plan.role(t.index);
            if role != TrainRole::Aggregate || self.bundles.contains_key(&round) {
                continue;
            }
            let Some((provider, output)) = output_of(t) else { continue };
            let b = fetch_output(client, store, &provider, &output).await?;
            self.bundles.insert(round, b);
            new.push(round);
        }
        Ok(new)
    }

    /// Metrics of the rounds so far, in round order (rounds whose task failed have none).
    pub(crate) fn metrics(&self) -> Vec<Metrics> {
        self.bundles.values().filter_map(decode_metrics).collect()
    }

    /// A round's bundle.
    pub(crate) fn bundle(&self, round: u32) -> Option<&OutputBundle> {
        self.bundles.get(&round)
    }
}

/// `, accuracy 91.6%` for a classifier's round, nothing for a language model's.
pub(crate) fn accuracy(m: &Metrics) -> String {
    m.eval_accuracy.map(|a| format!(", accuracy {:.1}%", a * 100.0)).unwrap_or_default()
}

/// One line about a round.
pub(crate) fn describe(round: u32, b: &OutputBundle) -> String {
    match decode_metrics(b) {
        Some(m) => {
            let acc = accuracy(&m);
            format!(
                "round {}: step {}, train loss {:.4}, held-out loss {:.4}{acc}",
                round + 1,
                m.step,
                m.train_loss,
                m.eval_loss
            )
        }
        None => format!("round {}: {}", round + 1, b.exit().unwrap_or("no metrics")),
    }
}

/// Follow a training job round by round until every task is settled or refunded.
pub(crate) async fn watch(client: &Client, job: &JobId, quiet: bool) -> Result<JobView> {
    let store = crate::job::cache()?;
    let mut rounds = Rounds::default();
    let bar =
        crate::job::progress_bar(quiet, "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} rounds  {msg}");
    loop {
        let v = job_view(client, job).await?;
        let rounds_total = plan(&v)?.rounds;
        bar.set_length(u64::from(rounds_total));
        for r in rounds.update(client, &store, &v).await? {
            match rounds.bundle(r) {
                Some(_) if quiet => {}
                // Not a terminal (a log, a pipe): plain lines.
                Some(b) if bar.is_hidden() => eprintln!("{}", describe(r, b)),
                Some(b) => bar.println(describe(r, b)),
                None => {}
            }
        }
        let done = v.tasks.iter().filter(|t| t.state.is_final()).count();
        let working: Vec<String> = v
            .tasks
            .iter()
            .filter(|t| matches!(t.state.name(), "open" | "assigned" | "committed"))
            .map(|t| {
                let (round, role) = plan(&v).map(|p| p.role(t.index)).unwrap_or((0, TrainRole::Aggregate));
                match role {
                    TrainRole::Shard(s) => format!("r{} shard {s} {}", round + 1, t.state.name()),
                    TrainRole::Aggregate => format!("r{} aggregate {}", round + 1, t.state.name()),
                }
            })
            .take(4)
            .collect();
        bar.set_position(rounds.bundles.len() as u64);
        bar.set_message(format!("{done}/{} tasks settled; {}", v.tasks.len(), working.join(", ")));
        bar.tick();
        if finished(&v) {
            bar.finish();
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `metrics.csv`: one row per round.
pub(crate) fn write_metrics(path: &Path, metrics: &[Metrics]) -> Result<()> {
    let mut s = String::from("round,step,train_loss,eval_loss,eval_accuracy\n");
    for m in metrics {
        let acc = m.eval_accuracy.map(|a| a.to_string()).unwrap_or_default();
        s.push_str(&format!("{},{},{},{},{acc}\n", m.round + 1, m.step, m.train_loss, m.eval_loss));
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

/// Draw the loss curve (train and held-out loss by optimizer step) as a PNG.
pub(crate) fn write_curve(path: &Path, metrics: &[Metrics], title: &str) -> Result<()> {
    use plotters::prelude::*;
    if metrics.is_empty() {
        bail!("no round has metrics to plot");
    }
    // Text needs a font; register one that ships with the binary (no system fonts needed).
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    const W: u32 = 800;
    const H: u32 = 480;
    let mut pixels = vec![0u8; (W * H * 3) as usize];
    let mut draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::with_buffer(&mut pixels, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let xmax = metrics.iter().map(|m| m.step as f64).fold(1.0, f64::max);
        let ymax = metrics.iter().flat_map(|m| [m.train_loss, m.eval_loss]).fold(0.0, f64::max);
        let ymax = if ymax.is_finite() && ymax > 0.0 { ymax * 1.1 } else { 1.0 };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax * 1.02, 0f64..ymax)?;
        chart.configure_mesh().x_desc("optimizer step").y_desc("loss (nats)").draw()?;
        let eval: Vec<(f64, f64)> = metrics.iter().map(|m| (m.step as f64, m.eval_loss)).collect();
        let train: Vec<(f64, f64)> = metrics.iter().map(|m| (m.step as f64, m.train_loss)).collect();
        chart
            .draw_series(LineSeries::new(eval.clone(), BLUE.stroke_width(2)))?
            .label("held-out loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart.draw_series(eval.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))?;
        chart
            .draw_series(LineSeries::new(train, RED.stroke_width(2)))?
            .label("train loss (mean over shards)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W, H);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    w.write_image_data(&pixels)?;
    w.finish()?;
    Ok(())
}

/// What `cairn job result` writes for a training job besides each task's files: the metrics
/// table, the loss curve and the final model (`model/`: `model.json` + `checkpoint.safetensors`).
pub(crate) struct Written {
    pub(crate) metrics: PathBuf,
    pub(crate) curve: Option<PathBuf>,
    pub(crate) model: Option<PathBuf>,
    pub(crate) rounds: Vec<Metrics>,
}

pub(crate) async fn result(client: &Client, v: &JobView, out: &Path) -> Result<Written> {
    let store = crate::job::cache()?;
    let plan = plan(v)?;
    let mut rounds = Rounds::default();
    rounds.update(client, &store, v).await?;
    let metrics = rounds.metrics();
    std::fs::create_dir_all(out)?;
    let metrics_path = out.join("metrics.csv");
    write_metrics(&metrics_path, &metrics)?;
    let curve = if metrics.is_empty() {
        None
    } else {
        let p = out.join("loss.png");
        let what = match plan.model {
            cairn_types::ModelArch::Mlp { .. } => "classifier",
            cairn_types::ModelArch::Gpt { .. } => "language model",
        };
        write_curve(
            &p,
            &metrics,
            &format!("{what}: loss by step ({} rounds × {} shards)", plan.rounds, plan.width),
        )?;
        Some(p)
    };
    let last = plan.rounds.saturating_sub(1);
    let model = match rounds.bundle(last) {
        Some(b) if b.succeeded() => {
            let dir = out.join("model");
            std::fs::create_dir_all(&dir)?;
            for f in [cairn_runtime::train::MODEL_FILE, cairn_runtime::train::CHECKPOINT_FILE] {
                let bytes = b.files.get(f).with_context(|| format!("the final round has no {f}"))?;
                std::fs::write(dir.join(f), bytes)?;
            }
            Some(dir)
        }
        _ => None,
    };
    Ok(Written { metrics: metrics_path, curve, model, rounds: metrics })
}
