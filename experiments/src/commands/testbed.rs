//! `sdrpn testbed`: the fine-grained VQA testbed (pretrain the micro-LLaVA).

use super::common::DeviceArgs;
use crate::testbed::heads::{rank_heads, selection_of};
use crate::testbed::micro::micro_llava;
use crate::testbed::pretrain::{
    greedy_answer, into_inference, make_item, pretrain, Kind, PretrainSettings, Stage, Student,
};
use crate::testbed::run::{probe_of, run_testbed, testbed_method, RunSettings};
use crate::testbed::task::{Family, Split, TaskConfig};
use crate::testbed::vocab;
use anyhow::Context;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use clap::{Args, Subcommand};
use sdrpn_core::backend::BackendJob;
use sdrpn_llava::model::Llava;
use sdrpn_llava::session::{LlavaSession, PromptOptions};
use sdrpn_llava::tokenizer::LlavaTokenizer;
use std::path::PathBuf;

/// Subcommands of `sdrpn testbed`.
#[derive(Debug, Subcommand)]
pub enum TestbedCommand {
    /// Pretrain the micro-LLaVA from scratch and write a llava-hf folder.
    Pretrain(PretrainArgs),
    /// Rank (layer, head) pairs by how well their answer-to-image attention
    /// localises the target on validation questions.
    Heads(HeadsArgs),
    /// Label, train and evaluate SD-RPN on fresh scenes; write results.md,
    /// results.json and figures.
    Run(RunArgs),
}

/// The shipped testbed model, relative to the repository root.
pub const SHIPPED_MODEL: &str = "experiments/testbed/model";

/// Arguments of `sdrpn testbed heads`.
#[derive(Debug, Args)]
pub struct HeadsArgs {
    /// The testbed model (llava-hf folder)
    #[arg(long, default_value = SHIPPED_MODEL)]
    model: PathBuf,
    /// Seed of the validation scenes
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Validation questions per family
    #[arg(long, default_value_t = 50)]
    samples: usize,
    /// Write the full ranking here (JSON)
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    task: TaskArgs,
    #[command(flatten)]
    device: DeviceArgs,
}

/// The task options shared by `heads`, `run` and `pretrain`.
#[derive(Clone, Copy, Debug, Args)]
pub struct TaskArgs {
    /// Draw a code on every object, not only on the target (the question
    /// must then be bound to the object it names)
    #[arg(long)]
    distractor_codes: bool,
}

impl TaskArgs {
    /// The task these options name.
    fn config(self) -> TaskConfig {
        TaskConfig::with_distractor_codes(self.distractor_codes)
    }
}

/// Arguments of `sdrpn testbed run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The testbed model (llava-hf folder)
    #[arg(long, default_value = SHIPPED_MODEL)]
    model: PathBuf,
    /// Seed of the scenes (the model stays fixed)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output folder (default: testbed-out/seed-<S>)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Few samples and one epoch: the same code path in about a minute
    #[arg(long)]
    smoke: bool,
    /// RPN training questions per family
    #[arg(long)]
    train: Option<usize>,
    /// Test questions per family
    #[arg(long)]
    test: Option<usize>,
    /// RPN training epochs
    #[arg(long)]
    epochs: Option<usize>,
    #[command(flatten)]
    task: TaskArgs,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Arguments of `sdrpn testbed pretrain`.
#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// Output folder (config.json, model.safetensors, tokenizer files)
    #[arg(long)]
    out: PathBuf,
    /// Optimizer steps of the vision stage (ViT with per-patch heads)
    #[arg(long, default_value_t = PretrainSettings::default().vision_steps)]
    vision_steps: usize,
    /// Optimizer steps of the language stage (projector and LLaMA, ViT frozen)
    #[arg(long, default_value_t = PretrainSettings::default().language_steps)]
    steps: usize,
    /// Samples per step
    #[arg(long, default_value_t = PretrainSettings::default().batch_size)]
    batch_size: usize,
    /// Peak learning rate of the vision stage
    #[arg(long, default_value_t = PretrainSettings::default().vision_lr)]
    vision_lr: f64,
    /// Peak learning rate of the language stage
    #[arg(long, default_value_t = PretrainSettings::default().lr)]
    lr: f64,
    /// Seed of the weights and the data stream
    #[arg(long, default_value_t = PretrainSettings::default().seed)]
    seed: u64,
    /// Weight of the question head's loss (the colour the question names)
    #[arg(long, default_value_t = PretrainSettings::default().question_weight)]
    question_weight: f32,
    /// Shares of the language stage's question kinds, in this order:
    /// large-global, small-two-view, small-zoom, small-global, shape-global
    /// (five numbers, comma-separated; default: the shipped recipe's)
    #[arg(long, value_parser = parse_language_mix)]
    language_mix: Option<[f64; 6]>,
    /// Share of the language stage with 1-2 objects per scene, then (up to
    /// twice that share) 2-3, then the task's 3-5
    #[arg(long, default_value_t = PretrainSettings::default().few_objects)]
    few_objects: f64,
    /// Start from this model's weights (a folder an earlier `testbed
    /// pretrain` wrote) instead of random ones; with `--vision-steps 0` only
    /// the language stage runs, on a ViT left as it is (to try a language
    /// recipe on a trained ViT)
    #[arg(long)]
    init: Option<PathBuf>,
    #[command(flatten)]
    task: TaskArgs,
    /// Log every N steps
    #[arg(long, default_value_t = 20)]
    log_every: usize,
    /// Storage dtype of the written weights: f32, f16 or bf16 (the shipped
    /// model is f16)
    #[arg(long, default_value = "f16", value_parser = ["f32", "f16", "bf16"])]
    weights_dtype: String,
    /// Only time three forward and three forward+backward passes of one
    /// batch (large-code global views), print the times and exit
    #[arg(long)]
    time_only: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Runs `sdrpn testbed ...`.
pub fn run(command: TestbedCommand) -> anyhow::Result<()> {
    match command {
        TestbedCommand::Pretrain(args) => {
            let device = args.device.clone();
            device.run(PretrainJob(args))
        }
        TestbedCommand::Heads(args) => {
            let device = args.device.clone();
            device.run(HeadsJob(args))
        }
        TestbedCommand::Run(args) => {
            let mut settings = if args.smoke {
                RunSettings::smoke(args.seed)
            } else {
                RunSettings {
                    seed: args.seed,
                    ..RunSettings::default()
                }
            };
            settings.train_per_family = args.train.unwrap_or(settings.train_per_family);
            settings.test_per_family = args.test.unwrap_or(settings.test_per_family);
            settings.epochs = args.epochs.unwrap_or(settings.epochs);
            settings.distractor_codes = args.task.distractor_codes;
            let out = args
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("testbed-out/seed-{}", args.seed)));
            let device = args.device.clone();
            device.run(RunJob {
                model: args.model,
                settings,
                out: out.clone(),
            })?;
            println!("{}", std::fs::read_to_string(out.join("results.md"))?);
            println!(
                "(also {} and figures there)",
                out.join("results.json").display()
            );
            Ok(())
        }
    }
}

struct HeadsJob(HeadsArgs);

impl BackendJob for HeadsJob {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        let args = self.0;
        let session = LlavaSession::<B>::load(&args.model, &device, PromptOptions::default())
            .with_context(|| {
                format!("cannot load the testbed model in {}", args.model.display())
            })?;
        let validation =
            Split::Validation.samples(args.seed, &Family::ALL, args.samples, &args.task.config());
        let probes: Vec<_> = validation.iter().map(probe_of).collect();
        let bar = crate::progress::bar(probes.len() as u64, "ranking heads");
        let ratio = testbed_method("0:0")?.labels.thresholds.fg_ratio;
        let scores = rank_heads(&session, &probes, ratio, 8, |done, _| {
            bar.set_position(done as u64)
        })?;
        bar.finish_and_clear();
        println!("| rank | layer | head | mean IoU | peak in target |\n|---:|---:|---:|---:|---:|");
        for (i, s) in scores.iter().enumerate().take(12) {
            println!(
                "| {} | {} | {} | {:.3} | {:.0}% |",
                i + 1,
                s.layer,
                s.head,
                s.mean_iou,
                100.0 * s.peak_hit_rate
            );
        }
        println!("\ngrounding heads (best 3): {}", selection_of(&scores, 3));
        if let Some(out) = &args.out {
            sdrpn_train::error::write_atomic(
                out,
                serde_json::to_string_pretty(&scores)?.as_bytes(),
            )?;
        }
        Ok(())
    }
}

struct RunJob {
    model: PathBuf,
    settings: RunSettings,
    out: PathBuf,
}

impl BackendJob for RunJob {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        run_testbed::<B>(
            &self.model,
            &self.settings,
            &self.out,
            &device,
            &mut |line| eprintln!("{line}"),
        )?;
        Ok(())
    }
}

/// Parses `--language-mix`: five non-negative shares (the sixth kind,
/// glyph sheets, belongs to the vision stage), not all zero.
fn parse_language_mix(text: &str) -> Result<[f64; 6], String> {
    let shares: Vec<f64> = text
        .split(',')
        .map(|s| s.trim().parse::<f64>().map_err(|e| format!("{s:?}: {e}")))
        .collect::<Result<_, _>>()?;
    if shares.len() != 5 {
        return Err(format!(
            "expected 5 comma-separated shares, got {}",
            shares.len()
        ));
    }
    if shares.iter().any(|&s| !(s >= 0.0 && s.is_finite())) || shares.iter().sum::<f64>() <= 0.0 {
        return Err("shares must be finite, non-negative and not all zero".into());
    }
    Ok([shares[0], shares[1], shares[2], shares[3], shares[4], 0.0])
}

struct PretrainJob(PretrainArgs);

impl BackendJob for PretrainJob {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        let args = self.0;
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?;
        vocab::save(&args.out)?;
        let config = micro_llava();
        let tokenizer = LlavaTokenizer::from_dir(&args.out, config.image_token_index)?;
        let settings = PretrainSettings {
            vision_steps: args.vision_steps,
            language_steps: args.steps,
            batch_size: args.batch_size,
            vision_lr: args.vision_lr,
            lr: args.lr,
            question_weight: args.question_weight,
            seed: args.seed,
            language_mix: args
                .language_mix
                .unwrap_or(PretrainSettings::default().language_mix),
            few_objects: args.few_objects,
            // The ViT's per-patch heads are not saved with a model: from
            // --init without a vision stage they would start random and
            // their interleaved steps would undo what the ViT learnt.
            vision_every: if args.init.is_some() && args.vision_steps == 0 {
                0
            } else {
                PretrainSettings::default().vision_every
            },
            ..PretrainSettings::default()
        };
        let task = args.task.config();
        if args.time_only {
            profile::<B>(&config, &settings, &task, &tokenizer, &device);
            return Ok(());
        }
        let (llava, names) = match &args.init {
            None => Llava::<Autodiff<B>>::random_named(config.clone(), args.seed, &device)?,
            Some(init) => {
                let loaded = Llava::<Autodiff<B>>::load_named(init, &device)
                    .with_context(|| format!("--init {}", init.display()))?;
                anyhow::ensure!(
                    loaded.0.config() == &config,
                    "--init {}: its config.json is not the testbed model's (another architecture or vocabulary)",
                    init.display()
                );
                loaded
            }
        };
        // Fail now, not after the training, if a parameter has no name.
        llava.export(&names)?;
        let student = Student::new(llava, &device);
        let student = pretrain(
            student,
            &settings,
            &task,
            &tokenizer,
            args.log_every,
            &mut |l| println!("{l}"),
        );
        let llava = into_inference(student);
        let tensors = llava.export(&names)?;
        let dtype = match args.weights_dtype.as_str() {
            "f32" => safetensors::Dtype::F32,
            "bf16" => safetensors::Dtype::BF16,
            _ => safetensors::Dtype::F16,
        };
        sdrpn_llava::weights::write_safetensors_as(
            &args.out.join("model.safetensors"),
            &tensors,
            dtype,
        )?;
        std::fs::write(args.out.join("config.json"), config.to_hf_json())?;
        // Quick greedy check per kind on fresh samples.
        let check = PretrainSettings {
            seed: args.seed ^ 0xC0FFEE,
            ..settings
        };
        let mut right = std::collections::BTreeMap::<Kind, (usize, usize)>::new();
        for i in 0..200 {
            let item = make_item(i, Stage::Language, 1.0, &check, &task, &tokenizer);
            let tokens = greedy_answer(&llava, &item, 4);
            let want: Vec<u32> = item
                .targets
                .iter()
                .filter(|&&t| t >= 0)
                .map(|&t| t as u32)
                .collect();
            let e = right.entry(item.kind).or_default();
            e.0 += usize::from(tokens == want[..want.len() - 1] || tokens == want);
            e.1 += 1;
        }
        for (kind, (ok, n)) in right {
            println!("greedy exact {}: {ok}/{n}", kind.name());
        }
        Ok(())
    }
}

/// Times the forward pass alone and with the backward pass on one batch of
/// each stage.
fn profile<B: Backend>(
    config: &sdrpn_llava::config::LlavaConfig,
    settings: &PretrainSettings,
    task: &TaskConfig,
    tokenizer: &LlavaTokenizer,
    device: &B::Device,
) {
    use crate::testbed::pretrain::{batch_gradients, language_loss, vision_loss};
    use burn::optim::GradientsParams;
    use std::time::Instant;
    let auto = Student::new(
        Llava::<Autodiff<B>>::random(config.clone(), 1, device).unwrap(),
        device,
    );
    for stage in [Stage::Vision, Stage::Language] {
        for kind in [Kind::LargeGlobal, Kind::SmallTwoView] {
            let items: Vec<_> = (0..400u64)
                .map(|i| make_item(i, stage, 1.0, settings, task, tokenizer))
                .filter(|it| it.kind == kind)
                .take(settings.batch_size)
                .collect();
            if items.len() < settings.batch_size {
                continue;
            }
            for threads in [1, 2] {
                let t = Instant::now();
                if threads == 1 {
                    let loss = match stage {
                        Stage::Vision => vision_loss(&auto, &items, settings),
                        Stage::Language => language_loss(&auto, &items, 1.0),
                    };
                    let _ = GradientsParams::from_grads(loss.total.backward(), &auto);
                } else {
                    let _ = batch_gradients(&auto, &items, stage, settings);
                }
                println!(
                    "{stage:?} {} ({} tokens, batch {}): forward+backward on {threads} thread(s) {:.2} s",
                    kind.name(),
                    items[0].ids.len(),
                    items.len(),
                    t.elapsed().as_secs_f64()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_language_mix;

    #[test]
    fn language_mixes_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_language_mix("0.4, 0.1,0.25,0,0.25").unwrap(),
            [0.4, 0.1, 0.25, 0.0, 0.25, 0.0]
        );
        for (bad, says) in [
            ("0.5,0.5", "expected 5"),
            ("0.4,0.1,x,0,0.25", "\"x\""),
            ("0.4,0.1,-1,0,0.25", "non-negative"),
            ("0,0,0,0,0", "not all zero"),
            ("0.4,0.1,NaN,0,0.25", "finite"),
        ] {
            let e = parse_language_mix(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
