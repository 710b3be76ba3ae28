//! `sdrpn eval`: a benchmark, baseline or SD-RPN, resumable, scored.

use super::common::{DeviceArgs, ViCropArgs};
use crate::data_source::load_samples;
use crate::eval::{run_eval, score_predictions, EvalReport, EvalSpec, Method};
use crate::host::{with_host, HostJob};
use crate::progress::bar;
use anyhow::Context;
use burn::tensor::backend::Backend;
use clap::Args;
use sdrpn_core::backend::BackendJob;
use sdrpn_eval::benchmarks::Benchmark;
use sdrpn_llava::session::PromptOptions;
use sdrpn_train::questions::ShardSpec;
use sdrpn_train::trainer::load_rpn;
use sdrpn_train::SdrpnConfig;
use std::path::PathBuf;

/// Arguments of `sdrpn eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// textvqa, docvqa, infovqa, chartqa, ocrbench, vstar, pope
    #[arg(long)]
    pub benchmark: Benchmark,
    /// The benchmark's Parquet file or folder, a LLaVA question jsonl, or synthetic:N
    #[arg(long)]
    pub data: String,
    /// Image folder of a LLaVA question jsonl
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// llava-hf checkpoint folder
    #[arg(long)]
    pub model: PathBuf,
    /// Trained RPN run (needed for --method sdrpn)
    #[arg(long)]
    pub rpn: Option<PathBuf>,
    /// baseline, sdrpn, vicrop-rel or vicrop-grad (default: sdrpn when --rpn is given)
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    #[command(flatten)]
    pub vicrop: ViCropArgs,
    /// RoI threshold (default: the benchmark's, from the paper)
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Only the first N samples
    #[arg(long)]
    pub limit: Option<usize>,
    /// Most new tokens (default: the benchmark's)
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Output folder: predictions-<worker>.jsonl and score.json (a rerun continues)
    #[arg(long, default_value = "eval-out")]
    pub out: PathBuf,
    /// This worker's share, i/N
    #[arg(long, default_value = "0/1")]
    pub shard: ShardSpec,
    /// A baseline eval folder of the same benchmark, to report relative throughput
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// When --out holds answers made from other inputs, discard them and answer
    /// afresh (instead of refusing); also use an RPN trained on another model
    /// of the same visual grid
    #[arg(long)]
    pub force: bool,
    /// Samples answered together in one padded batch (answers equal
    /// one-at-a-time answers up to float rounding; use 8-32 on a GPU)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl EvalArgs {
    /// The method asked for (or implied by --rpn).
    pub fn method(&self) -> Method {
        self.method.unwrap_or(if self.rpn.is_some() {
            Method::Sdrpn
        } else {
            Method::Baseline
        })
    }
}

impl BackendJob for EvalArgs {
    type Output = anyhow::Result<EvalReport>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        if let Some(t) = self.threshold {
            sdrpn_core::roi::check_threshold(t)?;
        }
        self.shard.refuse_force(self.force)?;
        let method = self.method();
        let loaded = load_samples(self.benchmark, &self.data, self.images.as_deref())?;
        for warning in loaded.warnings(&self.data) {
            eprintln!("{warning}");
        }
        let run_config = match (&self.rpn, method) {
            (Some(run), Method::Sdrpn) => Some(SdrpnConfig::load(&run.join("config.toml"))?),
            (None, Method::Sdrpn) => {
                anyhow::bail!("--method sdrpn needs --rpn RUN (a `sdrpn train` output)")
            }
            _ => None,
        };
        let prompt = run_config
            .as_ref()
            .map_or(PromptOptions::default(), |c| c.prompt);
        // Qwen2.5-VL answers at each image's own resolution (None), as the
        // reference evaluates.
        let model = self.model.clone();
        with_host::<B, _>(
            &model,
            &device,
            prompt,
            None,
            Evaluation {
                args: self,
                method,
                samples: loaded.samples,
            },
        )
    }
}

/// An evaluation on a loaded host.
struct Evaluation {
    args: EvalArgs,
    method: Method,
    samples: Vec<sdrpn_eval::benchmarks::Sample>,
}

impl<B: Backend> HostJob<B> for Evaluation {
    type Output = EvalReport;
    fn run<H: sdrpn_train::trainer::TrainHost<B>>(self, session: H) -> anyhow::Result<EvalReport> {
        let (args, method) = (&self.args, self.method);
        let rpn = match &args.rpn {
            Some(run) if method == Method::Sdrpn => Some(load_rpn(&session, run, args.force)?),
            _ => None,
        };
        let spec = EvalSpec {
            benchmark: args.benchmark,
            method,
            threshold: args.threshold,
            max_new_tokens: args.max_new_tokens,
            limit: args.limit,
            shard: args.shard,
            out: args.out.clone(),
            rpn_weights: match (&args.rpn, method) {
                (Some(run), Method::Sdrpn) => Some(sdrpn_train::trainer::rpn_fingerprint(run)?),
                _ => None,
            },
            redo_on_change: args.force,
            batch: args.batch as usize,
            vicrop: args.vicrop.spec(&args.model)?,
        };
        let progress = bar(0, &format!("{} {:?}", args.benchmark, method));
        run_eval(
            &session,
            rpn.as_ref().map(|(c, r)| (r, c)),
            &self.samples,
            &spec,
            |done, total, skipped| {
                progress.set_length(total as u64);
                progress.set_position(done as u64);
                if let Some((id, why)) = skipped {
                    progress.suspend(|| eprintln!("skipped {id}: {why}"));
                }
            },
        )?;
        progress.finish();
        score_predictions(args.benchmark, method, &args.out)
    }
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let device = args.device.clone();
    let baseline = args.baseline.clone();
    let report = device.run(args)?;
    println!("{}", report.summary);
    println!(
        "{} samples, {:.3} samples/s, {:.2} tokens/s, RoI modes {:?}",
        report.samples, report.samples_per_s, report.tokens_per_s, report.modes
    );
    if let Some(dir) = baseline {
        let text = std::fs::read_to_string(dir.join("score.json"))
            .with_context(|| format!("{}/score.json", dir.display()))?;
        let base: serde_json::Value = serde_json::from_str(&text)?;
        let base_rate = base["samples_per_s"].as_f64().unwrap_or(f64::NAN);
        println!(
            "throughput {:.2}x the baseline ({:.3} samples/s)",
            report.samples_per_s / base_rate,
            base_rate
        );
    }
    println!("{:.2}", report.score);
    Ok(())
}
