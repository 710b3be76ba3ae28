//! Pretraining the micro-LLaVA from scratch on the testbed task, in two
//! stages, as LLaVA's parts were trained (a separately pretrained CLIP,
//! then the projector and language model on top):
//!
//! 1. vision: the ViT alone, with per-patch heads on its selected features
//!    (code digits where a view makes codes readable; colour, shape and
//!    whether it carries a code of the object under each patch, at every
//!    scale; scenes with codes on a random subset of objects). TESTBED.md:
//!    a ViT from scratch did not learn glyphs from the answer loss alone at
//!    this budget; the dense signal teaches them.
//! 2. language: the ViT frozen; projector and LLaMA trained with next-token
//!    cross-entropy on the answer tokens and EOS. A question head on the
//!    last prompt position (after the first [`QUESTION_LAYER`] layers)
//!    predicts the colour the question names: it only reads the text, so it
//!    says nothing about where to look, and it speeds up moving the question
//!    to the answer position. Scenes start with one or two objects and grow
//!    to the task's count; only the target carries a code (the task's
//!    default: [`TaskConfig::distractor_codes`]).
//!
//! Every sample is drawn on the fly from the seed and its index, shown in
//! one of a few ways (its [`Kind`]).

use super::micro::{IMAGE_SIDE, PATCH};
use super::scene::PALETTE;
use super::task::{Family, Sample, TaskConfig};
use super::views::{global_view, zoom_around, zoom_view, Target, View, IGNORE, NO_CODE};
use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use sdrpn_core::rng::SplitMix;
use sdrpn_eval::benchmarks::mirrors::SHORT_ANSWER;
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
    /// Small codes, global view, and the question asks the shape of the
    /// object of a colour ("What shape is the red object?"): finding an
    /// object by its colour with an answer the global view shows.
    ShapeGlobal,
    /// Vision stage only: a glyph sheet (many small coded objects) shown
    /// whole at a zoom's scale, for reading practice; no question.
    Sheet,
}

impl Kind {
    /// All kinds.
    pub const ALL: [Kind; 6] = [
        Kind::LargeGlobal,
        Kind::SmallTwoView,
        Kind::SmallZoom,
        Kind::SmallGlobal,
        Kind::ShapeGlobal,
        Kind::Sheet,
    ];
    /// Name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Kind::LargeGlobal => "large-global",
            Kind::SmallTwoView => "small-two-view",
            Kind::SmallZoom => "small-zoom",
            Kind::SmallGlobal => "small-global",
            Kind::ShapeGlobal => "shape-global",
            Kind::Sheet => "sheet",
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

/// Weight of an off-object ("no code here") patch in the digit heads'
/// loss (an object's patch weighs 1): the background is most of an image.
pub const NO_CODE_WEIGHT: f32 = 0.1;

/// Side range (source pixels) of zoomed views (at least the target's side
/// and a margin): 4.2 to 2.0 model pixels per font pixel for the small
/// codes, from a tight box on the object to SD-RPN's crops of 3 x 3 to
/// 4.5 x 4.5 tokens (168 to 252 source pixels).
pub const ZOOM_SIDES: (u32, u32) = (120, 252);

/// Layers run before the question head reads the last prompt position.
pub const QUESTION_LAYER: usize = 2;

/// Pretraining settings.
#[derive(Clone, Debug)]
pub struct PretrainSettings {
    /// Optimizer steps of the vision stage.
    pub vision_steps: usize,
    /// Optimizer steps of the language stage.
    pub language_steps: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// Peak learning rate of the vision stage.
    pub vision_lr: f64,
    /// Peak learning rate of the language stage.
    pub lr: f64,
    /// Linear warm-up steps (each stage).
    pub warmup: usize,
    /// Weight of the question head's loss (language stage).
    pub question_weight: f32,
    /// Share of each kind in the vision stage, in [`Kind::ALL`] order.
    pub vision_mix: [f64; 6],
    /// Train the vision stage's colour, shape and coded-object heads too
    /// (not only the glyph heads): without them the ViT's features need not
    /// keep what the questions name the target by, nor where a code is
    /// when it is too small to read.
    pub object_heads: bool,
    /// Train the heads that predict, at every patch of an object, the
    /// object's code (where readable): the ViT carries the code from the
    /// label over the whole object, so a question that finds the object by
    /// its colour finds the code on the same tokens.
    pub object_code_heads: bool,
    /// Share of each kind in the language stage, in [`Kind::ALL`] order.
    pub language_mix: [f64; 6],
    /// Share of the language stage with one or two objects per scene, then
    /// (up to twice that share) two or three, then the task's count.
    pub few_objects: f64,
    /// Objects per scene in the vision stage (more glyphs per image).
    pub vision_objects: (usize, usize),
    /// In the language stage, also train the ViT's per-patch heads after
    /// every this many steps (0: never), at the vision stage's final rate.
    pub vision_every: usize,
    /// Seed of the weights and the data.
    pub seed: u64,
}

impl Default for PretrainSettings {
    fn default() -> Self {
        Self {
            vision_steps: 1200,
            language_steps: 1100,
            batch_size: 16,
            vision_lr: 2e-3,
            lr: 2e-3,
            warmup: 50,
            question_weight: 0.5,
            vision_mix: [0.15, 0.0, 0.0, 0.15, 0.0, 0.7],
            object_heads: true,
            object_code_heads: true,
            language_mix: [0.4, 0.35, 0.25, 0.0, 0.0, 0.0],
            few_objects: 0.1,
            vision_objects: (6, 8),
            vision_every: 4,
            seed: 1,
        }
    }
}

/// Which stage a step belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The ViT with per-patch heads.
    Vision,
    /// Projector and LLaMA on the answers, ViT frozen.
    Language,
}

/// The model with its training-only heads.
#[derive(Module, Debug)]
pub struct Student<B: Backend> {
    /// The LLaVA model (what is exported).
    pub llava: Llava<B>,
    /// Per-patch heads on the selected vision features, one per [`Target`].
    aux: Linear<B>,
    /// Colour named by the question, from the last prompt position.
    question: Linear<B>,
}

impl<B: Backend> Student<B> {
    /// Wraps `llava` with fresh training-only heads.
    pub fn new(llava: Llava<B>, device: &B::Device) -> Self {
        let dv = llava.config().vision.hidden_size;
        let d = llava.config().text.hidden_size;
        let classes = Target::ALL.iter().map(|t| t.classes()).sum();
        Self {
            aux: LinearConfig::new(dv, classes).init(device),
            question: LinearConfig::new(d, PALETTE.len()).init(device),
            llava,
        }
    }
}

/// One sample ready for the model.
pub struct Item {
    /// Its kind.
    pub kind: Kind,
    /// Objects in its scene.
    pub objects: usize,
    /// Views in sequence order.
    pub views: Vec<View>,
    /// Token ids (image tokens expanded, answer appended without EOS).
    pub ids: Vec<u32>,
    /// Next-token targets per position ([`IGNORE`] outside the answer).
    pub targets: Vec<i64>,
    /// Palette index of the target's colour.
    pub colour: i64,
}

impl Item {
    /// Tokens of the prompt (the answer's first target is at the last one).
    pub fn prompt_len(&self) -> usize {
        self.targets
            .iter()
            .position(|&t| t != IGNORE)
            .expect("an answer")
            + 1
    }
}

/// Prompt text of a question, as the TextVQA loader builds it.
pub fn prompt_text(question: &str) -> String {
    sdrpn_eval::pytext::capitalize(question) + SHORT_ANSWER
}

/// The shape question about the object of colour `colour`.
pub fn shape_question(colour: &str) -> String {
    format!("What shape is the {colour} object?")
}

/// Draws a kind from `mix`.
fn draw_kind(mix: &[f64; 6], rng: &mut SplitMix) -> Kind {
    let total: f64 = mix.iter().sum();
    let mut u = rng.next_f32() as f64 * total;
    for (k, &w) in Kind::ALL.iter().zip(mix) {
        if w > 0.0 && u < w {
            return *k;
        }
        u -= w;
    }
    *Kind::ALL
        .iter()
        .zip(mix)
        .rev()
        .find(|(_, &w)| w > 0.0)
        .expect("a kind with a share")
        .0
}

/// The task with the object count of the curriculum at `progress` (0-1 of
/// the language stage): one or two objects, then two or three, then the
/// task's own.
fn task_at(task: &TaskConfig, settings: &PretrainSettings, progress: f64) -> TaskConfig {
    let mut task = task.clone();
    let (lo, hi) = if progress < settings.few_objects {
        (1, 2)
    } else if progress < 2.0 * settings.few_objects {
        (2, 3)
    } else {
        return task;
    };
    task.scene.min_objects = lo;
    task.scene.max_objects = hi;
    task
}

/// Builds sample `index` of a stage's stream; `progress` (0-1) drives the
/// object-count curriculum of the language stage.
pub fn make_item(
    index: u64,
    stage: Stage,
    progress: f64,
    settings: &PretrainSettings,
    task: &TaskConfig,
    tokenizer: &LlavaTokenizer,
) -> Item {
    let salt = match stage {
        Stage::Vision => 0x5649_5349_4F4E,
        Stage::Language => 0x4C41_4E47,
    };
    let mut rng = SplitMix::new(settings.seed ^ salt ^ index.wrapping_mul(0xA24B_AED4_963E_E407));
    let (mix, task) = match stage {
        Stage::Vision => {
            let mut task = task.clone();
            (task.scene.min_objects, task.scene.max_objects) = settings.vision_objects;
            task.distractor_codes = true;
            (&settings.vision_mix, task)
        }
        Stage::Language => (&settings.language_mix, task_at(task, settings, progress)),
    };
    let kind = draw_kind(mix, &mut rng);
    if kind == Kind::Sheet {
        return sheet_item(&mut rng, task.small_glyph);
    }
    let family = if kind == Kind::LargeGlobal {
        Family::Control
    } else {
        Family::Reading
    };
    let mut sample = Sample::generate(format!("pretrain-{index}"), family, &task, &mut rng);
    if stage == Stage::Vision {
        // Codes on a random half of the other objects: the coded head
        // learns where codes are, however many there are.
        let keep: Vec<bool> = (0..sample.scene.objects.len())
            .map(|i| i == sample.target || rng.next_u64().is_multiple_of(2))
            .collect();
        sample.scene.keep_codes(|i| keep[i]);
    }
    if kind == Kind::ShapeGlobal {
        let object = &sample.scene.objects[sample.target];
        sample.question = shape_question(object.colour_name());
        sample.answer = object.shape.name().to_string();
    }
    let image = sample.image();
    let (side, patch) = (IMAGE_SIDE as u32, PATCH as u32);
    let scale = sample.glyph_scale;
    let global = || global_view(&sample.scene, &image, scale, side, patch);
    let zoom = |rng: &mut SplitMix| {
        let region = zoom_around(
            sample.target_box(),
            sample.scene.side,
            ZOOM_SIDES.0,
            ZOOM_SIDES.1,
            rng,
        );
        zoom_view(&sample.scene, &image, region, scale, side, patch)
    };
    let views = match kind {
        Kind::LargeGlobal | Kind::SmallGlobal | Kind::ShapeGlobal => vec![global()],
        Kind::SmallTwoView => vec![global(), zoom(&mut rng)],
        Kind::SmallZoom => vec![zoom(&mut rng)],
        Kind::Sheet => unreachable!("sheets return early"),
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
        objects: sample.scene.objects.len(),
        colour: sample.scene.objects[sample.target].colour as i64,
        views,
        ids,
        targets,
    }
}

/// Source side range of glyph sheets: shown whole at the model's input,
/// the small codes get 1.9 (below the control codes' 2.0 in the global
/// view) to 4.2 (the tightest zooms) model pixels per font pixel.
pub const SHEET_SIDES: (u32, u32) = (ZOOM_SIDES.0, 264);

/// A glyph-sheet item (vision stage): one view, per-patch targets, no text.
fn sheet_item(rng: &mut SplitMix, glyph_scale: u32) -> Item {
    let side = SHEET_SIDES.0 + (rng.next_u64() % (SHEET_SIDES.1 - SHEET_SIDES.0 + 1) as u64) as u32;
    let scene = super::scene::Scene::sheet(side, (16 * glyph_scale, 24 * glyph_scale), 4, rng);
    let image = scene.render(glyph_scale);
    let region = sdrpn_core::crop::PixelBox {
        x0: 0,
        y0: 0,
        x1: side,
        y1: side,
    };
    let view = zoom_view(
        &scene,
        &image,
        region,
        glyph_scale,
        IMAGE_SIDE as u32,
        PATCH as u32,
    );
    Item {
        kind: Kind::Sheet,
        objects: scene.objects.len(),
        views: vec![view],
        ids: Vec::new(),
        targets: Vec::new(),
        colour: 0,
    }
}

/// Losses and counts of one batch.
pub struct BatchLoss<B: Backend> {
    /// Weighted total, `[1]`.
    pub total: Tensor<B, 1>,
    /// The main loss: per-patch cross-entropy (vision stage) or answer
    /// cross-entropy (language stage).
    pub main: f32,
    /// Question-head cross-entropy (language stage; 0 in the vision stage).
    pub question: f32,
    /// Targets predicted right and counted (per-patch digits where
    /// readable, or answer tokens under teacher forcing).
    pub correct: (usize, usize),
    /// Whole answers right (every token) and counted (language stage).
    pub exact: (usize, usize),
    /// Object-code heads right and counted at the patches of objects whose
    /// code is readable (vision stage).
    pub object_codes: (usize, usize),
    /// Patches of coded objects the coded head finds, and their count
    /// (vision stage).
    pub coded: (usize, usize),
}

/// Mean cross-entropy of `logits` `[M, C]` against `targets` (`IGNORE`
/// skipped), and the argmax predictions.
fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: &[i64]) -> (Tensor<B, 1>, Vec<i64>) {
    weighted_cross_entropy(logits, targets, |_| 1.0)
}

/// Cross-entropy of `logits` `[M, C]` averaged with per-target weights
/// (`IGNORE` weighs 0), and the argmax predictions.
fn weighted_cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: &[i64],
    weight: impl Fn(i64) -> f32,
) -> (Tensor<B, 1>, Vec<i64>) {
    let device = logits.device();
    let [m, _] = logits.dims();
    let valid: Vec<f32> = targets
        .iter()
        .map(|&t| if t == IGNORE { 0.0 } else { weight(t) })
        .collect();
    let count = valid.iter().sum::<f32>().max(1e-6);
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

/// Predictions equal to their (non-ignored) targets, and the count.
fn hits(predicted: &[i64], targets: &[i64]) -> (usize, usize) {
    predicted
        .iter()
        .zip(targets)
        .filter(|(_, &t)| t != IGNORE)
        .fold((0, 0), |(ok, n), (&p, &t)| {
            (ok + usize::from(p == t), n + 1)
        })
}

/// The views of `items` as one pixel batch `[N * views, 3, S, S]`.
fn pixel_batch<B: Backend>(items: &[Item], device: &B::Device) -> Tensor<B, 4> {
    let s = IMAGE_SIDE;
    let pixels: Vec<f32> = items
        .iter()
        .flat_map(|it| it.views.iter().flat_map(|v| v.pixels.iter().copied()))
        .collect();
    let n = pixels.len() / (3 * s * s);
    Tensor::from_data(TensorData::new(pixels, [n, 3, s, s]), device)
}

/// Vision stage: per-patch heads on the ViT's selected features.
/// Which heads train is in `settings` (`object_heads`, `object_code_heads`).
pub fn vision_loss<B: Backend>(
    student: &Student<B>,
    items: &[Item],
    settings: &PretrainSettings,
) -> BatchLoss<B> {
    let device = student.llava.language.device();
    let selected = student
        .llava
        .select_features(pixel_batch(items, &device))
        .expect("pixels have the model's size");
    let [v, p, dv] = selected.dims();
    let aux = student.aux.forward(selected.reshape([v * p, dv]));
    let mut loss = Tensor::<B, 1>::zeros([1], &device);
    let mut correct = (0, 0);
    let mut object_codes = (0, 0);
    let mut coded = (0, 0);
    let mut from = 0;
    for (k, target_kind) in Target::ALL.into_iter().enumerate() {
        let width = target_kind.classes();
        let digits = target_kind != Target::Colour;
        let is_coded = target_kind == Target::Coded;
        let target: Vec<i64> = items
            .iter()
            .flat_map(|it| it.views.iter().flat_map(|v| v.targets[k].iter().copied()))
            .collect();
        let head = aux.clone().slice([0..v * p, from..from + width]);
        from += width;
        let trained = match target_kind {
            Target::GlyphFirst | Target::GlyphSecond => true,
            Target::Colour | Target::Shape | Target::Coded => settings.object_heads,
            Target::ObjectFirst | Target::ObjectSecond => settings.object_code_heads,
        };
        if !trained {
            continue;
        }
        let (l, predicted) = weighted_cross_entropy(head, &target, |t| {
            if (digits && t == NO_CODE) || (is_coded && t == 0) {
                NO_CODE_WEIGHT
            } else {
                1.0
            }
        });
        loss = loss + l;
        // Accuracy where there is a code (the "no code" elsewhere dominates):
        // digits at the glyphs' patches (reading), at the objects' patches,
        // or the coded objects' patches found.
        let (counter, none) = match target_kind {
            Target::GlyphFirst | Target::GlyphSecond => (Some(&mut correct), NO_CODE),
            Target::ObjectFirst | Target::ObjectSecond => (Some(&mut object_codes), NO_CODE),
            Target::Coded => (Some(&mut coded), 0),
            Target::Colour | Target::Shape => (None, NO_CODE),
        };
        if let Some(counter) = counter {
            let at_codes: Vec<i64> = target
                .iter()
                .map(|&t| if t == none { IGNORE } else { t })
                .collect();
            let (ok, n) = hits(&predicted, &at_codes);
            *counter = (counter.0 + ok, counter.1 + n);
        }
    }
    BatchLoss {
        main: loss.clone().into_scalar().elem::<f32>(),
        question: 0.0,
        total: loss,
        correct,
        exact: (0, 0),
        object_codes,
        coded,
    }
}

/// Language stage: answer cross-entropy (and the question head) with the
/// ViT frozen. All items have the same kind (so the same length).
pub fn language_loss<B: AutodiffBackend>(
    student: &Student<B>,
    items: &[Item],
    question_weight: f32,
) -> BatchLoss<B> {
    let device = student.llava.language.device();
    let n = items.len();
    let views = items[0].views.len();
    let frozen = student
        .llava
        .valid()
        .select_features(pixel_batch(items, &device))
        .expect("pixels have the model's size");
    let projected = student.llava.project(Tensor::from_inner(frozen));
    let [_, p, d] = projected.dims();
    let embeds: Vec<Tensor<B, 3>> = items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let images: Vec<Tensor<B, 2>> = (0..views)
                .map(|v| {
                    let j = i * views + v;
                    projected
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
    let lm = &student.llava.language;
    let mut captured = Captured::default();
    let h = lm.run_layers(
        embeds,
        0,
        0..QUESTION_LAYER,
        None,
        &Taps::none(),
        &mut captured,
    );
    let last = items[0].prompt_len() - 1;
    let at_last = h
        .clone()
        .slice([0..n, last..last + 1, 0..d])
        .reshape([n, d]);
    let colours: Vec<i64> = items.iter().map(|it| it.colour).collect();
    let (question_loss, _) = cross_entropy(student.question.forward(at_last), &colours);
    let h = lm.run_layers(
        h,
        0,
        QUESTION_LAYER..layers,
        None,
        &Taps::none(),
        &mut captured,
    );
    let logits = lm.logits(lm.final_norm(h));
    let vocab = logits.dims()[2];
    let targets: Vec<i64> = items
        .iter()
        .flat_map(|it| it.targets.iter().copied())
        .collect();
    let (answer_loss, predicted) = cross_entropy(logits.reshape([n * t, vocab]), &targets);
    let mut exact = (0, n);
    for i in 0..n {
        let (ok, count) = hits(&predicted[i * t..(i + 1) * t], &targets[i * t..(i + 1) * t]);
        exact.0 += usize::from(ok == count);
    }
    BatchLoss {
        main: answer_loss.clone().into_scalar().elem::<f32>(),
        question: question_loss.clone().into_scalar().elem::<f32>(),
        correct: hits(&predicted, &targets),
        exact,
        object_codes: (0, 0),
        coded: (0, 0),
        total: answer_loss + question_loss * question_weight,
    }
}

use burn::tensor::ElementConversion;

/// Warm-up then cosine decay to a tenth of `peak` over `steps`.
pub fn learning_rate(peak: f64, warmup: usize, steps: usize, step: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (steps - warmup).max(1) as f64;
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos());
    peak * (0.1 + 0.9 * cosine)
}

/// Gradients of the batch-mean loss: the two halves of the batch run on two
/// threads (Burn's CPU matmuls use one core at these sizes), each loss
/// weighted by its share, and the gradients summed.
pub fn batch_gradients<B: AutodiffBackend>(
    student: &Student<B>,
    batch: &[Item],
    stage: Stage,
    settings: &PretrainSettings,
) -> (GradientsParams, BatchLoss<B>) {
    let run = |student: &Student<B>, items: &[Item]| {
        let mut loss = match stage {
            Stage::Vision => vision_loss(student, items, settings),
            Stage::Language => language_loss(student, items, settings.question_weight),
        };
        loss.total = loss.total * (items.len() as f32 / batch.len() as f32);
        let grads = GradientsParams::from_grads(loss.total.backward(), student);
        (grads, loss)
    };
    if batch.len() < 2 {
        return run(student, batch);
    }
    let (first, second) = batch.split_at(batch.len() / 2);
    // A copy with its own autodiff leaves: two threads recording graphs
    // that share parameter nodes deadlock in Burn 0.21's graph locator.
    let other = Student::<B>::from_inner(student.valid());
    let ((g1, l1), (g2, l2)) = std::thread::scope(|scope| {
        let handle = scope.spawn(move || run(&other, second));
        let a = run(student, first);
        (a, handle.join().expect("the second half's thread finished"))
    });
    let mut sum = burn::optim::GradientsAccumulator::new();
    sum.accumulate(student, g1);
    sum.accumulate(student, g2);
    let (w1, w2) = (first.len() as f32, second.len() as f32);
    let mean = |a: f32, b: f32| (a * w1 + b * w2) / (w1 + w2);
    let add = |a: (usize, usize), b: (usize, usize)| (a.0 + b.0, a.1 + b.1);
    let loss = BatchLoss {
        total: l1.total,
        main: mean(l1.main, l2.main),
        question: mean(l1.question, l2.question),
        correct: add(l1.correct, l2.correct),
        exact: add(l1.exact, l2.exact),
        object_codes: add(l1.object_codes, l2.object_codes),
        coded: add(l1.coded, l2.coded),
    };
    (sum.grads(), loss)
}

/// Running sums of a log window, per kind.
#[derive(Default)]
struct Window {
    /// main loss, question loss, batches, correct, counted, exact, samples,
    /// object codes right, object codes counted, coded patches found,
    /// coded patches
    sums: std::collections::BTreeMap<Kind, [f64; 11]>,
}

impl Window {
    fn add(&mut self, kind: Kind, loss: &BatchLoss<impl Backend>) {
        let s = self.sums.entry(kind).or_default();
        let values = [
            loss.main as f64,
            loss.question as f64,
            1.0,
            loss.correct.0 as f64,
            loss.correct.1 as f64,
            loss.exact.0 as f64,
            loss.exact.1 as f64,
            loss.object_codes.0 as f64,
            loss.object_codes.1 as f64,
            loss.coded.0 as f64,
            loss.coded.1 as f64,
        ];
        for (slot, v) in s.iter_mut().zip(values) {
            *slot += v;
        }
    }
    fn line(&mut self, stage: Stage) -> String {
        let mut line = String::new();
        for (kind, s) in std::mem::take(&mut self.sums) {
            let b = s[2].max(1.0);
            line.push_str(&format!(" | {} loss {:.3}", kind.name(), s[0] / b));
            if stage == Stage::Language {
                line.push_str(&format!(
                    " question {:.3} tok {:.0}% exact {:.0}%",
                    s[1] / b,
                    100.0 * s[3] / s[4].max(1.0),
                    100.0 * s[5] / s[6].max(1.0)
                ));
            } else {
                line.push_str(&format!(
                    " glyphs {:.0}% object codes {:.0}% coded found {:.0}%",
                    100.0 * s[3] / s[4].max(1.0),
                    100.0 * s[7] / s[8].max(1.0),
                    100.0 * s[9] / s[10].max(1.0)
                ));
            }
        }
        line
    }
}

/// Trains `student` through both stages; `log` gets a line every
/// `log_every` steps with running losses and accuracies per kind.
pub fn pretrain<B: AutodiffBackend>(
    mut student: Student<B>,
    settings: &PretrainSettings,
    task: &TaskConfig,
    tokenizer: &LlavaTokenizer,
    log_every: usize,
    log: &mut dyn FnMut(&str),
) -> Student<B> {
    let start = Instant::now();
    // The vision stream continues into the language stage (every
    // `vision_every`-th step also trains the ViT's per-patch heads).
    let mut vision_stream = Stream::new(Stage::Vision);
    for stage in [Stage::Vision, Stage::Language] {
        let (steps, peak) = match stage {
            Stage::Vision => (settings.vision_steps, settings.vision_lr),
            Stage::Language => (settings.language_steps, settings.lr),
        };
        let mut optim = AdamWConfig::new()
            .with_beta_2(0.98)
            .with_weight_decay(0.0)
            .with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(1.0)))
            .init::<B, Student<B>>();
        let mut language_stream = Stream::new(Stage::Language);
        let mut window = Window::default();
        let mut vision_window = Window::default();
        let stage_start = Instant::now();
        for step in 0..steps {
            let progress = step as f64 / steps.max(1) as f64;
            let lr = learning_rate(peak, settings.warmup, steps, step);
            let stream = match stage {
                Stage::Vision => &mut vision_stream,
                Stage::Language => &mut language_stream,
            };
            let batch = stream.batch(progress, settings, task, tokenizer);
            let (grads, loss) = batch_gradients(&student, &batch, stage, settings);
            student = optim.step(lr, student, grads);
            window.add(batch[0].kind, &loss);
            let interleave = stage == Stage::Language
                && settings.vision_every > 0
                && step % settings.vision_every == settings.vision_every - 1;
            if interleave {
                let batch = vision_stream.batch(1.0, settings, task, tokenizer);
                let (grads, loss) = batch_gradients(&student, &batch, Stage::Vision, settings);
                // At the vision stage's final rate: the language stage's
                // rate undoes what the ViT learnt.
                student = optim.step(0.1 * settings.vision_lr, student, grads);
                vision_window.add(batch[0].kind, &loss);
            }
            if (step + 1) % log_every == 0 || step + 1 == steps {
                let elapsed = stage_start.elapsed().as_secs_f64();
                log(&format!(
                    "{:?} step {:>5}/{steps} ({:.0} s, total {:.0} s, data {:.0} s, {:.2} s/step, lr {:.2e}, {} samples, {} objects){}{}",
                    stage,
                    step + 1,
                    elapsed,
                    start.elapsed().as_secs_f64(),
                    vision_stream.data_seconds + language_stream.data_seconds,
                    elapsed / (step + 1) as f64,
                    lr,
                    language_stream.next + vision_stream.next,
                    batch[0].objects,
                    window.line(stage),
                    vision_window.line(Stage::Vision),
                ));
            }
        }
    }
    student
}

/// A stage's stream of samples, batched by kind (a batch shares a
/// sequence length).
struct Stream {
    stage: Stage,
    next: u64,
    pending: std::collections::BTreeMap<Kind, Vec<Item>>,
    data_seconds: f64,
}

impl Stream {
    fn new(stage: Stage) -> Self {
        Self {
            stage,
            next: 0,
            pending: Default::default(),
            data_seconds: 0.0,
        }
    }

    fn batch(
        &mut self,
        progress: f64,
        settings: &PretrainSettings,
        task: &TaskConfig,
        tokenizer: &LlavaTokenizer,
    ) -> Vec<Item> {
        let start = Instant::now();
        let batch = loop {
            let item = make_item(self.next, self.stage, progress, settings, task, tokenizer);
            self.next += 1;
            let queue = self.pending.entry(item.kind).or_default();
            queue.push(item);
            if queue.len() == settings.batch_size {
                break std::mem::take(queue);
            }
        };
        self.data_seconds += start.elapsed().as_secs_f64();
        batch
    }
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
    let prompt_len = item.prompt_len();
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
