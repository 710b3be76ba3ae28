//! Batched greedy generation on any host: several prompts left-padded into
//! one batch (HF's convention for generation), decoded in lockstep.
//!
//! Sample `n` of a batch of `T` tokens starts after `T - T_n` padding
//! slots; its tokens keep their own rotary positions, and
//! [`Positions::LeftPadded`] tells the host's attention to hide the
//! padding from every query, in the prefill and in every decoding step (the
//! padding stays at the front of the shared KV cache). So each sample sees
//! exactly the keys it sees alone, and its answer equals its batch-1 answer
//! up to the order of float sums (the tests compare tokens exactly and
//! attention maps to 1e-5). A sample that has finished keeps being fed its
//! last token until the whole batch has finished; nothing of it is read.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use sdrpn_core::cache::KvCache;
use sdrpn_core::greedy::{self, checked_argmax};
use sdrpn_core::host::{AnswerOptions, HostPrompt, RpnHost};
use sdrpn_core::{CoreError, Positions};

/// One sequence to put in a batch.
#[derive(Debug, Clone)]
pub struct Sequence<B: Backend> {
    /// Its embeddings, `[1, T_n, D]`.
    pub embeds: Tensor<B, 3>,
    /// Rotary positions of its `T_n` tokens.
    pub positions: Positions,
    /// Where its generated tokens sit (see [`HostPrompt::decode_offset`]).
    pub decode_offset: i64,
}

impl<B: Backend> Sequence<B> {
    /// The sequence of a prepared prompt.
    pub fn of_prompt<P: HostPrompt<B>>(prompt: &P) -> Self {
        Self {
            embeds: prompt.embeds(),
            positions: prompt.positions(),
            decode_offset: prompt.decode_offset(),
        }
    }
}

/// Sequences left-padded to a common length.
#[derive(Debug, Clone)]
pub struct PaddedBatch<B: Backend> {
    /// `[N, T, D]`, padding (zeros) first.
    pub embeds: Tensor<B, 3>,
    /// [`Positions::LeftPadded`] of the `T` tokens.
    pub positions: Positions,
    /// Each sample's own length `T_n`.
    pub lens: Vec<usize>,
    /// Each sample's decode offset.
    pub decode_offsets: Vec<i64>,
}

impl<B: Backend> PaddedBatch<B> {
    /// Stacks `sequences` (at least one), each after enough zero padding to
    /// reach the longest.
    pub fn new(sequences: Vec<Sequence<B>>) -> Result<Self, CoreError> {
        let len = sequences.iter().map(|s| s.embeds.dims()[1]).max();
        Self::with_len(sequences, len.unwrap_or(0))
    }

    /// Stacks `sequences` (at least one), each after enough zero padding to
    /// reach `len` tokens (at least the longest's).
    pub fn with_len(sequences: Vec<Sequence<B>>, len: usize) -> Result<Self, CoreError> {
        let first = sequences
            .first()
            .ok_or_else(|| CoreError::config("batch", "holds no sequence"))?;
        let [_, _, d] = first.embeds.dims();
        let (device, dtype) = (first.embeds.device(), first.embeds.dtype());
        let lens: Vec<usize> = sequences.iter().map(|s| s.embeds.dims()[1]).collect();
        if let Some(&longest) = lens.iter().max().filter(|&&l| l > len) {
            return Err(CoreError::config(
                "batch",
                format!("a sequence of {longest} tokens does not fit in {len}"),
            ));
        }
        for (n, s) in sequences.iter().enumerate() {
            let [one, t, width] = s.embeds.dims();
            if one != 1 || width != d || s.positions.len() != t {
                return Err(CoreError::shape(
                    format!("sequence {n} of the batch"),
                    format!("[1, T, {d}] embeddings with T positions"),
                    format!("[{one}, {t}, {width}] with {} positions", s.positions.len()),
                ));
            }
        }
        let positions = Positions::left_padded(
            &sequences
                .iter()
                .map(|s| s.positions.clone())
                .collect::<Vec<_>>(),
            len,
        );
        let decode_offsets = sequences.iter().map(|s| s.decode_offset).collect();
        let rows = sequences
            .into_iter()
            .map(|s| {
                let pad = len - s.embeds.dims()[1];
                match pad {
                    0 => s.embeds,
                    _ => Tensor::cat(
                        vec![Tensor::zeros([1, pad, d], (&device, dtype)), s.embeds],
                        1,
                    ),
                }
            })
            .collect();
        Ok(Self {
            embeds: Tensor::cat(rows, 0),
            positions,
            lens,
            decode_offsets,
        })
    }

    /// The batch of prepared prompts.
    pub fn of_prompts<P: HostPrompt<B>>(prompts: &[&P]) -> Result<Self, CoreError> {
        Self::new(prompts.iter().map(|p| Sequence::of_prompt(*p)).collect())
    }

    /// Padding slots before each sample.
    pub fn pads(&self) -> &[usize] {
        self.positions.left_pads().unwrap_or(&[])
    }

    /// Number of samples.
    pub fn samples(&self) -> usize {
        self.lens.len()
    }

    /// Tokens per sample after padding, `T`.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether the batch has no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `n`'s rows of batched states, its padding cut.
    ///
    /// # Shapes
    /// - `h`: `[N, T, D]` -> `[1, T_n, D]`
    pub fn sample_rows(&self, h: &Tensor<B, 3>, n: usize) -> Tensor<B, 3> {
        let [_, t, d] = h.dims();
        h.clone().slice([n..n + 1, self.pads()[n]..t, 0..d])
    }
}

/// What a batched generation produced, per sample.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchAnswers {
    /// Generated tokens (a final end-of-sequence token included).
    pub tokens: Vec<Vec<u32>>,
    /// Logits of each sample's first answer token.
    pub first_logits: Vec<Vec<f32>>,
}

/// Attention rows of one fed-back token of one sample, one `[1, H, 1, S_n]`
/// tensor per kept layer (keys of the sample's own sequence, padding cut).
pub type StepRows<'a, B> = &'a [Tensor<B, 4>];

/// Greedy answers of a padded batch (prefill over every layer, then
/// lockstep decoding). `on_step(n, j, rows)` receives sample `n`'s
/// attention rows of the layers in `keep` as its `j`-th generated token is
/// fed back (the last generated token is never fed back, as at batch 1).
pub fn generate_batch<B: Backend, H: RpnHost<B>>(
    host: &H,
    batch: &PaddedBatch<B>,
    options: &AnswerOptions,
    keep: &[usize],
    on_step: impl FnMut(usize, usize, StepRows<'_, B>) -> Result<(), H::Error>,
) -> Result<BatchAnswers, H::Error> {
    let layers = host.num_layers();
    check_answer_budget(host, &batch.lens, options)?;
    let mut cache = KvCache::new(layers);
    let h = host.run_layers(
        batch.embeds.clone(),
        0,
        &batch.positions,
        0..layers,
        Some(&mut cache),
    );
    let first_logits = host.batch_last_logits(h)?;
    decode_batch(
        host,
        first_logits,
        &mut cache,
        batch,
        options,
        keep,
        on_step,
    )
}

/// Lockstep greedy decoding of a padded batch after its prefill:
/// `first_logits` are each sample's last prompt logits and `cache` holds
/// every position of `batch` (see [`generate_batch`] for `keep` and
/// `on_step`).
pub fn decode_batch<B: Backend, H: RpnHost<B>>(
    host: &H,
    first_logits: Vec<Vec<f32>>,
    cache: &mut KvCache<B>,
    batch: &PaddedBatch<B>,
    options: &AnswerOptions,
    keep: &[usize],
    mut on_step: impl FnMut(usize, usize, StepRows<'_, B>) -> Result<(), H::Error>,
) -> Result<BatchAnswers, H::Error> {
    let layers = host.num_layers();
    check_answer_budget(host, &batch.lens, options)?;
    let mut tokens = first_logits
        .iter()
        .map(|l| checked_argmax(l, 0).map(|t| vec![t]))
        .collect::<Result<Vec<_>, _>>()?;
    let pads = batch.pads().to_vec();
    loop {
        let active: Vec<usize> = (0..tokens.len())
            .filter(|&n| !host.answer_done(&tokens[n], options))
            .collect();
        if active.is_empty() {
            break;
        }
        let at = cache.len();
        let last: Vec<u32> = tokens.iter().map(|t| *t.last().expect("a token")).collect();
        let axes = (0..tokens.len())
            .map(|n| vec![vec![(at - pads[n]) as i64 + batch.decode_offsets[n]]])
            .collect();
        let positions = Positions::LeftPadded {
            pads: pads.clone(),
            axes,
        };
        let (h, rows) = host.run_layers_keeping(
            host.embed_tokens(&last),
            at,
            &positions,
            0..layers,
            Some(cache),
            keep,
        );
        let logits = host.batch_last_logits(h)?;
        for n in active {
            if !keep.is_empty() {
                let own: Vec<Tensor<B, 4>> = rows
                    .iter()
                    .map(|r| {
                        let [_, heads, q, s] = r.dims();
                        r.clone().slice([n..n + 1, 0..heads, 0..q, pads[n]..s])
                    })
                    .collect();
                on_step(n, tokens[n].len() - 1, &own)?;
            }
            let step = tokens[n].len();
            tokens[n].push(checked_argmax(&logits[n], step)?);
        }
    }
    Ok(BatchAnswers {
        tokens,
        first_logits,
    })
}

/// Refuses a token limit of 0, or one that would take a sample of `lens`
/// past the model's context.
fn check_answer_budget<B: Backend, H: RpnHost<B>>(
    host: &H,
    lens: &[usize],
    options: &AnswerOptions,
) -> Result<(), H::Error> {
    for &len in lens {
        greedy::check_answer_budget(len, options.max_new_tokens, host.context_len())?;
    }
    Ok(())
}
