//! `sdrpn train`: stage B, the RPN trained on the labels with burn-train.

use super::common::{MethodArgs, TrainDeviceArgs};
use crate::host::{with_host, HostJob, QWEN_LABEL_SIDE};
use crate::progress::TrainBar;
use anyhow::Context;
use burn::tensor::backend::Backend;
use clap::Args;
use sdrpn_core::backend::MultiDeviceJob;
use sdrpn_train::label_store::read_image_source;
use sdrpn_train::label_store::read_labels;
use sdrpn_train::trainer::{train_rpn, TrainReport, TrainRequest};
use sdrpn_train::SdrpnConfig;
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `sdrpn train`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Checkpoint folder (the same model that labelled): llava-hf LLaVA-1.5
    /// or HF Qwen2.5-VL (by config.json's model_type)
    #[arg(long)]
    pub model: PathBuf,
    /// Qwen2.5-VL: the square side the labels were made at (`sdrpn label --qwen-square`)
    #[arg(long, default_value_t = QWEN_LABEL_SIDE)]
    pub qwen_square: u32,
    /// Label folder written by `sdrpn label`
    #[arg(long)]
    pub labels: PathBuf,
    /// Run folder: config.toml, rpn.safetensors, metrics.jsonl, checkpoints
    #[arg(long)]
    pub out: PathBuf,
    /// Image folder (default: the one recorded by `sdrpn label`)
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Train on a seeded subset of N samples
    #[arg(long)]
    pub samples: Option<usize>,
    /// Epochs
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Samples held back for the per-epoch metrics
    #[arg(long)]
    pub holdout: Option<usize>,
    /// Micro-batch size
    #[arg(long)]
    pub batch: Option<usize>,
    /// Gradient accumulation steps
    #[arg(long)]
    pub accum: Option<usize>,
    /// Peak learning rate
    #[arg(long)]
    pub lr: Option<f64>,
    /// Loss: bce, focal or mse
    #[arg(long)]
    pub loss: Option<String>,
    /// Continue a stopped run from its last checkpoint (uses the run's saved config)
    #[arg(long)]
    pub resume: bool,
    /// Stop after this epoch (a time-boxed run; `--resume` continues it)
    #[arg(long)]
    pub stop_after_epoch: Option<usize>,
    /// Train on labels made with another model of the same visual grid, and
    /// (without --resume) start over in a run folder that holds checkpoints
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub method: MethodArgs,
    #[command(flatten)]
    pub device: TrainDeviceArgs,
}

impl TrainArgs {
    /// The run's config: the saved one when resuming, else the labels'
    /// config (or --preset/--config) with the command's overrides.
    pub fn config(&self) -> anyhow::Result<SdrpnConfig> {
        if self.resume {
            let path = self.out.join("config.toml");
            return SdrpnConfig::load(&path)
                .with_context(|| format!("resuming needs {}", path.display()));
        }
        if !self.labels.is_dir() {
            anyhow::bail!(
                "--labels {} is not a folder (expected the --out folder of `sdrpn label`)",
                self.labels.display()
            );
        }
        let labels_config = self.labels.join("config.toml");
        let mut config = self.method.resolve(|| {
            SdrpnConfig::load(&labels_config)
                .with_context(|| format!("{} (or pass --preset/--config)", labels_config.display()))
        })?;
        let t = &mut config.train;
        if let Some(n) = self.samples {
            t.samples = Some(n);
        }
        if let Some(e) = self.epochs {
            t.epochs = e;
        }
        if let Some(h) = self.holdout {
            t.holdout = h;
        }
        if let Some(b) = self.batch {
            t.batch_size = b;
        }
        if let Some(a) = self.accum {
            t.grad_accumulation = a;
        }
        if let Some(lr) = self.lr {
            t.lr = lr;
        }
        if let Some(loss) = &self.loss {
            t.loss = loss.parse()?;
        }
        Ok(config)
    }
}

impl MultiDeviceJob for TrainArgs {
    type Output = anyhow::Result<TrainReport>;
    fn run<B: Backend>(self, mut devices: Vec<B::Device>) -> Self::Output {
        let config = self.config()?;
        let images = match &self.images {
            Some(p) => p.clone(),
            None => read_image_source(&self.labels)?,
        };
        let (_, records) = read_labels(&self.labels)?;
        let paths = sdrpn_train::trainer::RunPaths {
            dir: self.out.clone(),
        };
        match (self.resume, paths.last_checkpoint()) {
            (false, Some(epoch)) if !self.force => anyhow::bail!(
                "{} holds a run with checkpoints up to epoch {epoch}: add --resume to continue it, use a new --out folder, or add --force to start it over",
                self.out.display()
            ),
            (false, Some(epoch)) => eprintln!(
                "--force: {}'s checkpoints (up to epoch {epoch}) are discarded and the run starts over",
                self.out.display()
            ),
            _ => {}
        }
        let (model, prompt, square) = (self.model.clone(), config.prompt, Some(self.qwen_square));
        let main = devices.remove(0);
        let training = Training::<B> {
            args: self,
            config,
            images,
            records,
            replica_devices: devices,
        };
        with_host::<B, _>(&model, &main, prompt, square, training)
    }
}

/// Training on a loaded host.
struct Training<B: Backend> {
    args: TrainArgs,
    config: SdrpnConfig,
    images: PathBuf,
    records: Vec<sdrpn_train::label_store::LabelRecord>,
    /// Further devices to train on, each with a copy of the host.
    replica_devices: Vec<B::Device>,
}

impl<B: Backend> HostJob<B> for Training<B> {
    type Output = TrainReport;
    fn run<H: sdrpn_train::trainer::TrainHost<B>>(self, session: H) -> anyhow::Result<TrainReport> {
        let args = &self.args;
        sdrpn_train::provenance::check_labels_model(
            &args.labels,
            session.fingerprint(),
            args.force,
        )?;
        let replicas = self
            .replica_devices
            .iter()
            .map(|device| Arc::new(session.on_device(device)))
            .collect();
        let request = TrainRequest {
            session: Arc::new(session),
            records: self.records,
            images: &self.images,
            config: &self.config,
            run_dir: &args.out,
            resume: args.resume,
            stop_after_epoch: args.stop_after_epoch,
            replicas,
        };
        Ok(train_rpn(request, TrainBar::new())?)
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let device = args.device.clone();
    let out = args.out.clone();
    let report = device.run(args)?;
    println!(
        "trained the RPN ({} parameters) on {} samples, {} held back; epochs {}..{} of {}",
        report.parameters,
        report.train_samples,
        report.valid_samples,
        report.first_epoch,
        report.completed_epochs,
        report.epochs.len()
    );
    for e in &report.epochs {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
        println!(
            "epoch {}: train loss {}, held-back loss {}, precision {}, recall {}, IoU {}",
            e.epoch,
            f(e.train_loss),
            f(e.valid_loss),
            f(e.valid_precision),
            f(e.valid_recall),
            f(e.valid_iou)
        );
    }
    println!(
        "saved {} (with config.toml and metrics.jsonl)",
        out.join("rpn.safetensors").display()
    );
    Ok(())
}
