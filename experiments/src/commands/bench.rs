//! `sdrpn bench ...`: benchmarks that print numbers.

use burn::nn::transformer::{TransformerEncoderConfig, TransformerEncoderInput};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use clap::{Args, Subcommand};
use sdrpn_core::backend::{run_on, BackendJob, CpuKind, DeviceSpec};
use std::time::Instant;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Forward pass of a small transformer on each CPU backend (ndarray vs flex).
    Backends(BackendsArgs),
    /// Vision, prefill and decode times of a random LLaVA or Qwen2.5-VL model of a given config.
    Model(ModelArgs),
    /// GFLOP/s of the models' matrix products next to this host's measured GEMM peak.
    Gemm(super::bench_gemm::GemmArgs),
    /// SD-RPN's two-pass answer next to the baseline answer, per RoI mode, prefix reuse on and off.
    TwoPass(super::bench_two_pass::TwoPassArgs),
    /// Samples per second of padded batches (B = 1, 4, 8) for the baseline, SD-RPN and labelling.
    Batch(super::bench_batch::BatchArgs),
}

/// Arguments of `sdrpn bench model`.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// config.json of the model to build with random weights: llava-hf
    /// LLaVA (experiments/bench/mid150m.json) or Qwen2.5-VL
    /// (experiments/bench/qwen-mid150m.json), by its model_type
    #[arg(long, default_value = "experiments/bench/mid150m.json")]
    config: std::path::PathBuf,
    /// Text tokens before the image (default: the config's `bench_input`,
    /// else 35 = LLaVA's system prompt)
    #[arg(long)]
    before: Option<usize>,
    /// Text tokens after the image (default: the config's `bench_input`, else 20)
    #[arg(long)]
    after: Option<usize>,
    /// Greedy tokens to decode (EOS ignored)
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Timed repetitions after one warm-up (the median is reported)
    #[arg(long, default_value_t = 3)]
    iters: usize,
    #[command(flatten)]
    device: super::common::DeviceArgs,
}

/// Seconds of (vision + projector, LM prefill, decode) for one run.
pub struct ModelTimes {
    vision: f64,
    prefill: f64,
    decode: f64,
    prompt_tokens: usize,
    params: usize,
    /// What the vision phase covers.
    vision_name: &'static str,
}

impl BackendJob for ModelArgs {
    type Output = anyhow::Result<Vec<ModelTimes>>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        use burn::module::Module;
        use sdrpn_llava::cache::KvCache;
        use sdrpn_llava::taps::Taps;
        let text = std::fs::read_to_string(&self.config)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.config.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.config.display()))?;
        let input = |key: &str| json["bench_input"][key].as_u64().map(|v| v as usize);
        let before = self.before.or(input("tokens_before_image")).unwrap_or(35);
        let after = self.after.or(input("tokens_after_image")).unwrap_or(20);
        if json["model_type"].as_str() == Some("qwen2_5_vl") {
            let grid = json["bench_input"]["image_grid"][1].as_u64().unwrap_or(48) as usize;
            return bench_qwen::<B>(&text, (before, grid, after), &self, &device);
        }
        let config = sdrpn_llava::LlavaConfig::from_hf_json(&text)?;
        let model = sdrpn_llava::Llava::<B>::random(config.clone(), 0, &device)?;
        let s = config.vision.image_size;
        let image_id = config.image_token_index;
        let mut ids: Vec<u32> = vec![1];
        ids.extend(text_ids(before - 1));
        ids.extend(std::iter::repeat_n(image_id, config.image_tokens()));
        ids.extend(text_ids(after));
        let pixels = Tensor::<B, 4>::random([1, 3, s, s], Distribution::Normal(0.0, 1.0), &device);
        let sync = |t: Tensor<B, 3>| {
            let _ = t.sum().into_data();
        };
        let mut runs = Vec::new();
        for _ in 0..=self.iters {
            let t0 = Instant::now();
            let features = model.image_features(pixels.clone())?;
            let [_, p, d] = features.projected.dims();
            let projected = features.projected.reshape([p, d]);
            sync(projected.clone().unsqueeze());
            let t1 = Instant::now();
            let embeds = model.embed_prompt(&ids, &[projected])?;
            let mut cache = KvCache::new(config.text.num_layers);
            let out = model.forward(embeds, 0, Some(&mut cache), &Taps::none());
            let [_, t, dm] = out.hidden.dims();
            let last = model
                .language
                .logits(out.hidden.slice([0..1, t - 1..t, 0..dm]));
            let mut token =
                sdrpn_llava::generate::argmax(&sdrpn_core::readback::floats(last)?) as i64;
            let t2 = Instant::now();
            for step in 0..self.new_tokens {
                let id =
                    Tensor::<B, 1, burn::tensor::Int>::from_data([token], &device).reshape([1, 1]);
                let h = model.forward(
                    model.language.embed(id),
                    ids.len() + step,
                    Some(&mut cache),
                    &Taps::none(),
                );
                let logits = sdrpn_core::readback::floats(model.language.logits(h.hidden))?;
                token = sdrpn_llava::generate::argmax(&logits) as i64;
            }
            let t3 = Instant::now();
            runs.push(ModelTimes {
                vision: (t1 - t0).as_secs_f64(),
                prefill: (t2 - t1).as_secs_f64(),
                decode: (t3 - t2).as_secs_f64(),
                prompt_tokens: ids.len(),
                params: model.num_params(),
                vision_name: "vision+projector",
            });
        }
        runs.remove(0);
        Ok(runs)
    }
}

/// `n` deterministic text token ids (values do not matter for timing).
fn text_ids(n: usize) -> impl Iterator<Item = u32> {
    (1..=n as u32).map(|i| 3 + (i * 7919) % 30000)
}

/// [`ModelArgs`] on a Qwen2.5-VL config: a `grid x grid` patch image
/// (`grid / 2` squared merged tokens) between `<|vision_start|>` and
/// `<|vision_end|>`, `before` and `after` text tokens counting those two,
/// M-RoPE positions, then greedy decoding from the KV cache.
fn bench_qwen<B: Backend>(
    text: &str,
    (before, grid, after): (usize, usize, usize),
    args: &ModelArgs,
    device: &B::Device,
) -> anyhow::Result<Vec<ModelTimes>> {
    use burn::module::Module;
    use sdrpn_core::cache::KvCache;
    use sdrpn_core::Positions;
    use sdrpn_llava::taps::Taps;
    let config = sdrpn_qwen::QwenConfig::from_hf_json(text)?;
    let model = sdrpn_qwen::QwenVl::<B>::random(config.clone(), 0, device)?;
    let merged = grid / config.vision.spatial_merge_size;
    let mut ids: Vec<u32> = text_ids(before.saturating_sub(1)).collect();
    ids.push(config.vision_start_token_id);
    ids.extend(std::iter::repeat_n(config.image_token_id, merged * merged));
    ids.push(config.vision_end_token_id);
    ids.extend(text_ids(after.saturating_sub(1)));
    let prompt =
        sdrpn_qwen::rope_index::rope_index(&ids, config.image_token_id, &[(merged, merged)])?;
    let patches = Tensor::<B, 2>::random(
        [grid * grid, config.vision.patch_values()],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let mut runs = Vec::new();
    for _ in 0..=args.iters {
        let t0 = Instant::now();
        let features = model.image_features(patches.clone(), grid, grid)?;
        let _ = features.clone().sum().into_data();
        let t1 = Instant::now();
        let embeds = model.embed_prompt(&ids, features)?;
        let mut cache = KvCache::new(config.text.num_layers);
        let out = model.forward(
            embeds,
            0,
            &prompt.positions,
            Some(&mut cache),
            &Taps::none(),
        );
        let mut token = sdrpn_llava::generate::argmax(&model.last_logits(out.hidden)?) as i64;
        let t2 = Instant::now();
        for _ in 0..args.new_tokens {
            let start = cache.len();
            let positions = Positions::Sequential {
                start: (start as i64 + prompt.delta) as usize,
                len: 1,
            };
            let id = Tensor::<B, 1, burn::tensor::Int>::from_data([token], device).reshape([1, 1]);
            let h = model.forward(
                model.language.embed(id),
                start,
                &positions,
                Some(&mut cache),
                &Taps::none(),
            );
            token = sdrpn_llava::generate::argmax(&model.last_logits(h.hidden)?) as i64;
        }
        let t3 = Instant::now();
        runs.push(ModelTimes {
            vision: (t1 - t0).as_secs_f64(),
            prefill: (t2 - t1).as_secs_f64(),
            decode: (t3 - t2).as_secs_f64(),
            prompt_tokens: ids.len(),
            params: model.num_params(),
            vision_name: "vision+merger",
        });
    }
    runs.remove(0);
    Ok(runs)
}

/// The median of `v` (the upper one of an even count).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Peak resident memory of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Arguments of `sdrpn bench backends`.
#[derive(Debug, Args)]
pub struct BackendsArgs {
    /// Model width.
    #[arg(long, default_value_t = 512)]
    d_model: usize,
    /// Number of encoder layers.
    #[arg(long, default_value_t = 6)]
    layers: usize,
    /// Number of heads.
    #[arg(long, default_value_t = 8)]
    heads: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Devices to compare (default: every CPU backend compiled in).
    #[arg(long = "device", value_parser = super::parse_device)]
    devices: Vec<DeviceSpec>,
}

/// Median forward time of the transformer, in seconds.
struct TransformerForward<'a>(&'a BackendsArgs);

impl BackendJob for TransformerForward<'_> {
    type Output = f64;
    fn run<B: Backend>(self, device: B::Device) -> f64 {
        let a = self.0;
        B::seed(&device, 0);
        let model = TransformerEncoderConfig::new(a.d_model, 4 * a.d_model, a.heads, a.layers)
            .with_dropout(0.0)
            .with_norm_first(true)
            .init::<B>(&device);
        let x = Tensor::<B, 3>::random(
            [1, a.seq, a.d_model],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let mut times = Vec::with_capacity(a.iters);
        for i in 0..=a.iters {
            let start = Instant::now();
            let y = model.forward(TransformerEncoderInput::new(x.clone()));
            // Read back to force lazy backends to finish.
            let _ = y.sum().into_data();
            if i > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    }
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Gemm(args) => super::bench_gemm::run(args),
        BenchCommand::TwoPass(args) => super::bench_two_pass::run(args),
        BenchCommand::Batch(args) => super::bench_batch::run(args),
        BenchCommand::Model(args) => {
            let device = args.device.clone();
            let (iters, new_tokens, config) =
                (args.iters.max(1), args.new_tokens, args.config.clone());
            let args = ModelArgs { iters, ..args };
            let runs = device.run(args)?;
            let first = &runs[0];
            let vision = median(runs.iter().map(|r| r.vision).collect());
            let prefill = median(runs.iter().map(|r| r.prefill).collect());
            let decode = median(runs.iter().map(|r| r.decode).collect());
            println!(
                "model {} ({:.1}M parameters, random weights) on {} ({}), {} threads, median of {iters}",
                config.display(),
                first.params as f64 / 1e6,
                device.device,
                device.dtype,
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
            );
            println!("{:<17} {:>9.1} ms", first.vision_name, vision * 1e3);
            println!(
                "prefill           {:>9.1} ms  {:>8.1} tokens/s  ({} prompt tokens)",
                prefill * 1e3,
                first.prompt_tokens as f64 / prefill,
                first.prompt_tokens
            );
            println!(
                "decode            {:>9.1} ms  {:>8.1} tokens/s  ({new_tokens} tokens, KV cache)",
                decode * 1e3,
                new_tokens as f64 / decode
            );
            if let Some(mib) = peak_rss_mib() {
                println!("peak RSS          {mib:>9.0} MiB");
            }
            Ok(())
        }
        BenchCommand::Backends(args) => {
            let devices = if args.devices.is_empty() {
                let mut v = Vec::new();
                if cfg!(feature = "ndarray") {
                    v.push(DeviceSpec::Cpu(Some(CpuKind::NdArray)));
                }
                if cfg!(feature = "flex") {
                    v.push(DeviceSpec::Cpu(Some(CpuKind::Flex)));
                }
                v
            } else {
                args.devices.clone()
            };
            let flops = 2.0
                * args.layers as f64
                * args.seq as f64
                * (12.0 * (args.d_model * args.d_model) as f64
                    + 2.0 * (args.seq * args.d_model) as f64);
            println!(
                "transformer forward: {} layers, d_model {}, {} heads, seq {}, median of {} ({} threads available)",
                args.layers,
                args.d_model,
                args.heads,
                args.seq,
                args.iters,
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
            );
            for spec in devices {
                let secs = run_on(&spec, TransformerForward(&args))?;
                println!(
                    "{spec:<12} {:>9.2} ms  {:>7.1} GFLOP/s  {:>8.0} tokens/s",
                    secs * 1e3,
                    flops / secs / 1e9,
                    args.seq as f64 / secs
                );
            }
            Ok(())
        }
    }
}
