//! Stage A: pseudo-label maps from the frozen model's own attention.
//!
//! For each question: generate the answer greedily with attention taps,
//! average the fed-back tokens' rows at the grounding heads into A and at
//! the sink heads into S (SPEC 2), and store both raw maps. Resumable,
//! shardable, and a bad sample is logged and skipped, never fatal.

use crate::config::{SdrpnConfig, SinkRule};
use crate::error::{describe, Result};
use crate::label_store::{LabelRecord, ShardWriter};
use crate::questions::{Question, ShardSpec};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};
use sdrpn_core::attention::AttentionAccumulator;
use sdrpn_core::host::AnswerOptions;
use sdrpn_core::host::{HostPrompt, RpnHost};
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

/// Labels one prepared question: `(A, S, massive, answer tokens, fed back)`,
/// or the reason it cannot be labelled.
fn label_one<B: Backend, H: RpnHost<B>>(
    session: &H,
    config: &SdrpnConfig,
    image: &Path,
    question: &Question,
) -> std::result::Result<LabelRecord, String> {
    if question.text.trim().is_empty() {
        return Err("empty question".into());
    }
    let img = load_rgb(image).map_err(|e| describe(&e))?;
    let prepared = session
        .prepare(&img, &question.text)
        .map_err(|e| describe(&e))?;
    let (layers, heads, grid) = (session.num_layers(), session.num_heads(), prepared.grid());
    if Ok(grid) != session.label_grid().map_err(|e| describe(&e)) {
        return Err(format!(
            "the prompt's visual grid {grid} is not the labels' grid"
        ));
    }
    let device = session.device();
    let resolve =
        |h: &sdrpn_core::HeadSelection| h.resolve(layers, heads).map_err(|e| describe(&e));
    let mut maps = vec![
        AttentionAccumulator::new(
            resolve(&config.labels.grounding_heads)?,
            prepared.visual(),
            grid,
            &device,
        )
        .map_err(|e| describe(&e))?,
        AttentionAccumulator::new(
            resolve(&config.labels.sink_heads)?,
            prepared.visual(),
            grid,
            &device,
        )
        .map_err(|e| describe(&e))?,
    ];
    let tapped = session
        .generate_with_maps(&prepared, &mut maps, config.labels.max_new_tokens)
        .map_err(|e| describe(&e))?;
    if tapped.fed_back == 0 {
        return Err("the answer ended at its first token, so no attention row was fed back".into());
    }
    let mut maps = maps.into_iter();
    let a = floats(
        maps.next()
            .expect("two maps")
            .finish()
            .map_err(|e| describe(&e))?,
    )
    .map_err(|e| describe(&e))?;
    let s = floats(
        maps.next()
            .expect("two maps")
            .finish()
            .map_err(|e| describe(&e))?,
    )
    .map_err(|e| describe(&e))?;
    if a.iter().chain(&s).any(|v| !v.is_finite()) {
        return Err("the attention maps hold NaN or infinity (non-finite model output)".into());
    }
    let massive = match &config.labels.sink {
        SinkRule::MassiveActivation {
            dims, hidden_state, ..
        } => {
            let h = session
                .visual_hidden_state(&prepared, *hidden_state)
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
    for q in todo {
        let image = job.images.join(&q.image);
        let outcome = label_one(session, config, &image, q);
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
    writer.flush()?;
    Ok(progress)
}
