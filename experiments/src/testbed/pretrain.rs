//! Pretraining the micro-LLaVA from scratch on the testbed task.
//!
//! Every sample is drawn on the fly from a seed and its index. A sample is
//! shown in one of a few ways (its "kind"): a global view whose codes are
//! large enough to read (binding and reading at the global scale), the
//! global view of small codes followed by a zoom on the target (SD-RPN's
//! second-pass layout: reading from the crop), a zoom alone, or the global
//! view of small codes alone. Loss: next-token cross-entropy on the answer
//! tokens and EOS, plus per-patch auxiliary heads on the vision features
//! (code digits where readable, object colour), which give the vision tower
//! a dense signal to learn glyphs from (TESTBED.md: answer-only training
//! did not leave chance at this budget).

use super::micro::{IMAGE_SIDE, PATCH};
use super::scene::PALETTE;
use super::task::{Family, Sample, TaskConfig};
use super::views::{global_view, zoom_around, zoom_view, View, IGNORE, NO_CODE};
use crate::benchmarks::mirrors::SHORT_ANSWER;
use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use sdrpn_core::rng::SplitMix;
use sdrpn_llava::cache::KvCache;
use sdrpn_llava::model::Llava;
use sdrpn_llava::prompt::Template;
use sdrpn_llava::taps::{Captured, Taps};
use sdrpn_llava::tokenizer::{LlavaTokenizer, Tokenization};
use std::time::Instant;

/// How a sample is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Large codes, global view.
    LargeGlobal,
    /// Small codes: global view, then a zoom on the target.
    SmallTwoView,
    /// Small codes: a zoom on the target alone.
    SmallZoom,
    /// Small codes: global view alone (unreadable).
    SmallGlobal,
}

impl Kind {
    /// All kinds.
    pub const ALL: [Kind; 4] = [
        Kind::LargeGlobal,
        Kind::SmallTwoView,
        Kind::SmallZoom,
        Kind::SmallGlobal,
    ];
    /// Name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Kind::LargeGlobal => "large-global",
            Kind::SmallTwoView => "small-two-view",
            Kind::SmallZoom => "small-zoom",
            Kind::SmallGlobal => "small-global",
        }
    }
    /// Views per sample.
    pub fn views(self) -> usize {
        if self == Kind::SmallTwoView {
            2
        } else {
            1
        }
    }
}

/// Pretraining settings.
#[derive(Clone, Debug)]
pub struct PretrainSettings {
    /// Optimizer steps.
    pub steps: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: usize,
    /// Weight of the per-patch auxiliary loss.
    pub aux_weight: f32,
    /// Share of each kind, in [`Kind::ALL`] order.
    pub mix: [f64; 4],
    /// Seed of the weights and the data.
    pub seed: u64,
}

impl Default for PretrainSettings {
    fn default() -> Self {
        Self {
            steps: 2000,
            batch_size: 16,
            lr: 1e-3,
            warmup: 100,
            aux_weight: 1.0,
            mix: [0.35, 0.35, 0.15, 0.15],
            seed: 1,
        }
    }
}

/// The model with its training-only auxiliary heads.
#[derive(Module, Debug)]
pub struct Student<B: Backend> {
    /// The LLaVA model (what is exported).
    pub llava: Llava<B>,
    /// Per-patch heads on the selected vision features: 11 + 11 + colours + 1.
    aux: Linear<B>,
}

impl<B: Backend> Student<B> {
    /// Wraps `llava` with fresh auxiliary heads.
    pub fn new(llava: Llava<B>, device: &B::Device) -> Self {
        let dv = llava.config().vision.hidden_size;
        let classes = 2 * (NO_CODE as usize + 1) + PALETTE.len() + 1;
        Self {
            aux: LinearConfig::new(dv, classes).init(device),
            llava,
        }
    }
}

/// One sample ready for the model.
pub struct Item {
    /// Its kind.
    pub kind: Kind,
    /// Views in sequence order.
    pub views: Vec<View>,
    /// Token ids (image tokens expanded, answer appended without EOS).
    pub ids: Vec<u32>,
    /// Next-token targets per position ([`IGNORE`] outside the answer).
    pub targets: Vec<i64>,
}

/// Prompt text of a question, as the TextVQA loader builds it.
pub fn prompt_text(question: &str) -> String {
    crate::pytext::capitalize(question) + SHORT_ANSWER
}

/// Draws the kind of sample `index` from the mix.
fn draw_kind(mix: &[f64; 4], rng: &mut SplitMix) -> Kind {
    let total: f64 = mix.iter().sum();
    let mut u = rng.next_f32() as f64 * total;
    for (k, &w) in Kind::ALL.iter().zip(mix) {
        if u < w {
            return *k;
        }
        u -= w;
    }
    Kind::SmallGlobal
}

/// Builds sample `index` of the pretraining stream.
pub fn make_item(
    index: u64,
    settings: &PretrainSettings,
    task: &TaskConfig,
    tokenizer: &LlavaTokenizer,
) -> Item {
    let mut rng = SplitMix::new(settings.seed ^ index.wrapping_mul(0xA24B_AED4_963E_E407));
    let kind = draw_kind(&settings.mix, &mut rng);
    let family = if kind == Kind::LargeGlobal {
        Family::Control
    } else {
        Family::Reading
    };
    let sample = Sample::generate(format!("pretrain-{index}"), family, task, &mut rng);
    let image = sample.image();
    let (side, patch) = (IMAGE_SIDE as u32, PATCH as u32);
    let scale = sample.glyph_scale;
    let global = || global_view(&sample.scene, &image, scale, side, patch);
    let zoom = |rng: &mut SplitMix| {
        let region = zoom_around(sample.target_box(), sample.scene.side, 150, 340, rng);
        zoom_view(&sample.scene, &image, region, scale, side, patch)
    };
    let views = match kind {
        Kind::LargeGlobal | Kind::SmallGlobal => vec![global()],
        Kind::SmallTwoView => vec![global(), zoom(&mut rng)],
        Kind::SmallZoom => vec![zoom(&mut rng)],
    };
    let p = (side / patch).pow(2) as usize;
    let prompt = Template::VicunaV1.render(&prompt_text(&sample.question));
    let mut ids = tokenizer
        .encode_prompt(&prompt, Tokenization::Llava, p)
        .expect("testbed prompts tokenise");
    if views.len() == 2 {
        let at = ids
            .iter()
            .position(|&t| t == tokenizer.image_token())
            .expect("an image block")
            + p;
        ids.splice(at..at, std::iter::repeat_n(tokenizer.image_token(), p));
    }
    let mut answer: Vec<u32> = tokenizer
        .encode(&sample.answer)
        .expect("answers tokenise")
        .into_iter()
        .filter(|&t| Some(t) != tokenizer.bos())
        .collect();
    answer.push(tokenizer.eos());
    let prompt_len = ids.len();
    ids.extend(&answer[..answer.len() - 1]);
    let mut targets = vec![IGNORE; ids.len()];
    for (i, &a) in answer.iter().enumerate() {
        targets[prompt_len - 1 + i] = a as i64;
    }
    Item {
        kind,
        views,
        ids,
        targets,
    }
}

/// Losses and counts of one batch.
pub struct BatchLoss<B: Backend> {
    /// Weighted total, `[1]`.
    pub total: Tensor<B, 1>,
    /// Answer cross-entropy.
    pub answer: f32,
    /// Auxiliary cross-entropy.
    pub aux: f32,
    /// Answer tokens predicted right (teacher forcing) and counted.
    pub correct: (usize, usize),
    /// Whole answers right (every token) and counted.
    pub exact: (usize, usize),
}

/// Mean cross-entropy of `logits` `[M, C]` against `targets` (`IGNORE`
/// skipped), and the argmax predictions.
fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: &[i64]) -> (Tensor<B, 1>, Vec<i64>) {
    let device = logits.device();
    let [m, _] = logits.dims();
    let valid: Vec<f32> = targets.iter().map(|&t| f32::from(t != IGNORE)).collect();
    let count = valid.iter().sum::<f32>().max(1.0);
    let idx: Vec<i64> = targets.iter().map(|&t| t.max(0)).collect();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [m]), &device).reshape([m, 1]);
    let mask = Tensor::<B, 1>::from_data(TensorData::new(valid, [m]), &device);
    let predicted = logits
        .clone()
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("ints");
    let picked = log_softmax(logits, 1).gather(1, idx).reshape([m]);
    ((picked * mask).sum().neg() / count, predicted)
}

/// Forward pass and losses of a batch of one kind.
pub fn batch_loss<B: Backend>(
    student: &Student<B>,
    items: &[Item],
    aux_weight: f32,
) -> BatchLoss<B> {
    let device = student.llava.language.device();
    let (s, n) = (IMAGE_SIDE, items.len());
    let views = items[0].views.len();
    let pixels: Vec<f32> = items
        .iter()
        .flat_map(|it| it.views.iter().flat_map(|v| v.pixels.iter().copied()))
        .collect();
    let pixels = Tensor::<B, 4>::from_data(TensorData::new(pixels, [n * views, 3, s, s]), &device);
    let features = student
        .llava
        .image_features(pixels)
        .expect("pixels have the model's size");
    let [_, p, d] = features.projected.dims();
    let embeds: Vec<Tensor<B, 3>> = items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let images: Vec<Tensor<B, 2>> = (0..views)
                .map(|v| {
                    let j = i * views + v;
                    features
                        .projected
                        .clone()
                        .slice([j..j + 1, 0..p, 0..d])
                        .reshape([p, d])
                })
                .collect();
            student
                .llava
                .embed_prompt(&it.ids, &images)
                .expect("prompts fit their images")
        })
        .collect();
    let embeds = Tensor::cat(embeds, 0);
    let [_, t, _] = embeds.dims();
    let layers = student.llava.language.num_layers();
    let mut captured = Captured::default();
    let h =
        student
            .llava
            .language
            .run_layers(embeds, 0, 0..layers, None, &Taps::none(), &mut captured);
    let logits = student
        .llava
        .language
        .logits(student.llava.language.final_norm(h));
    let v = logits.dims()[2];
    let targets: Vec<i64> = items
        .iter()
        .flat_map(|it| it.targets.iter().copied())
        .collect();
    let (answer_loss, predicted) = cross_entropy(logits.reshape([n * t, v]), &targets);

    // Per-patch auxiliary heads.
    let dv = features.selected.dims()[2];
    let aux = student
        .aux
        .forward(features.selected.reshape([n * views * p, dv]));
    let digit = NO_CODE as usize + 1;
    let colours = PALETTE.len() + 1;
    let mut aux_loss = Tensor::<B, 1>::zeros([1], &device);
    for (k, (from, width)) in [(0, digit), (digit, digit), (2 * digit, colours)]
        .into_iter()
        .enumerate()
    {
        let target: Vec<i64> = items
            .iter()
            .flat_map(|it| it.views.iter().flat_map(|v| v.targets[k].iter().copied()))
            .collect();
        let head = aux.clone().slice([0..n * views * p, from..from + width]);
        aux_loss = aux_loss + cross_entropy(head, &target).0;
    }

    let mut correct = (0, 0);
    let mut exact = (0, 0);
    for (i, it) in items.iter().enumerate() {
        let mut all = true;
        for (j, &target) in it.targets.iter().enumerate() {
            if target != IGNORE {
                let ok = predicted[i * t + j] == target;
                correct.0 += usize::from(ok);
                correct.1 += 1;
                all &= ok;
            }
        }
        exact.0 += usize::from(all);
        exact.1 += 1;
    }
    let answer = answer_loss.clone().into_scalar().elem::<f32>();
    let aux_value = aux_loss.clone().into_scalar().elem::<f32>();
    BatchLoss {
        total: answer_loss + aux_loss * aux_weight,
        answer,
        aux: aux_value,
        correct,
        exact,
    }
}

use burn::tensor::ElementConversion;

/// Warm-up then cosine decay to a tenth of the peak.
pub fn learning_rate(settings: &PretrainSettings, step: usize) -> f64 {
    if step < settings.warmup {
        return settings.lr * (step + 1) as f64 / settings.warmup as f64;
    }
    let progress =
        (step - settings.warmup) as f64 / (settings.steps - settings.warmup).max(1) as f64;
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos());
    settings.lr * (0.1 + 0.9 * cosine)
}

/// Trains `student` for `settings.steps` steps; `log` gets a line every
/// `log_every` steps with running losses and accuracies per kind.
pub fn pretrain<B: AutodiffBackend>(
    mut student: Student<B>,
    settings: &PretrainSettings,
    task: &TaskConfig,
    tokenizer: &LlavaTokenizer,
    log_every: usize,
    log: &mut dyn FnMut(&str),
) -> Student<B> {
    let mut optim = AdamWConfig::new()
        .with_beta_2(0.98)
        .with_weight_decay(0.0)
        .with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(1.0)))
        .init::<B, Student<B>>();
    let mut next = 0u64;
    let mut pending: std::collections::BTreeMap<Kind, Vec<Item>> = Default::default();
    let mut stats: std::collections::BTreeMap<Kind, [f64; 6]> = Default::default();
    let start = Instant::now();
    let mut data_seconds = 0.0;
    for step in 0..settings.steps {
        let data_start = Instant::now();
        // Fill batches of one kind (they share a sequence length).
        let batch = loop {
            let item = make_item(next, settings, task, tokenizer);
            next += 1;
            let queue = pending.entry(item.kind).or_default();
            queue.push(item);
            if queue.len() == settings.batch_size {
                break std::mem::take(queue);
            }
        };
        data_seconds += data_start.elapsed().as_secs_f64();
        let kind = batch[0].kind;
        let loss = batch_loss(&student, &batch, settings.aux_weight);
        let grads = GradientsParams::from_grads(loss.total.backward(), &student);
        student = optim.step(learning_rate(settings, step), student, grads);
        let s = stats.entry(kind).or_default();
        for (slot, value) in s.iter_mut().zip([
            loss.answer as f64,
            loss.aux as f64,
            loss.correct.0 as f64,
            loss.correct.1 as f64,
            loss.exact.0 as f64,
            loss.exact.1 as f64,
        ]) {
            *slot += value;
        }
        if (step + 1) % log_every == 0 || step + 1 == settings.steps {
            let mut line = format!(
                "step {:>5} ({:.0} s, data {:.0} s, {:.2} s/step, lr {:.2e}, {} samples):",
                step + 1,
                start.elapsed().as_secs_f64(),
                data_seconds,
                start.elapsed().as_secs_f64() / (step + 1) as f64,
                learning_rate(settings, step),
                next
            );
            for (kind, s) in &stats {
                let batches = (s[5] / settings.batch_size as f64).max(1.0);
                line.push_str(&format!(
                    " | {} ce {:.3} aux {:.3} tok {:.0}% exact {:.0}%",
                    kind.name(),
                    s[0] / batches,
                    s[1] / batches,
                    100.0 * s[2] / s[3].max(1.0),
                    100.0 * s[4] / s[5].max(1.0)
                ));
            }
            log(&line);
            stats.clear();
        }
    }
    student
}

/// The trained model without its autodiff wrapper.
pub fn into_inference<B: AutodiffBackend>(student: Student<B>) -> Llava<B::InnerBackend> {
    student.valid().llava
}

/// Greedy answer of `llava` to an item's prompt (answer tokens removed),
/// for quick checks.
pub fn greedy_answer<B: Backend>(llava: &Llava<B>, item: &Item, max_new: usize) -> Vec<u32> {
    let device = llava.language.device();
    let s = IMAGE_SIDE;
    let views = item.views.len();
    let pixels: Vec<f32> = item
        .views
        .iter()
        .flat_map(|v| v.pixels.iter().copied())
        .collect();
    let pixels = Tensor::<B, 4>::from_data(TensorData::new(pixels, [views, 3, s, s]), &device);
    let f = llava.image_features(pixels).expect("pixels fit").projected;
    let [_, p, d] = f.dims();
    let images: Vec<Tensor<B, 2>> = (0..views)
        .map(|v| f.clone().slice([v..v + 1, 0..p, 0..d]).reshape([p, d]))
        .collect();
    let prompt_len = item
        .targets
        .iter()
        .position(|&t| t != IGNORE)
        .expect("an answer")
        + 1;
    let embeds = llava
        .embed_prompt(&item.ids[..prompt_len], &images)
        .expect("prompt fits");
    let mut cache = KvCache::new(llava.language.num_layers());
    let rule = sdrpn_llava::generate::StopRule {
        max_new_tokens: max_new,
        eos: vec![2],
        stop: None,
    };
    llava
        .generate(
            embeds,
            &mut cache,
            &rule,
            &Taps::none(),
            &Taps::none(),
            |_, _| Ok(()),
        )
        .map(|g| g.tokens)
        .unwrap_or_default()
}
