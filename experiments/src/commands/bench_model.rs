//! `sdrpn bench model`: vision, prefill and decode times of a random LLaVA
//! or Qwen2.5-VL model of a given config (up to a 7B-shaped LLaVA-1.5 on a
//! GPU, `experiments/bench/llava-7b.json`), LLaVA's two-pass SD-RPN answer
//! time relative to the baseline answer, and peak memory.

use super::bench::{median, peak_rss_mib};
use super::bench_two_pass::{time_cases, Case, RandomLlavaArgs};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use clap::Args;
use sdrpn_core::backend::{device_memory, BackendJob, DeviceMemory, DeviceSpec};
use sdrpn_core::cache::KvCache;
use sdrpn_core::roi::RoiMode;
use sdrpn_llava::taps::Taps;
use std::time::Instant;

/// Arguments of `sdrpn bench model`.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// The random model (`--config`: a llava-hf LLaVA config.json such as
    /// experiments/bench/mid150m.json or experiments/bench/llava-7b.json, or
    /// a Qwen2.5-VL one such as experiments/bench/qwen-mid150m.json, by its
    /// model_type); tokenizer, RPN and image: LLaVA's two-pass measurement
    #[command(flatten)]
    model: RandomLlavaArgs,
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
    /// LLaVA only: greedy answer tokens of the two-pass measurement (the
    /// baseline answer next to SD-RPN's, RoI mode bbox, prefix reuse on);
    /// 0 skips it
    #[arg(long, default_value_t = 8)]
    answer_tokens: usize,
    #[command(flatten)]
    device: super::common::DeviceArgs,
}

/// Seconds of (vision + projector, LM prefill, decode) for one run.
struct ModelTimes {
    vision: f64,
    prefill: f64,
    decode: f64,
}

impl ModelTimes {
    /// The phases between the instants a run started, its vision phase
    /// ended, its prefill ended and its decoding ended.
    fn between([t0, t1, t2, t3]: [Instant; 4]) -> Self {
        Self {
            vision: (t1 - t0).as_secs_f64(),
            prefill: (t2 - t1).as_secs_f64(),
            decode: (t3 - t2).as_secs_f64(),
        }
    }
}

/// What `bench model` measured.
pub struct ModelReport {
    /// One entry per timed repetition.
    runs: Vec<ModelTimes>,
    prompt_tokens: usize,
    params: usize,
    /// What the vision phase covers.
    vision_name: &'static str,
    /// Median ms of the baseline answer and of SD-RPN's two-pass answer.
    two_pass: Option<(f64, f64)>,
    /// The GPU pool's largest readings (none on the CPU backends).
    memory: Option<DeviceMemory>,
}

/// The largest memory-pool readings of a device, sampled at phase ends.
struct MemoryPeak<'a> {
    spec: &'a DeviceSpec,
    peak: Option<DeviceMemory>,
}

impl MemoryPeak<'_> {
    fn sample(&mut self) {
        if let Some(now) = device_memory(self.spec) {
            self.peak = Some(self.peak.map_or(now, |p| p.max(now)));
        }
    }
}

impl BackendJob for ModelArgs {
    type Output = anyhow::Result<ModelReport>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let path = &self.model.config;
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let input = |key: &str| json["bench_input"][key].as_u64().map(|v| v as usize);
        let before = self.before.or(input("tokens_before_image")).unwrap_or(35);
        let after = self.after.or(input("tokens_after_image")).unwrap_or(20);
        let mut memory = MemoryPeak {
            spec: &self.device.device,
            peak: None,
        };
        if json["model_type"].as_str() == Some("qwen2_5_vl") {
            let grid = json["bench_input"]["image_grid"][1].as_u64().unwrap_or(48) as usize;
            return bench_qwen::<B>(&text, (before, grid, after), &self, &device, &mut memory);
        }
        bench_llava::<B>((before, after), &self, &device, &mut memory)
    }
}

/// [`ModelArgs`] on a LLaVA config: `before` text tokens (BOS first), the
/// image's tokens, `after` text tokens, greedy decoding from the KV cache;
/// then the two-pass measurement of [`time_cases`] on the same model.
fn bench_llava<B: Backend>(
    (before, after): (usize, usize),
    args: &ModelArgs,
    device: &B::Device,
    memory: &mut MemoryPeak,
) -> anyhow::Result<ModelReport> {
    let (session, rpn, branch, image) = args.model.build::<B>(device)?;
    memory.sample();
    let model = &session.model;
    let config = model.config();
    let s = config.vision.image_size;
    let image_id = config.image_token_index;
    let mut ids: Vec<u32> = vec![1];
    let vocab = config.text.vocab_size;
    ids.extend(text_ids(before.saturating_sub(1), image_id, vocab));
    ids.extend(std::iter::repeat_n(image_id, config.image_tokens()));
    ids.extend(text_ids(after, image_id, vocab));
    let pixels = Tensor::<B, 4>::random([1, 3, s, s], Distribution::Normal(0.0, 1.0), device);
    let mut runs = Vec::new();
    for _ in 0..=args.iters {
        let t0 = Instant::now();
        let features = model.image_features(pixels.clone())?;
        let [_, p, d] = features.projected.dims();
        let projected = features.projected.reshape([p, d]);
        let _ = projected.clone().sum().into_data();
        let t1 = Instant::now();
        memory.sample();
        let embeds = model.embed_prompt(&ids, &[projected])?;
        let mut cache = KvCache::new(config.text.num_layers);
        let out = model.forward(embeds, 0, Some(&mut cache), &Taps::none());
        let [_, t, dm] = out.hidden.dims();
        let last = model
            .language
            .logits(out.hidden.slice([0..1, t - 1..t, 0..dm]));
        let mut token = sdrpn_llava::generate::argmax(&sdrpn_core::readback::floats(last)?) as i64;
        let t2 = Instant::now();
        memory.sample();
        for step in 0..args.new_tokens {
            let id = Tensor::<B, 1, Int>::from_data([token], device).reshape([1, 1]);
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
        memory.sample();
        runs.push(ModelTimes::between([t0, t1, t2, t3]));
    }
    runs.remove(0);
    let two_pass = if args.answer_tokens > 0 {
        let cases = [Case::Baseline, Case::Map(RoiMode::Bbox, true)];
        let rounds = time_cases(
            &session,
            &rpn,
            branch,
            &image,
            &cases,
            args.answer_tokens,
            args.iters,
        )?;
        memory.sample();
        Some((rounds.median_ms(0), rounds.median_ms(1)))
    } else {
        None
    };
    Ok(ModelReport {
        runs,
        prompt_tokens: ids.len(),
        params: model.num_params(),
        vision_name: "vision+projector",
        two_pass,
        memory: memory.peak,
    })
}

/// `n` deterministic text token ids below `min(vocab, 30003)` other than
/// `image` (values do not matter for timing).
fn text_ids(n: usize, image: u32, vocab: usize) -> impl Iterator<Item = u32> {
    let span = (vocab.saturating_sub(4) as u32).clamp(1, 30000);
    (1..=n as u32).map(move |i| match 3 + (i * 7919) % span {
        id if id == image => id + 1,
        id => id,
    })
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
    memory: &mut MemoryPeak,
) -> anyhow::Result<ModelReport> {
    use sdrpn_core::Positions;
    let config = sdrpn_qwen::QwenConfig::from_hf_json(text)?;
    let model = sdrpn_qwen::QwenVl::<B>::random(config.clone(), 0, device)?;
    memory.sample();
    let merged = grid / config.vision.spatial_merge_size;
    let image_id = config.image_token_id;
    let vocab = config.text.vocab_size;
    let mut ids: Vec<u32> = text_ids(before.saturating_sub(1), image_id, vocab).collect();
    ids.push(config.vision_start_token_id);
    ids.extend(std::iter::repeat_n(image_id, merged * merged));
    ids.push(config.vision_end_token_id);
    ids.extend(text_ids(after.saturating_sub(1), image_id, vocab));
    let prompt = sdrpn_qwen::rope_index::rope_index(&ids, image_id, &[(merged, merged)])?;
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
        memory.sample();
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
        memory.sample();
        for _ in 0..args.new_tokens {
            let start = cache.len();
            let positions = Positions::Sequential {
                start: (start as i64 + prompt.delta) as usize,
                len: 1,
            };
            let id = Tensor::<B, 1, Int>::from_data([token], device).reshape([1, 1]);
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
        memory.sample();
        runs.push(ModelTimes::between([t0, t1, t2, t3]));
    }
    runs.remove(0);
    Ok(ModelReport {
        runs,
        prompt_tokens: ids.len(),
        params: model.num_params(),
        vision_name: "vision+merger",
        two_pass: None,
        memory: memory.peak,
    })
}

const MIB: f64 = 1024.0 * 1024.0;

pub fn run(args: ModelArgs) -> anyhow::Result<()> {
    let device = args.device.clone();
    let (iters, new_tokens, answer_tokens, config) = (
        args.iters.max(1),
        args.new_tokens,
        args.answer_tokens,
        args.model.config.clone(),
    );
    let report = device.run(ModelArgs { iters, ..args })?;
    let vision = median(report.runs.iter().map(|r| r.vision).collect());
    let prefill = median(report.runs.iter().map(|r| r.prefill).collect());
    let decode = median(report.runs.iter().map(|r| r.decode).collect());
    println!(
        "model {} ({:.1}M parameters, random weights) on {} ({}), {} threads, median of {iters}",
        config.display(),
        report.params as f64 / 1e6,
        device.device,
        device.dtype,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("{:<17} {:>9.1} ms", report.vision_name, vision * 1e3);
    let prefill_rate = report.prompt_tokens as f64 / prefill;
    println!(
        "prefill           {:>9.1} ms  {prefill_rate:>8.1} tokens/s  ({} prompt tokens)",
        prefill * 1e3,
        report.prompt_tokens
    );
    let decode_rate = new_tokens as f64 / decode;
    println!(
        "decode            {:>9.1} ms  {decode_rate:>8.1} tokens/s  ({new_tokens} tokens, KV cache)",
        decode * 1e3,
    );
    let ratio = report.two_pass.map(|(baseline, sdrpn)| baseline / sdrpn);
    if let (Some((baseline, sdrpn)), Some(ratio)) = (report.two_pass, ratio) {
        println!(
            "two-pass          {sdrpn:>9.1} ms  {ratio:>8.2}x the baseline's throughput  \
             (baseline answer {baseline:.1} ms; SD-RPN mode bbox, prefix reuse on, {answer_tokens} answer tokens)"
        );
    }
    if let Some(m) = report.memory {
        println!(
            "peak device memory {:>8.0} MiB in use, {:.0} MiB reserved by the pool (largest readings at phase ends)",
            m.in_use as f64 / MIB,
            m.reserved as f64 / MIB
        );
    }
    let rss = peak_rss_mib();
    if let Some(mib) = rss {
        println!("peak RSS          {mib:>9.0} MiB");
    }
    // One row of the table `scripts/gpu-checks.sh` prints.
    let peak = report.memory.map(|m| m.reserved as f64 / MIB).or(rss);
    let name = config.file_stem().unwrap_or_default().to_string_lossy();
    println!(
        "table: | {name} | {} | {} | {:.0}M | {:.1} | {prefill_rate:.0} | {decode_rate:.1} | {} | {} |",
        device.device,
        device.dtype,
        report.params as f64 / 1e6,
        vision * 1e3,
        ratio.map_or("-".into(), |r| format!("{r:.2}x")),
        peak.map_or("-".into(), |p| format!("{p:.0}")),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use sdrpn_llava::LlavaConfig;

    /// The 7B benchmark config is LLaVA-1.5-7B's shape.
    #[test]
    fn llava_7b_bench_config_is_llava_1_5_7b() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/llava-7b.json");
        let text = std::fs::read_to_string(path).unwrap();
        let parsed = LlavaConfig::from_hf_json(&text).unwrap();
        assert_eq!(parsed, LlavaConfig::llava_v1_5_7b());
        assert_eq!(parsed.image_tokens(), 576);
    }
}
