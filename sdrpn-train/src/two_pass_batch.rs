//! Baseline and SD-RPN answers of several questions in padded batches
//! ([`crate::batch`]), for evaluation throughput on a GPU.
//!
//! SD-RPN over a batch: every prompt is prepared on its own (the vision
//! tower sees one image at a time: hosts such as Qwen2.5-VL give each image
//! its own grid); pass 1 runs base layers `0..K` over the padded batch and
//! the RPN on their output (one batched RPN call when every prompt has as
//! many visual tokens, else one per prompt); each sample's RoI is cut and
//! encoded on its own; pass 2 runs every sample's sequence (with its RoI
//! tokens, or its plain prompt in mode none) as a new padded batch through
//! all layers and decodes in lockstep. Pass 2 recomputes the prefix it
//! shares with pass 1 (the `reuse_prefix_cache = false` path of batch 1:
//! the samples' prefixes sit at different padded offsets), so answers equal
//! batch-1 answers up to float rounding.

use crate::batch::{generate_batch, BatchAnswers, PaddedBatch, Sequence};
use crate::two_pass::{
    crop_stage, with_insert, CropStage, HostRpn, Timings, TwoPass, TwoPassOutput,
};
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use image::RgbImage;
use sdrpn_core::host::{AnswerOptions, HostPrompt, RpnHost};
use sdrpn_core::readback::floats;
use sdrpn_core::roi::RoiMode;
use std::time::Instant;

/// One question about one image.
pub type Question<'a> = (&'a RgbImage, &'a str);

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Prepares every question (one image at a time).
fn prepare_all<B: Backend, H: RpnHost<B>>(
    host: &H,
    questions: &[Question<'_>],
) -> Result<Vec<H::Prompt>, H::Error> {
    questions.iter().map(|(i, q)| host.prepare(i, q)).collect()
}

/// The plain baseline for a batch of questions: one padded prefill, then
/// lockstep greedy decoding. Stage timings are the batch's, shared out
/// evenly over its samples.
pub fn answer_baseline_batch<B: Backend, H: RpnHost<B>>(
    host: &H,
    questions: &[Question<'_>],
    options: &AnswerOptions,
) -> Result<Vec<TwoPassOutput>, H::Error> {
    let t0 = Instant::now();
    let prompts = prepare_all(host, questions)?;
    let prepare_ms = ms(t0);
    let t1 = Instant::now();
    let refs: Vec<&H::Prompt> = prompts.iter().collect();
    let batch = PaddedBatch::of_prompts(&refs)?;
    let answers = generate_batch(host, &batch, options, &[], |_, _, _| Ok(()))?;
    let n = prompts.len() as f64;
    let timings = Timings {
        prepare_ms: prepare_ms / n,
        pass2_ms: ms(t1) / n,
        total_ms: ms(t0) / n,
        ..Timings::default()
    };
    outputs(host, answers, options, timings, |_| None)
}

/// SD-RPN's two passes for a batch of questions (see the module doc).
pub fn answer_batch_with_roi<B: Backend, H: RpnHost<B>>(
    host: &H,
    rpn: &HostRpn<B, H>,
    questions: &[Question<'_>],
    options: &crate::two_pass::TwoPassOptions,
) -> Result<Vec<TwoPassOutput>, H::Error> {
    let t0 = Instant::now();
    let prompts = prepare_all(host, questions)?;
    let prepare_ms = ms(t0);

    let t1 = Instant::now();
    let k = options.branch;
    sdrpn_core::rpn::check_branch(k, rpn.twig_depth(), host.num_layers())?;
    let refs: Vec<&H::Prompt> = prompts.iter().collect();
    let batch = PaddedBatch::of_prompts(&refs)?;
    let h = host.run_layers(batch.embeds.clone(), 0, &batch.positions, 0..k, None);
    let maps = rpn_maps(host, rpn, &refs, &batch, h)?;
    let pass1_ms = ms(t1);

    let t2 = Instant::now();
    let crops = prompts
        .iter()
        .zip(questions)
        .zip(&maps)
        .map(|((prompt, (image, _)), map)| {
            crop_stage(host, prompt, image, Some(map), None, &options.roi)
        })
        .collect::<Result<Vec<CropStage<B>>, H::Error>>()?;
    let crop_ms = ms(t2);

    let t3 = Instant::now();
    let sequences = prompts
        .iter()
        .zip(&crops)
        .map(|(prompt, crop)| match &crop.roi {
            None => Sequence::of_prompt(prompt),
            Some(roi) => Sequence {
                embeds: with_insert(prompt.embeds(), roi),
                positions: roi.positions.clone(),
                decode_offset: roi.decode_offset,
            },
        })
        .collect();
    let answers = generate_batch(
        host,
        &PaddedBatch::new(sequences)?,
        &options.answer,
        &[],
        |_, _, _| Ok(()),
    )?;
    let n = prompts.len() as f64;
    let timings = Timings {
        prepare_ms: prepare_ms / n,
        pass1_ms: pass1_ms / n,
        crop_ms: crop_ms / n,
        pass2_ms: ms(t3) / n,
        total_ms: ms(t0) / n,
    };
    let mut crops = crops.into_iter();
    let mut maps = maps.into_iter();
    outputs(host, answers, &options.answer, timings, |_| {
        Some((crops.next().expect("a crop"), maps.next().expect("a map")))
    })
}

/// Each sample's RPN probabilities from pass 1's batched states `h`
/// (`[N, T, D]`): one RPN call over the batch when every prompt has as many
/// visual tokens, else one call per prompt on its own rows.
fn rpn_maps<B: Backend, H: RpnHost<B>>(
    host: &H,
    rpn: &HostRpn<B, H>,
    prompts: &[&H::Prompt],
    batch: &PaddedBatch<B>,
    h: Tensor<B, 3>,
) -> Result<Vec<Vec<f32>>, H::Error> {
    let p = prompts[0].visual().len();
    if prompts.iter().any(|q| q.visual().len() != p) {
        return prompts
            .iter()
            .enumerate()
            .map(|(n, prompt)| host.rpn_map(rpn, prompt, batch.sample_rows(&h, n)))
            .collect();
    }
    let device = host.device();
    let n = prompts.len();
    let pads = batch.pads();
    let query: Vec<i64> = (0..n)
        .map(|i| (pads[i] + prompts[i].query()) as i64)
        .collect();
    let visual: Vec<i64> = (0..n)
        .flat_map(|i| prompts[i].visual().map(move |v| (pads[i] + v) as i64))
        .collect();
    let logits = rpn.forward(
        h,
        &batch.positions,
        Tensor::<B, 1, Int>::from_data(TensorData::new(query, [n]), &device),
        Tensor::<B, 2, Int>::from_data(TensorData::new(visual, [n, p]), &device),
    );
    let probs = floats(sigmoid(logits))?;
    Ok(probs.chunks(p).map(<[f32]>::to_vec).collect())
}

/// The outputs of a batch's answers; `crop_of(n)` gives sample `n`'s crop
/// stage and RoI map (none for the baseline).
fn outputs<B: Backend, H: RpnHost<B>>(
    host: &H,
    answers: BatchAnswers,
    options: &AnswerOptions,
    timings: Timings,
    mut crop_of: impl FnMut(usize) -> Option<(CropStage<B>, Vec<f32>)>,
) -> Result<Vec<TwoPassOutput>, H::Error> {
    answers
        .tokens
        .into_iter()
        .zip(answers.first_logits)
        .enumerate()
        .map(|(n, (tokens, first_logits))| {
            let answer = host.answer_text(&tokens, options)?;
            let (crop, roi_map) = match crop_of(n) {
                Some((c, map)) => (Some(c), map),
                None => (None, Vec::new()),
            };
            let roi_tokens = crop
                .as_ref()
                .and_then(|c| c.roi.as_ref())
                .map_or(0, |r| r.roi_tokens);
            let (boxes, region, mode, kept) = match crop {
                Some(c) => (c.selection.boxes, c.region, c.mode, c.kept),
                None => (Vec::new(), None, RoiMode::None, Vec::new()),
            };
            Ok(TwoPassOutput {
                answer,
                tokens,
                roi_map,
                boxes,
                crop: region,
                mode,
                roi_tokens,
                kept,
                timings: timings.clone(),
                first_logits,
            })
        })
        .collect()
}
