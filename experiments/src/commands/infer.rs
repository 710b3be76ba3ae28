//! `sdrpn infer`: stage C, two-pass answering with the trained RPN.

use super::common::DeviceArgs;
use super::host::{with_host, HostJob, HostKind};
use crate::heatmap::{self, GridPlacement};
use anyhow::Context;
use burn::tensor::backend::Backend;
use clap::Args;
use sdrpn_core::backend::BackendJob;
use sdrpn_core::host::{AnswerOptions, HostPrompt};
use sdrpn_llava::preprocess::load_rgb;
use sdrpn_train::trainer::load_rpn;
use sdrpn_train::two_pass::TwoPass;
use sdrpn_train::two_pass::{TwoPassOptions, TwoPassOutput};
use std::path::PathBuf;

/// Arguments of `sdrpn infer`.
#[derive(Debug, Clone, Args)]
pub struct InferArgs {
    /// Checkpoint folder: llava-hf LLaVA-1.5 or HF Qwen2.5-VL (by config.json's model_type)
    #[arg(long)]
    pub model: PathBuf,
    /// Run folder written by `sdrpn train` (holds the RPN and its config)
    #[arg(long)]
    pub rpn: PathBuf,
    /// Image file
    #[arg(long)]
    pub image: PathBuf,
    /// The question
    #[arg(long)]
    pub question: String,
    /// RoI threshold (default: the run's, 0.15)
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Skip the RPN: the plain baseline (same answer as `sdrpn generate`)
    #[arg(long)]
    pub no_roi: bool,
    /// Write the image with the RoI map and crop box to this PNG
    #[arg(long)]
    pub heatmap: Option<PathBuf>,
    /// Print JSON: answer, roi_map, boxes, crop, mode, timings
    #[arg(long)]
    pub json: bool,
    /// Most new tokens (default: the run's)
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Use an RPN trained on another model of the same visual grid (refused otherwise)
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl BackendJob for InferArgs {
    type Output = anyhow::Result<(TwoPassOutput, sdrpn_core::Grid)>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        if let Some(t) = self.threshold {
            sdrpn_core::roi::check_threshold(t)?;
        }
        if let Some(path) = &self.heatmap {
            heatmap::check_writable(path)?;
        }
        let image = load_rgb(&self.image)?;
        let run_config = sdrpn_train::SdrpnConfig::load(&self.rpn.join("config.toml"))
            .with_context(|| format!("{} is not a `sdrpn train` run", self.rpn.display()))?;
        let (model, prompt) = (self.model.clone(), run_config.prompt);
        let placement = match HostKind::of(&model)? {
            HostKind::Llava => GridPlacement::Square(prompt.image_mode),
            HostKind::Qwen => GridPlacement::Whole,
        };
        // Qwen2.5-VL answers at each image's own resolution (None), as the
        // reference evaluates.
        with_host::<B, _>(
            &model,
            &device,
            prompt,
            None,
            Inference {
                args: self,
                image,
                run_config,
                placement,
            },
        )
    }
}

/// Two-pass answering on a loaded host.
struct Inference {
    args: InferArgs,
    image: image::RgbImage,
    run_config: sdrpn_train::SdrpnConfig,
    /// How the host's grid sits on the image (for `--heatmap`).
    placement: GridPlacement,
}

impl<B: Backend> HostJob<B> for Inference {
    type Output = (TwoPassOutput, sdrpn_core::Grid);
    fn run<H: sdrpn_train::trainer::TrainHost<B>>(
        self,
        session: H,
    ) -> anyhow::Result<(TwoPassOutput, sdrpn_core::Grid)> {
        let (args, image) = (&self.args, &self.image);
        let mut answer = AnswerOptions {
            max_new_tokens: self.run_config.inference.max_new_tokens,
            stop_strings: Vec::new(),
        };
        if let Some(n) = args.max_new_tokens {
            answer.max_new_tokens = n;
        }
        let grid = session
            .prepare(image, &args.question)
            .map_err(|e| anyhow::anyhow!(sdrpn_train::error::describe(&e)))?
            .grid();
        let out = if args.no_roi {
            session.answer_baseline(image, &args.question, &answer)?
        } else {
            let (config, rpn) = load_rpn(&session, &args.rpn, args.force)?;
            let mut roi = config.inference.roi.clone();
            if let Some(t) = args.threshold {
                roi.threshold = t;
            }
            let options = TwoPassOptions {
                branch: config.rpn.branch_layer,
                roi,
                answer,
                reuse_prefix_cache: config.inference.reuse_prefix_cache,
            };
            session.answer_with_roi(&rpn, image, &args.question, &options)?
        };
        if let Some(path) = &args.heatmap {
            let drawn = heatmap::render(image, &out.roi_map, grid, self.placement, out.crop);
            drawn
                .save(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok((out, grid))
    }
}

pub fn run(args: InferArgs) -> anyhow::Result<()> {
    let device = args.device.clone();
    let json = args.json;
    let (out, grid) = device.run(args)?;
    if json {
        let map: Vec<Vec<f32>> = if out.roi_map.is_empty() {
            Vec::new()
        } else {
            out.roi_map.chunks(grid.cols).map(|r| r.to_vec()).collect()
        };
        let value = serde_json::json!({
            "answer": out.answer,
            "roi_map": map,
            "boxes": out.boxes.iter().map(|b| [b.x0, b.y0, b.x1, b.y1]).collect::<Vec<_>>(),
            "crop": out.crop.map(|c| [c.x0, c.y0, c.x1, c.y1]),
            "mode": out.mode,
            "roi_tokens": out.roi_tokens,
            "timings": out.timings,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{}", out.answer);
    }
    Ok(())
}
