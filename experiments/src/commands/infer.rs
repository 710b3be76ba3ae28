//! `sdrpn infer`: stage C, two-pass answering with the trained RPN (or
//! ViCrop's training-free RoI, or the plain baseline).

use super::common::{DeviceArgs, ViCropArgs};
use crate::eval::{Method, ViCropSpec};
use crate::heatmap::{self, GridPlacement};
use crate::host::{with_host, HostJob, HostKind};
use anyhow::Context;
use burn::tensor::backend::Backend;
use clap::Args;
use sdrpn_core::backend::BackendJob;
use sdrpn_core::host::{AnswerOptions, HostPrompt};
use sdrpn_llava::preprocess::load_rgb;
use sdrpn_train::trainer::load_rpn;
use sdrpn_train::two_pass::TwoPass;
use sdrpn_train::two_pass::{TwoPassOptions, TwoPassOutput};
use sdrpn_train::two_pass_batch::{answer_baseline_batch, answer_batch_with_roi};
use std::path::PathBuf;

/// Arguments of `sdrpn infer`.
#[derive(Debug, Clone, Args)]
pub struct InferArgs {
    /// Checkpoint folder: llava-hf LLaVA-1.5 or HF Qwen2.5-VL (by config.json's model_type)
    #[arg(long)]
    pub model: PathBuf,
    /// Run folder written by `sdrpn train` (holds the RPN and its config);
    /// needed by --method sdrpn, the default when it is given
    #[arg(long)]
    pub rpn: Option<PathBuf>,
    /// baseline, sdrpn, vicrop-rel or vicrop-grad (default: sdrpn with --rpn, else baseline)
    #[arg(long, value_enum)]
    pub method: Option<Method>,
    #[command(flatten)]
    pub vicrop: ViCropArgs,
    /// Image file
    #[arg(long)]
    pub image: PathBuf,
    /// The question (repeat for several questions about the image)
    #[arg(long, required = true)]
    pub question: Vec<String>,
    /// Questions answered together in one padded batch (answers equal
    /// one-at-a-time answers up to float rounding)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// RoI threshold (default: the run's, 0.15)
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Skip the RPN: the plain baseline (same answer as `sdrpn generate`;
    /// the same as --method baseline)
    #[arg(long)]
    pub no_roi: bool,
    /// Write the image with the RoI map and crop box to this PNG (one question only)
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
    type Output = anyhow::Result<Vec<(TwoPassOutput, sdrpn_core::Grid)>>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        if self.heatmap.is_some() && self.question.len() > 1 {
            anyhow::bail!(
                "--heatmap draws one question's RoI map: give one --question (got {})",
                self.question.len()
            );
        }
        if let Some(t) = self.threshold {
            sdrpn_core::roi::check_threshold(t)?;
        }
        if let Some(path) = &self.heatmap {
            heatmap::check_writable(path)?;
        }
        let method = self.method();
        if method == Method::Sdrpn && self.rpn.is_none() {
            anyhow::bail!("--method sdrpn needs --rpn RUN (a `sdrpn train` output)");
        }
        let image = load_rgb(&self.image)?;
        // The run's settings (prompt, answer length), or the model's preset.
        let run_config = match &self.rpn {
            Some(run) => sdrpn_train::SdrpnConfig::load(&run.join("config.toml"))
                .with_context(|| format!("{} is not a `sdrpn train` run", run.display()))?,
            None => HostKind::preset(&self.model)?,
        };
        let vicrop = self.vicrop.spec(&self.model)?;
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
                method,
                image,
                run_config,
                placement,
                vicrop,
            },
        )
    }
}

impl InferArgs {
    /// The method asked for (or implied by --rpn and --no-roi).
    pub fn method(&self) -> Method {
        match (self.no_roi, self.method, &self.rpn) {
            (true, _, _) => Method::Baseline,
            (false, Some(m), _) => m,
            (false, None, Some(_)) => Method::Sdrpn,
            (false, None, None) => Method::Baseline,
        }
    }
}

/// Two-pass answering on a loaded host.
struct Inference {
    args: InferArgs,
    method: Method,
    /// ViCrop's settings (used by vicrop-rel and vicrop-grad).
    vicrop: ViCropSpec,
    image: image::RgbImage,
    run_config: sdrpn_train::SdrpnConfig,
    /// How the host's grid sits on the image (for `--heatmap`).
    placement: GridPlacement,
}

impl<B: Backend> HostJob<B> for Inference {
    type Output = Vec<(TwoPassOutput, sdrpn_core::Grid)>;
    fn run<H: sdrpn_train::trainer::TrainHost<B>>(
        self,
        session: H,
    ) -> anyhow::Result<Vec<(TwoPassOutput, sdrpn_core::Grid)>> {
        let (args, image) = (&self.args, &self.image);
        let mut answer = AnswerOptions {
            max_new_tokens: self.run_config.inference.max_new_tokens,
            stop_strings: Vec::new(),
        };
        if let Some(n) = args.max_new_tokens {
            answer.max_new_tokens = n;
        }
        let grids = args
            .question
            .iter()
            .map(|q| Ok(session.prepare(image, q)?.grid()))
            .collect::<Result<Vec<_>, H::Error>>()
            .map_err(|e| anyhow::anyhow!(sdrpn_train::error::describe(&e)))?;
        let rpn = match (self.method, &args.rpn) {
            (Method::Sdrpn, Some(run)) => Some(load_rpn(&session, run, args.force)?),
            _ => None,
        };
        let vicrop = self
            .vicrop
            .resolve(self.method, session.num_layers(), &answer)?;
        let options = rpn.as_ref().map(|(config, _)| {
            let mut roi = config.inference.roi.clone();
            if let Some(t) = args.threshold {
                roi.threshold = t;
            }
            TwoPassOptions {
                branch: config.rpn.branch_layer,
                roi,
                answer: answer.clone(),
                reuse_prefix_cache: config.inference.reuse_prefix_cache,
            }
        });
        let mut outs = Vec::with_capacity(args.question.len());
        for chunk in args.question.chunks(args.batch as usize) {
            let questions: Vec<(&image::RgbImage, &str)> =
                chunk.iter().map(|q| (image, q.as_str())).collect();
            let answered = match (&rpn, &options, questions.as_slice()) {
                _ if vicrop.is_some() => {
                    let vicrop = vicrop.as_ref().expect("checked");
                    questions
                        .iter()
                        .map(|(_, q)| vicrop.answer(&session, image, q))
                        .collect::<Result<Vec<_>, _>>()?
                }
                (None, _, [(_, q)]) => vec![session.answer_baseline(image, q, &answer)?],
                (None, _, _) => answer_baseline_batch(&session, &questions, &answer)?,
                (Some((_, rpn)), Some(o), [(_, q)]) => {
                    vec![session.answer_with_roi(rpn, image, q, o)?]
                }
                (Some((_, rpn)), Some(o), _) => {
                    answer_batch_with_roi(&session, rpn, &questions, o)?
                }
                (Some(_), None, _) => unreachable!("options are made with the RPN"),
            };
            outs.extend(answered);
        }
        if let (Some(path), Some(out)) = (&args.heatmap, outs.first()) {
            let drawn = heatmap::render(image, &out.roi_map, grids[0], self.placement, out.crop);
            drawn
                .save(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(outs.into_iter().zip(grids).collect())
    }
}

pub fn run(args: InferArgs) -> anyhow::Result<()> {
    let device = args.device.clone();
    let (json, questions) = (args.json, args.question.clone());
    let outs = device.run(args)?;
    if json {
        let values: Vec<serde_json::Value> = outs
            .iter()
            .zip(&questions)
            .map(|((out, grid), question)| {
                let map: Vec<Vec<f32>> = if out.roi_map.is_empty() {
                    Vec::new()
                } else {
                    out.roi_map.chunks(grid.cols).map(|r| r.to_vec()).collect()
                };
                serde_json::json!({
                    "question": question,
                    "answer": out.answer,
                    "roi_map": map,
                    "boxes": out.boxes.iter().map(|b| [b.x0, b.y0, b.x1, b.y1]).collect::<Vec<_>>(),
                    "crop": out.crop.map(|c| [c.x0, c.y0, c.x1, c.y1]),
                    "mode": out.mode,
                    "roi_tokens": out.roi_tokens,
                    "timings": out.timings,
                })
            })
            .collect();
        // One question: its object, as before; several: an array.
        let value = match values.as_slice() {
            [one] => one.clone(),
            _ => serde_json::Value::Array(values),
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        for (out, _) in &outs {
            println!("{}", out.answer);
        }
    }
    Ok(())
}
