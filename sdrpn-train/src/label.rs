//! Stage A: pseudo-label maps from the frozen model's own attention.
//!
//! For each question: generate the answer greedily with attention taps,
//! average the fed-back tokens' rows at the grounding heads into A and at
//! the sink heads into S (SPEC 2), and store both raw maps. Resumable,
//! shardable, and a bad sample is logged and skipped, never fatal.

use crate::batch::{generate_batch, PaddedBatch};
use crate::config::{SdrpnConfig, SinkRule};
use crate::error::{describe, Result};
use crate::label_store::{LabelRecord, ShardWriter};
use crate::questions::{Question, ShardSpec};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};
use sdrpn_core::attention::AttentionAccumulator;
use sdrpn_core::host::{AnswerOptions, HostPrompt, RpnHost, TappedAnswer};
use sdrpn_core::readback::floats;
use sdrpn_llava::preprocess::load_rgb;
use std::path::{Path, PathBuf};

/// What to label and where.
#[derive(Clone, Debug)]
pub struct LabelJob {
    /// The questions, in file order.
    pub questions: Vec<Question>,
    /// Folder the question's image paths are relative to.
    pub images: PathBuf,
    /// Output label folder.
    pub out: PathBuf,
    /// This worker's share.
    pub shard: ShardSpec,
    /// Only the first `limit` questions (before sharding).
    pub limit: Option<usize>,
    /// Records per shard file (a crash loses at most this many).
    pub shard_size: usize,
    /// When the folder holds labels made from other inputs: discard them
    /// and start afresh instead of refusing (`--force`; whole jobs only).
    pub force: bool,
    /// Questions answered together in one padded batch (1: one at a time).
    /// Labels equal batch-1 labels up to float rounding.
    pub batch: usize,
}

/// Progress after each sample.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelProgress {
    /// Samples of this worker handled in this run (labelled + skipped).
    pub handled: usize,
    /// Samples of this worker in total (including those done earlier).
    pub total: usize,
    /// Done by earlier runs.
    pub resumed: usize,
    /// Labelled in this run.
    pub labelled: usize,
    /// Skipped in this run.
    pub skipped: usize,
}

/// Maximum over `dims` of `|rms_norm(h)|` per visual token (the
/// massive-activation score), `P` values.
fn massive_map<B: Backend>(hidden: Tensor<B, 3>, dims: &[usize]) -> Result<Vec<f32>> {
    let [_, p, d] = hidden.dims();
    if let Some(&bad) = dims.iter().find(|&&x| x >= d) {
        return Err(crate::error::TrainError::config(
            "labels.sink.dims",
            format!("dimension {bad} is outside the model width {d}"),
        ));
    }
    let h = hidden.cast(DType::F32).reshape([p, d]);
    let rms = (h.clone().square().mean_dim(1) + 1e-6).sqrt();
    let idx: Vec<i64> = dims.iter().map(|&x| x as i64).collect();
    let device = h.device();
    let picked = (h / rms).select(1, Tensor::<B, 1, Int>::from_data(idx.as_slice(), &device));
    Ok(floats(picked.abs().max_dim(1).reshape([p]))?)
}

/// A question prepared for labelling: its prompt and the two empty maps
/// (grounding heads, sink heads) its answer's attention goes into.
struct Pending<B: Backend, H: RpnHost<B>> {
    prompt: H::Prompt,
    maps: Vec<AttentionAccumulator<B>>,
}

/// Loads the image of `question`, prepares its prompt and the maps.
fn prepare_label<B: Backend, H: RpnHost<B>>(
    session: &H,
    config: &SdrpnConfig,
    image: &Path,
    question: &Question,
) -> std::result::Result<Pending<B, H>, String> {
    if question.text.trim().is_empty() {
        return Err("empty question".into());
    }
    let img = load_rgb(image).map_err(|e| describe(&e))?;
    let prompt = session
        .prepare(&img, &question.text)
        .map_err(|e| describe(&e))?;
    let (layers, heads, grid) = (session.num_layers(), session.num_heads(), prompt.grid());
    if Ok(grid) != session.label_grid().map_err(|e| describe(&e)) {
        return Err(format!(
            "the prompt's visual grid {grid} is not the labels' grid"
        ));
    }
    let device = session.device();
    let map = |h: &sdrpn_core::HeadSelection| {
        let heads = h.resolve(layers, heads).map_err(|e| describe(&e))?;
        AttentionAccumulator::new(heads, prompt.visual(), grid, &device).map_err(|e| describe(&e))
    };
    let maps = vec![
        map(&config.labels.grounding_heads)?,
        map(&config.labels.sink_heads)?,
    ];
    Ok(Pending { prompt, maps })
}

/// The label record of a prepared question once its answer was generated
/// (`tapped`) and its maps filled.
fn finish_label<B: Backend, H: RpnHost<B>>(
    session: &H,
    config: &SdrpnConfig,
    question: &Question,
    pending: Pending<B, H>,
    tapped: TappedAnswer,
) -> std::result::Result<LabelRecord, String> {
    if tapped.fed_back == 0 {
        return Err("the answer ended at its first token, so no attention row was fed back".into());
    }
    let mut maps = pending.maps.into_iter();
    let mut finish = || -> std::result::Result<Vec<f32>, String> {
        let map = maps.next().expect("two maps").finish();
        floats(map.map_err(|e| describe(&e))?).map_err(|e| describe(&e))
    };
    let (a, s) = (finish()?, finish()?);
    if a.iter().chain(&s).any(|v| !v.is_finite()) {
        return Err("the attention maps hold NaN or infinity (non-finite model output)".into());
    }
    let prepared = &pending.prompt;
    let massive = match &config.labels.sink {
        SinkRule::MassiveActivation {
            dims, hidden_state, ..
        } => {
            let h = session
                .visual_hidden_state(prepared, *hidden_state)
                .map_err(|e| describe(&e))?;
            Some(massive_map(h, dims).map_err(|e| describe(&e))?)
        }
        _ => None,
    };
    let answer = session
        .answer_text(&tapped.tokens, &AnswerOptions::default())
        .map_err(|e| describe(&e))?;
    Ok(LabelRecord {
        question_id: question.question_id.clone(),
        image: question.image.clone(),
        question: question.text.clone(),
        prompt: prepared.text(),
        answer,
        answer_tokens: tapped.tokens.len(),
        fed_back: tapped.fed_back,
        grounding: a,
        sink: s,
        massive,
    })
}

/// Labels one question: its record, or the reason it cannot be labelled.
fn label_one<B: Backend, H: RpnHost<B>>(
    session: &H,
    config: &SdrpnConfig,
    image: &Path,
    question: &Question,
) -> std::result::Result<LabelRecord, String> {
    let mut pending = prepare_label(session, config, image, question)?;
    let tapped = session
        .generate_with_maps(
            &pending.prompt,
            &mut pending.maps,
            config.labels.max_new_tokens,
        )
        .map_err(|e| describe(&e))?;
    finish_label(session, config, question, pending, tapped)
}

/// Labels several questions in one padded batch ([`crate::batch`]): each
/// record equals its [`label_one`] record up to float rounding. A question
/// that cannot be prepared is reported alone; a failure of the batched
/// generation itself is reported for every question of the batch.
fn label_batch<B: Backend, H: RpnHost<B>>(
    session: &H,
    config: &SdrpnConfig,
    items: &[(PathBuf, &Question)],
) -> Vec<std::result::Result<LabelRecord, String>> {
    let mut outcomes: Vec<Option<std::result::Result<LabelRecord, String>>> =
        vec![None; items.len()];
    let mut ready: Vec<(usize, Pending<B, H>)> = Vec::new();
    for (i, (image, question)) in items.iter().enumerate() {
        match prepare_label(session, config, image, question) {
            Ok(p) => ready.push((i, p)),
            Err(reason) => outcomes[i] = Some(Err(reason)),
        }
    }
    if !ready.is_empty() {
        match generate_labels(session, config, &mut ready) {
            Ok(tapped) => {
                for ((i, pending), tapped) in ready.into_iter().zip(tapped) {
                    outcomes[i] = Some(finish_label(session, config, items[i].1, pending, tapped));
                }
            }
            Err(reason) => {
                for (i, _) in ready {
                    outcomes[i] = Some(Err(reason.clone()));
                }
            }
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.expect("every question has an outcome"))
        .collect()
}

/// The batched generation of [`label_batch`]: every prepared question's
/// answer, its fed-back tokens' attention rows added to its own maps.
fn generate_labels<B: Backend, H: RpnHost<B>>(
    session: &H,
    config: &SdrpnConfig,
    ready: &mut [(usize, Pending<B, H>)],
) -> std::result::Result<Vec<TappedAnswer>, String> {
    let prompts: Vec<&H::Prompt> = ready.iter().map(|(_, p)| &p.prompt).collect();
    let batch = PaddedBatch::of_prompts(&prompts).map_err(|e| describe(&e))?;
    let keep: Vec<usize> = ready[0]
        .1
        .maps
        .iter()
        .flat_map(|m| m.layers().collect::<Vec<_>>())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let options = AnswerOptions {
        max_new_tokens: config.labels.max_new_tokens,
        stop_strings: Vec::new(),
    };
    let mut fed_back = vec![0; ready.len()];
    let answers = generate_batch(session, &batch, &options, &keep, |n, _, rows| {
        fed_back[n] += 1;
        for map in ready[n].1.maps.iter_mut() {
            for (layer, rows) in keep.iter().zip(rows) {
                if map.layers().any(|l| l == *layer) {
                    let [_, heads, q, s] = rows.dims();
                    map.add(*layer, rows.clone().reshape([q, heads, s]))?;
                }
            }
        }
        Ok(())
    })
    .map_err(|e: H::Error| describe(&e))?;
    Ok(answers
        .tokens
        .into_iter()
        .zip(fed_back)
        .map(|(tokens, fed_back)| TappedAnswer { tokens, fed_back })
        .collect())
}

/// Runs stage A for this worker's share of `job`, resuming where an earlier
/// run stopped. `on_progress` is called after every sample.
pub fn run_labelling<B: Backend, H: RpnHost<B>>(
    session: &H,
    config: &SdrpnConfig,
    job: &LabelJob,
    mut on_progress: impl FnMut(&LabelProgress, Option<(&str, &str)>),
) -> Result<LabelProgress> {
    let grid = session
        .label_grid()
        .map_err(|e| crate::error::TrainError::host(&e))?;
    config.validate(session.num_layers(), session.num_heads(), grid)?;
    let _lock = crate::lock::FolderLock::acquire(&job.out, Some(&job.shard.tag()), "sdrpn label")?;
    job.shard.refuse_force(job.force)?;
    crate::provenance::check_label_folder(
        &job.out,
        &crate::provenance::LabelProvenance::new(session.fingerprint(), config),
        job.force,
    )?;
    config.save(&job.out.join("config.toml"))?;
    let mut writer = ShardWriter::open(&job.out, &job.shard.tag(), grid)?;
    let limit = job.limit.unwrap_or(usize::MAX);
    let mine: Vec<&Question> = job
        .questions
        .iter()
        .take(limit)
        .enumerate()
        .filter(|(i, _)| job.shard.owns(*i))
        .map(|(_, q)| q)
        .collect();
    let mut progress = LabelProgress {
        total: mine.len(),
        ..LabelProgress::default()
    };
    let todo: Vec<&Question> = mine
        .into_iter()
        .filter(|q| !writer.is_done(&q.question_id))
        .collect();
    progress.resumed = progress.total - todo.len();
    for chunk in todo.chunks(job.batch.max(1)) {
        let items: Vec<(PathBuf, &Question)> = chunk
            .iter()
            .map(|q| (job.images.join(&q.image), *q))
            .collect();
        let outcomes = match items.as_slice() {
            [(image, q)] => vec![label_one(session, config, image, q)],
            _ => label_batch(session, config, &items),
        };
        for (q, outcome) in chunk.iter().zip(outcomes) {
            progress.handled += 1;
            match outcome {
                Ok(record) => {
                    writer.push(record)?;
                    progress.labelled += 1;
                    if writer.buffered() >= job.shard_size.max(1) {
                        writer.flush()?;
                    }
                    on_progress(&progress, None);
                }
                Err(reason) => {
                    writer.skip(&q.question_id, &reason)?;
                    progress.skipped += 1;
                    on_progress(&progress, Some((&q.question_id, &reason)));
                }
            }
        }
    }
    writer.flush()?;
    Ok(progress)
}
