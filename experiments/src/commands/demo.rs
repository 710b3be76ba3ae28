//! `sdrpn demo`: the whole pipeline (label -> train -> infer with a heatmap)
//! on a built-in tiny model with seeded RANDOM weights and generated images.
//! It shows the mechanics and the files each stage writes, not accuracy.

use super::common::{DeviceArgs, MethodArgs, TrainDeviceArgs};
use super::infer::InferArgs;
use super::label::LabelArgs;
use super::train::TrainArgs;
use crate::synthetic::{picture, write_question_set};
use anyhow::Context;
use burn::tensor::backend::Backend;
use clap::Args;
use sdrpn_core::backend::{BackendJob, MultiDeviceJob};
use sdrpn_llava::config::{Activation, ClipVisionConfig, LlamaConfig};
use sdrpn_llava::{Llava, LlavaConfig};
use sdrpn_train::dataset::SplitMix;
use std::path::PathBuf;

/// The tokenizer of the test fixtures (a small Llama-style BPE, 517 tokens).
const TOKENIZER_JSON: &str =
    include_str!("../../../sdrpn-llava/tests/fixtures/tiny-llava/tokenizer.json");

/// Arguments of `sdrpn demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Folder for everything the demo writes
    #[arg(long, default_value = "sdrpn-demo")]
    pub out: PathBuf,
    /// Generated image/question pairs to label
    #[arg(long, default_value_t = 32)]
    pub samples: usize,
    /// Training epochs
    #[arg(long, default_value_t = 6)]
    pub epochs: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// A LLaVA-1.5-shaped model small enough for a laptop CPU: CLIP 168 px
/// (12x12 visual tokens), a 4-layer LLaMA of width 64.
pub fn demo_config() -> LlavaConfig {
    LlavaConfig {
        vision: ClipVisionConfig {
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 3,
            num_heads: 4,
            image_size: 168,
            patch_size: 14,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
        },
        text: LlamaConfig {
            vocab_size: 517,
            hidden_size: 64,
            intermediate_size: 172,
            num_layers: 4,
            num_heads: 4,
            num_kv_heads: 4,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 1024,
            tie_word_embeddings: false,
            attention_bias: false,
            mrope_section: None,
        },
        projector_act: Activation::Gelu,
        projector_bias: true,
        vision_feature_layer: -2,
        drop_cls: true,
        image_token_index: 515,
        pad_token_id: Some(516),
    }
}

impl BackendJob for DemoArgs {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let out = &self.out;
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        println!("sdrpn demo: a tiny LLaVA-shaped model with RANDOM weights (seeded) on generated images.");
        println!("It shows the mechanics of label -> train -> infer and the files each writes; its answers and");
        println!("maps mean nothing. With real weights, see the README (same three commands on LLaVA-1.5-7B).\n");

        let model = out.join("model");
        // Query/key weights scaled up so the random model's attention is peaked
        // enough to give some usable pseudo-labels.
        Llava::<B>::write_random_checkpoint(&demo_config(), 7, 16.0, &model, &device)?;
        std::fs::write(model.join("tokenizer.json"), TOKENIZER_JSON)?;
        let mut rng = SplitMix::new(4242); // the test picture, unlike any training one
        let questions = write_question_set(out, self.samples, 2024)?;
        println!(
            "[1/3] labelling {} questions (model in {})",
            self.samples,
            model.display()
        );
        let method = MethodArgs {
            preset: Some("tiny".into()),
            ..MethodArgs::default()
        };
        let labels = out.join("labels");
        let progress = LabelArgs {
            model: model.clone(),
            questions,
            images: out.join("images"),
            out: labels.clone(),
            shard: Default::default(),
            limit: None,
            max_new_tokens: None,
            shard_size: 16,
            force: false,
            batch: 1,
            qwen_square: crate::host::QWEN_LABEL_SIDE,
            method: method.clone(),
            device: self.device.clone(),
        }
        .run::<B>(device.clone())?;
        println!(
            "      {} labelled, {} skipped -> {}\n",
            progress.labelled,
            progress.skipped,
            labels.display()
        );

        println!("[2/3] training the RPN ({} epochs)", self.epochs);
        let run = out.join("run");
        let report = TrainArgs {
            model: model.clone(),
            labels,
            out: run.clone(),
            images: None,
            samples: None,
            epochs: Some(self.epochs),
            holdout: Some(self.samples / 4),
            batch: Some(4),
            accum: Some(1),
            lr: Some(2e-3),
            loss: None,
            resume: false,
            stop_after_epoch: None,
            // A rerun of the demo trains again from the start.
            force: true,
            qwen_square: crate::host::QWEN_LABEL_SIDE,
            method: MethodArgs::default(),
            device: TrainDeviceArgs::single(self.device.clone()),
        }
        .run::<B>(vec![device.clone()])?;
        for e in &report.epochs {
            println!(
                "      epoch {}: train loss {:.4}, held-back IoU {}",
                e.epoch,
                e.train_loss.unwrap_or(f64::NAN),
                e.valid_iou.map_or("-".into(), |v| format!("{v:.3}"))
            );
        }
        println!("      RPN saved in {}\n", run.display());

        println!("[3/3] two-pass inference on a new picture");
        let (img, colour) = picture(&mut rng);
        let image = out.join("test.png");
        img.save(&image)?;
        let heatmap = out.join("heatmap.png");
        let (answer, _) = InferArgs {
            model,
            rpn: Some(run),
            method: None,
            vicrop: Default::default(),
            image: image.clone(),
            question: vec!["What color is the ball?".into()],
            batch: 1,
            threshold: None,
            no_roi: false,
            heatmap: Some(heatmap.clone()),
            json: false,
            max_new_tokens: None,
            force: false,
            device: self.device.clone(),
        }
        .run::<B>(device)?
        .remove(0);
        println!(
            "      the ball is {colour}; the random model says {:?}; RoI mode {:?}, {} RoI tokens, crop {:?}",
            answer.answer, answer.mode, answer.roi_tokens, answer.crop
        );
        println!(
            "      heatmap: {} ({:.0} ms in all)",
            heatmap.display(),
            answer.timings.total_ms
        );
        Ok(())
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let device = args.device.clone();
    device.run(args)
}
