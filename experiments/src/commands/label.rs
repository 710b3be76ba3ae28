//! `sdrpn label`: stage A, pseudo-label maps from the frozen model's attention.

use super::common::{DeviceArgs, MethodArgs};
use crate::host::{with_host, HostJob, QWEN_LABEL_SIDE};
use crate::progress::bar;
use anyhow::bail;
use burn::tensor::backend::Backend;
use clap::Args;
use sdrpn_core::backend::BackendJob;
use sdrpn_train::label::{run_labelling, LabelJob, LabelProgress};
use sdrpn_train::questions::{read_questions, ShardSpec};
use sdrpn_train::SdrpnConfig;
use std::path::PathBuf;

/// Arguments of `sdrpn label`.
#[derive(Debug, Clone, Args)]
pub struct LabelArgs {
    /// Checkpoint folder: llava-hf LLaVA-1.5 or HF Qwen2.5-VL (by config.json's model_type)
    #[arg(long)]
    pub model: PathBuf,
    /// LLaVA-style question file (jsonl: question_id, image, text)
    #[arg(long)]
    pub questions: PathBuf,
    /// Folder the questions' image paths are relative to
    #[arg(long)]
    pub images: PathBuf,
    /// Output label folder (created; a rerun resumes)
    #[arg(long)]
    pub out: PathBuf,
    /// This worker's share, i/N (split the work across GPUs or machines)
    #[arg(long, default_value = "0/1")]
    pub shard: ShardSpec,
    /// Only the first N questions
    #[arg(long)]
    pub limit: Option<usize>,
    /// Most answer tokens (default: the config's, 128 for the paper presets)
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Samples per shard file (an interrupted run loses at most one shard)
    #[arg(long, default_value_t = 64)]
    pub shard_size: usize,
    /// When --out holds labels made from another model or other settings,
    /// discard them and label afresh (instead of refusing)
    #[arg(long)]
    pub force: bool,
    /// Questions answered together in one padded batch (labels equal
    /// one-at-a-time labels up to float rounding; use 8-32 on a GPU)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Qwen2.5-VL: side in pixels of the square every image is padded to
    /// (grey) and resized to for labelling; `sdrpn train` must use the same
    #[arg(long, default_value_t = QWEN_LABEL_SIDE)]
    pub qwen_square: u32,
    #[command(flatten)]
    pub method: MethodArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The settings that change the stored maps; a label folder keeps one set.
fn map_settings(c: &SdrpnConfig) -> String {
    format!(
        "{} | {} | {:?} | {} | {:?}",
        c.labels.grounding_heads,
        c.labels.sink_heads,
        c.labels.sink,
        c.labels.max_new_tokens,
        c.prompt
    )
}

impl LabelArgs {
    /// The resolved config (checked against an existing label folder's).
    pub fn config(&self) -> anyhow::Result<SdrpnConfig> {
        let mut config = self
            .method
            .resolve(|| crate::host::HostKind::preset(&self.model))?;
        if let Some(n) = self.max_new_tokens {
            config.labels.max_new_tokens = n;
        }
        let existing = self.out.join("config.toml");
        if existing.exists() && !self.force {
            let old = SdrpnConfig::load(&existing)?;
            if map_settings(&old) != map_settings(&config) {
                bail!(
                    "{} was labelled with other settings ({}); use another --out, the same settings ({}), or --force to discard its labels",
                    self.out.display(),
                    map_settings(&old),
                    map_settings(&config)
                );
            }
        }
        Ok(config)
    }
}

impl BackendJob for LabelArgs {
    type Output = anyhow::Result<LabelProgress>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let config = self.config()?;
        let (questions, bad) = read_questions(&self.questions)?;
        for b in &bad {
            eprintln!(
                "warning: {} line {}: {} (skipped)",
                self.questions.display(),
                b.line,
                b.reason
            );
        }
        sdrpn_train::label_store::write_image_source(&self.out, &self.images)?;
        let job = LabelJob {
            questions,
            images: self.images.clone(),
            out: self.out.clone(),
            shard: self.shard,
            limit: self.limit,
            shard_size: self.shard_size,
            force: self.force,
            batch: self.batch as usize,
        };
        let prompt = config.prompt;
        let square = Some(self.qwen_square);
        with_host::<B, _>(
            &self.model,
            &device,
            prompt,
            square,
            Labelling { config, job },
        )
    }
}

/// Labelling on a loaded host.
struct Labelling {
    config: SdrpnConfig,
    job: LabelJob,
}

impl<B: Backend> HostJob<B> for Labelling {
    type Output = LabelProgress;
    fn run<H: sdrpn_train::trainer::TrainHost<B>>(
        self,
        session: H,
    ) -> anyhow::Result<LabelProgress> {
        let progress = bar(0, "labelling");
        let summary = run_labelling(&session, &self.config, &self.job, |p, skipped| {
            if progress.length() == Some(0) {
                progress.set_length((p.total - p.resumed) as u64);
            }
            progress.set_position(p.handled as u64);
            progress.set_message(format!("{} labelled, {} skipped", p.labelled, p.skipped));
            if let Some((id, why)) = skipped {
                progress.suspend(|| eprintln!("skipped {id}: {why}"));
            }
        })?;
        progress.finish();
        Ok(summary)
    }
}

pub fn run(args: LabelArgs) -> anyhow::Result<()> {
    let device = args.device.clone();
    let out = args.out.clone();
    let p = device.run(args)?;
    println!(
        "labels in {}: {} labelled and {} skipped now, {} done before ({} for this worker in all)",
        out.display(),
        p.labelled,
        p.skipped,
        p.resumed,
        p.total
    );
    Ok(())
}
