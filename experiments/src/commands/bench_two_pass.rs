//! `sdrpn bench two-pass`: what SD-RPN's two passes cost next to the plain
//! baseline answer, on a random LLaVA model of a given config, for each RoI
//! mode and with pass 2's prefix-cache reuse on and off.
//!
//! A random RPN's map is near 0.5 everywhere (one component over the whole
//! grid, dropped by the size rules: mode none), so each mode is driven by a
//! fixed RoI map through [`TwoPass::answer_with_map`], and the RPN's own cost
//! (its twig layers and head over the prompt, [`TwoPass::rpn_map`], timed
//! in the same round) is added: that is everything `answer_with_roi` runs
//! besides the map it reads. The random RPN end to end is timed too, as a
//! check of that sum.

use super::bench::median;
use anyhow::Context;
use burn::tensor::backend::Backend;
use clap::Args;
use image::{Rgb, RgbImage};
use sdrpn_core::backend::BackendJob;
use sdrpn_core::cache::KvCache;
use sdrpn_core::host::{AnswerOptions, HostPrompt, ModelFingerprint, RpnHost};
use sdrpn_core::roi::{RoiConfig, RoiMode};
use sdrpn_llava::host::LlavaRpn;
use sdrpn_llava::session::LlavaSession;
use sdrpn_llava::LlavaConfig;
use sdrpn_train::two_pass::{TwoPass, TwoPassOptions};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `sdrpn bench two-pass`.
#[derive(Debug, Clone, Args)]
pub struct TwoPassArgs {
    #[command(flatten)]
    model: RandomLlavaArgs,
    /// Greedy answer tokens (at most; a random model rarely stops early)
    #[arg(long, default_value_t = 8)]
    new_tokens: usize,
    /// Timed rounds after one warm-up round (medians are reported); each
    /// round runs every case once, in turn
    #[arg(long, default_value_t = 3)]
    iters: usize,
    #[command(flatten)]
    device: super::common::DeviceArgs,
}

/// The random LLaVA model, the RPN's shape and the image a cost benchmark
/// (`bench two-pass`, `bench batch`, `bench model`) runs on.
#[derive(Debug, Clone, Args)]
pub struct RandomLlavaArgs {
    /// config.json of the llava-hf LLaVA model to build with random weights
    /// (`bench model` takes a Qwen2.5-VL one too)
    #[arg(long, default_value = "experiments/bench/mid150m.json")]
    pub config: PathBuf,
    /// A llava-hf folder whose tokenizer (and image token id) to use; the
    /// random model's vocabulary must cover its ids
    #[arg(long, default_value = "sdrpn-llava/tests/fixtures/tiny-llava-336")]
    pub tokenizer: PathBuf,
    /// Branch layer K of the RPN (default: the LLaVA-1.5-7B preset's 15 of
    /// 32 layers, scaled to the model's depth)
    #[arg(long)]
    pub branch: Option<usize>,
    /// Twig layers of the RPN (the presets' 3)
    #[arg(long, default_value_t = 3)]
    pub twig: usize,
    /// Source image size, WIDTHxHEIGHT
    #[arg(long, default_value = "1024x768", value_parser = parse_size)]
    pub image: (u32, u32),
}

impl RandomLlavaArgs {
    /// The random session, its RPN (twig layers copied from the model), the
    /// RPN's branch layer and the synthetic image.
    pub fn build<B: Backend>(
        &self,
        device: &B::Device,
    ) -> anyhow::Result<(LlavaSession<B>, LlavaRpn<B>, usize, RgbImage)> {
        let (session, branch) =
            random_session::<B>(&self.config, &self.tokenizer, self.branch, device)?;
        let rpn = session.init_rpn(branch, self.twig)?;
        Ok((session, rpn, branch, bench_image(self.image)))
    }
}

/// A LLaVA model of the llava-hf `config` with random weights (seed 0) and
/// the tokenizer of the llava-hf folder `tokenizer` (its image token id
/// replaces the config's), and the RPN branch layer: `branch`, or the
/// LLaVA-1.5-7B preset's 15 of 32 layers scaled to the model's depth. The
/// weights are drawn on the device ([`sdrpn_llava::Llava::random_on_device`]):
/// a 7B-shaped model is made in seconds on a GPU.
pub(super) fn random_session<B: Backend>(
    config: &std::path::Path,
    tokenizer: &std::path::Path,
    branch: Option<usize>,
    device: &B::Device,
) -> anyhow::Result<(LlavaSession<B>, usize)> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let mut model_config = LlavaConfig::from_hf_json(&text)
        .with_context(|| format!("{} is not a llava-hf LLaVA config", config.display()))?;
    // The prompt's image tokens come from the tokenizer's folder.
    let tokenizer_config = LlavaConfig::from_dir(tokenizer)
        .with_context(|| format!("the tokenizer folder {}", tokenizer.display()))?;
    model_config.image_token_index = tokenizer_config.image_token_index;
    if model_config.image_token_index as usize >= model_config.text.vocab_size {
        anyhow::bail!(
            "the tokenizer's image token {} is outside the model's vocabulary of {}",
            model_config.image_token_index,
            model_config.text.vocab_size
        );
    }
    let layers = model_config.text.num_layers;
    let branch = branch.unwrap_or(((15 * layers) as f64 / 32.0).round() as usize);
    let side = model_config.vision.grid_side();
    let tokenizer = sdrpn_llava::tokenizer::LlavaTokenizer::from_dir(
        tokenizer,
        model_config.image_token_index,
    )?;
    let session = LlavaSession {
        model: sdrpn_llava::Llava::<B>::random_on_device(model_config, 0, device)?,
        tokenizer,
        options: Default::default(),
        fingerprint: ModelFingerprint {
            config: "random".into(),
            weights: "random, seed 0".into(),
            grid: format!("{side}x{side}"),
        },
    };
    Ok((session, branch))
}

/// A synthetic `width x height` test image (gradients, no flat regions).
pub(super) fn bench_image((w, h): (u32, u32)) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x % 256) as u8,
            (y % 256) as u8,
            ((x / 7 + y / 5) % 256) as u8,
        ])
    })
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| format!("{s:?}: expected WIDTHxHEIGHT, e.g. 1024x768"))?;
    let side = |v: &str| match v.parse::<u32>() {
        Ok(n) if n >= 2 => Ok(n),
        _ => Err(format!("{s:?}: {v:?} is not a size of at least 2 pixels")),
    };
    Ok((side(w)?, side(h)?))
}

/// One timed case: how the answer is made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Case {
    Baseline,
    /// A fixed map giving this mode, plus the RPN's measured cost.
    Map(RoiMode, bool),
    /// The random RPN end to end (prefix reuse on).
    Rpn,
}

impl Case {
    fn name(self) -> String {
        match self {
            Case::Baseline => "baseline (one pass)".into(),
            Case::Map(mode, reuse) => format!(
                "sdrpn, mode {}, prefix reuse {}",
                mode_name(mode),
                if reuse { "on" } else { "off" }
            ),
            Case::Rpn => "sdrpn, random RPN end to end".into(),
        }
    }
}

fn mode_name(mode: RoiMode) -> &'static str {
    match mode {
        RoiMode::None => "none",
        RoiMode::Bbox => "bbox",
        RoiMode::Mask => "mask",
    }
}

const CASES: [Case; 7] = [
    Case::Baseline,
    Case::Map(RoiMode::None, true),
    Case::Map(RoiMode::Bbox, true),
    Case::Map(RoiMode::Bbox, false),
    Case::Map(RoiMode::Mask, true),
    Case::Map(RoiMode::Mask, false),
    Case::Rpn,
];

/// A map over a `side x side` grid that gives `mode`: nothing above the
/// threshold, one 6x6 blob, or two blobs far apart (their union box, masked).
fn map_for(mode: RoiMode, side: usize) -> Vec<f32> {
    let blob = |r0: usize, c0: usize, map: &mut Vec<f32>| {
        for r in r0..(r0 + 6).min(side) {
            for c in c0..(c0 + 6).min(side) {
                map[r * side + c] = 0.9;
            }
        }
    };
    let mut map = vec![0.0; side * side];
    match mode {
        RoiMode::None => {}
        RoiMode::Bbox => blob(side / 6, side / 2, &mut map),
        RoiMode::Mask => {
            blob(side / 12, side / 12, &mut map);
            blob(side * 2 / 3, side * 2 / 3, &mut map);
        }
    }
    map
}

/// What one case gave in one round.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The whole answer, in ms (with the RPN's cost for fixed maps).
    pub(super) ms: f64,
    /// prepare, pass 1 (with the RPN's cost for fixed maps), crop, pass 2.
    stages: [f64; 4],
    mode: RoiMode,
    roi_tokens: usize,
    new_tokens: usize,
}

/// The timed rounds of every case, and the RPN's own cost per round.
pub struct Rounds {
    /// Per case (in the order asked), one sample per timed round.
    pub(super) samples: Vec<Vec<Sample>>,
    rpn_ms: Vec<f64>,
    /// Tokens of the baseline prompt.
    prompt_tokens: usize,
    layers: usize,
    branch: usize,
}

impl Rounds {
    /// The median time of case `i`, in ms.
    pub(super) fn median_ms(&self, i: usize) -> f64 {
        median(self.samples[i].iter().map(|s| s.ms).collect())
    }
}

impl BackendJob for TwoPassArgs {
    type Output = anyhow::Result<Rounds>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let (session, rpn, branch, image) = self.model.build::<B>(&device)?;
        time_cases(
            &session,
            &rpn,
            branch,
            &image,
            &CASES,
            self.new_tokens,
            self.iters,
        )
    }
}

/// Times `cases` on one question about `image`: a warm-up round, then
/// `iters` timed rounds, each running every case once in turn, after the
/// RPN alone (twig layers + head) on the prompt's layer-`branch` input.
/// Answers are greedy, `new_tokens` at most.
pub(super) fn time_cases<B: Backend>(
    session: &LlavaSession<B>,
    rpn: &LlavaRpn<B>,
    branch: usize,
    image: &RgbImage,
    cases: &[Case],
    new_tokens: usize,
    iters: usize,
) -> anyhow::Result<Rounds> {
    let (layers, side) = (session.num_layers(), session.grid().rows);
    let question = "What is written on the small sign next to the door?";
    let answer = AnswerOptions {
        max_new_tokens: new_tokens,
        stop_strings: Vec::new(),
    };
    let options = |reuse_prefix_cache| TwoPassOptions {
        branch,
        roi: RoiConfig::default(),
        answer: answer.clone(),
        reuse_prefix_cache,
    };
    let mut samples = vec![Vec::new(); cases.len()];
    let mut rpn_ms = Vec::new();
    let mut prompt_tokens = 0;
    for round in 0..=iters {
        // The RPN alone on the prompt's layer-K input.
        let prompt = session.prepare(image, question)?;
        prompt_tokens = prompt.len();
        let mut cache = KvCache::new(layers);
        let states = session.run_layers(
            prompt.embeds(),
            0,
            &prompt.positions(),
            0..branch,
            Some(&mut cache),
        );
        let t = Instant::now();
        session.rpn_map(rpn, &prompt, states)?;
        let rpn_round = t.elapsed().as_secs_f64() * 1e3;
        for (i, case) in cases.iter().enumerate() {
            let out = match *case {
                Case::Baseline => session.answer_baseline(image, question, &answer)?,
                Case::Map(mode, reuse) => session.answer_with_map(
                    image,
                    question,
                    &map_for(mode, side),
                    &options(reuse),
                )?,
                Case::Rpn => session.answer_with_roi(rpn, image, question, &options(true))?,
            };
            if let Case::Map(mode, _) = case {
                anyhow::ensure!(
                    out.mode == *mode,
                    "the map meant for mode {} gave mode {}",
                    mode_name(*mode),
                    mode_name(out.mode)
                );
            }
            let extra = if matches!(case, Case::Map(..)) {
                rpn_round
            } else {
                0.0
            };
            if round > 0 {
                samples[i].push(Sample {
                    ms: out.timings.total_ms + extra,
                    stages: [
                        out.timings.prepare_ms,
                        out.timings.pass1_ms + extra,
                        out.timings.crop_ms,
                        out.timings.pass2_ms,
                    ],
                    mode: out.mode,
                    roi_tokens: out.roi_tokens,
                    new_tokens: out.tokens.len(),
                });
            }
        }
        if round > 0 {
            rpn_ms.push(rpn_round);
        }
    }
    Ok(Rounds {
        samples,
        rpn_ms,
        prompt_tokens,
        layers,
        branch,
    })
}

pub fn run(args: TwoPassArgs) -> anyhow::Result<()> {
    let args = TwoPassArgs {
        iters: args.iters.max(1),
        ..args
    };
    let (device, iters, twig) = (args.device.clone(), args.iters, args.model.twig);
    let config = args.model.config.clone();
    let rounds = device.run(args)?;
    println!(
        "two-pass cost: {} (random weights, {} layers, RPN K = {}, T = {twig}) on {} ({}), {} threads, median of {iters} rounds",
        config.display(),
        rounds.layers,
        rounds.branch,
        device.device,
        device.dtype,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!(
        "RPN alone (twig layers + head): {:.1} ms, added to each fixed-map case",
        median(rounds.rpn_ms.clone())
    );
    println!(
        "{:<38} {:>9} {:>9} {:>5} {:>6} {:>9} {:>8} {:>7} {:>7} {:>7} {:>7}",
        "case",
        "ms/sample",
        "samples/s",
        "ratio",
        "mode",
        "RoI toks",
        "answer",
        "prepare",
        "pass 1",
        "crop",
        "pass 2"
    );
    let baseline = rounds.median_ms(0);
    for (i, (case, samples)) in CASES.iter().zip(&rounds.samples).enumerate() {
        let ms = rounds.median_ms(i);
        let stage = |i: usize| median(samples.iter().map(|s| s.stages[i]).collect());
        let last = samples.last().expect("at least one round");
        println!(
            "{:<38} {:>9.1} {:>9.3} {:>4.2}x {:>6} {:>9} {:>8} {:>7.1} {:>7.1} {:>7.1} {:>7.1}",
            case.name(),
            ms,
            1e3 / ms,
            baseline / ms,
            mode_name(last.mode),
            last.roi_tokens,
            last.new_tokens,
            stage(0),
            stage(1),
            stage(2),
            stage(3)
        );
    }
    let prompt = rounds.prompt_tokens;
    println!(
        "(ratio: the baseline's time over the case's, i.e. throughput relative to the baseline; \
         prompt {prompt} tokens, pass 2 adds the RoI tokens; stage medians in ms, pass 1 of the \
         fixed-map cases includes the RPN's)"
    );
    Ok(())
}
