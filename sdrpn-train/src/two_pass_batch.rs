//! Baseline and SD-RPN answers of several questions in padded batches
//! ([`crate::batch`]), for evaluation throughput on a GPU.
//!
//! SD-RPN over a batch: every prompt is prepared on its own (the vision
//! tower sees one image at a time: hosts such as Qwen2.5-VL give each image
//! its own grid); pass 1 runs base layers `0..K` over the padded batch and
//! the RPN on their output (one batched RPN call when every prompt has as
//! many visual tokens, else one per prompt); each sample's RoI is cut and
//! encoded on its own. Pass 2, with `reuse_prefix_cache` (the default),
//! groups the samples by how many tokens their RoI inserts (0 in mode none;
//! LLaVA's bbox crops all insert the same count): a group keeps pass 1's
//! padding, so its samples' prefixes sit where they sat in pass 1 and pass
//! 1's keys/values and layer-`K` states are reused up to the earliest
//! insertion point of the group (mode none reuses everything and only runs
//! layers `K..L`); each group is decoded as one batch. Without reuse, every
//! sample's pass-2 sequence goes into one new padded batch through all
//! layers. Either way answers equal batch-1 answers up to float rounding.

use crate::batch::{decode_batch, generate_batch, BatchAnswers, PaddedBatch, Sequence};
use crate::two_pass::{
    crop_stage, with_insert, CropStage, HostRpn, Timings, TwoPass, TwoPassOutput,
};
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use image::RgbImage;
use sdrpn_core::cache::KvCache;
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
    let mut cache = KvCache::new(host.num_layers());
    let h = host.run_layers(
        batch.embeds.clone(),
        0,
        &batch.positions,
        0..k,
        Some(&mut cache),
    );
    let maps = rpn_maps(host, rpn, &refs, &batch, h.clone())?;
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
    let sequences: Vec<Sequence<B>> = prompts
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
    let answers = if options.reuse_prefix_cache {
        let pass1 = Pass1 {
            batch: &batch,
            cache: &cache,
            states: h,
            branch: k,
        };
        let inserts: Vec<(usize, usize)> = prompts
            .iter()
            .zip(&crops)
            .map(|(p, c)| {
                c.roi
                    .as_ref()
                    .map_or((0, p.len()), |r| (r.embeds.dims()[1], r.at))
            })
            .collect();
        answer_groups(host, &pass1, sequences, &inserts, &options.answer)?
    } else {
        generate_batch(
            host,
            &PaddedBatch::new(sequences)?,
            &options.answer,
            &[],
            |_, _, _| Ok(()),
        )?
    };
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

/// What pass 1 left for pass 2 to reuse.
struct Pass1<'a, B: Backend> {
    /// Pass 1's padded batch.
    batch: &'a PaddedBatch<B>,
    /// Keys and values of layers `0..K` over it.
    cache: &'a KvCache<B>,
    /// Output of layer `K - 1`, `[N, T, D]`.
    states: Tensor<B, 3>,
    branch: usize,
}

/// Pass 2 with pass 1's prefix reused (see the module doc): the samples
/// grouped by `inserts[n] = (tokens inserted, where)`, each group
/// prefilled on pass 1's cache and decoded as one batch; answers in sample
/// order.
fn answer_groups<B: Backend, H: RpnHost<B>>(
    host: &H,
    pass1: &Pass1<'_, B>,
    sequences: Vec<Sequence<B>>,
    inserts: &[(usize, usize)],
    options: &AnswerOptions,
) -> Result<BatchAnswers, H::Error> {
    let (layers, k) = (host.num_layers(), pass1.branch);
    let t = pass1.batch.len();
    let pads = pass1.batch.pads();
    let mut sizes: Vec<usize> = inserts.iter().map(|i| i.0).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut tokens = vec![Vec::new(); sequences.len()];
    let mut first_logits = vec![Vec::new(); sequences.len()];
    let mut sequences: Vec<Option<Sequence<B>>> = sequences.into_iter().map(Some).collect();
    for r in sizes {
        let group: Vec<usize> = (0..inserts.len()).filter(|&n| inserts[n].0 == r).collect();
        // Pass 1's padding kept: positions before the earliest insertion
        // point are pass 1's own.
        let shared = group
            .iter()
            .map(|&n| pads[n] + inserts[n].1)
            .min()
            .unwrap_or(0);
        let batch = PaddedBatch::with_len(
            group
                .iter()
                .map(|&n| sequences[n].take().expect("one group each"))
                .collect(),
            t + r,
        )?;
        let mut cache = pass1.cache.select_samples(&group, k, shared);
        let [_, _, d] = pass1.states.dims();
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                group.iter().map(|&n| n as i64).collect::<Vec<_>>(),
                [group.len()],
            ),
            &host.device(),
        );
        let states = pass1.states.clone().select(0, idx);
        let g = group.len();
        let h = if shared == t + r {
            states
        } else {
            let new = batch.embeds.clone().slice([0..g, shared..t + r, 0..d]);
            let fresh = host.run_layers(
                new,
                shared,
                &batch.positions.slice(shared..t + r),
                0..k,
                Some(&mut cache),
            );
            Tensor::cat(vec![states.slice([0..g, 0..shared, 0..d]), fresh], 1)
        };
        let out = host.run_layers(h, 0, &batch.positions, k..layers, Some(&mut cache));
        let first = host.batch_last_logits(out)?;
        let answers = decode_batch(host, first, &mut cache, &batch, options, &[], |_, _, _| {
            Ok(())
        })?;
        for (i, &n) in group.iter().enumerate() {
            tokens[n] = answers.tokens[i].clone();
            first_logits[n] = answers.first_logits[i].clone();
        }
    }
    Ok(BatchAnswers {
        tokens,
        first_logits,
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
