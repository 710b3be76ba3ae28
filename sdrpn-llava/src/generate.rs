//! Greedy generation with a KV cache, EOS and stop conditions, and
//! per-step attention taps.

use crate::cache::KvCache;
use crate::error::{LlavaError, Result};
use crate::model::Llava;
use crate::taps::{Captured, Taps};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// A test on the tokens generated so far: true stops generation.
pub type StopTest<'a> = &'a dyn Fn(&[u32]) -> bool;

/// When to stop generating.
pub struct StopRule<'a> {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Token ids that end the answer (kept in the output).
    pub eos: Vec<u32>,
    /// Extra test on the tokens so far (e.g. a decoded stop string).
    pub stop: Option<StopTest<'a>>,
}

impl StopRule<'_> {
    /// Whether an answer of `tokens` (at least one) is complete: the limit
    /// reached, an EOS produced, or the stop test true.
    pub fn done(&self, tokens: &[u32]) -> bool {
        tokens.len() >= self.max_new_tokens
            || tokens.last().is_some_and(|t| self.eos.contains(t))
            || self.stop.is_some_and(|stop| stop(tokens))
    }
}

/// A stop test that is true once the decoded tokens contain one of
/// `strings` (never when `strings` is empty or the tokens do not decode).
pub fn stop_on_strings<'a>(
    strings: &'a [String],
    decode: impl Fn(&[u32]) -> Option<String> + 'a,
) -> impl Fn(&[u32]) -> bool + 'a {
    move |tokens| {
        !strings.is_empty()
            && decode(tokens).is_some_and(|text| strings.iter().any(|s| text.contains(s.as_str())))
    }
}

/// What a generation produced.
#[derive(Debug, Clone)]
pub struct Generation<B: Backend> {
    /// The new tokens (a final EOS included).
    pub tokens: Vec<u32>,
    /// What the prefill pass captured.
    pub prefill: Captured<B>,
    /// Logits of the prefill's last position, `[V]`.
    pub first_logits: Vec<f32>,
}

pub use sdrpn_core::greedy::{argmax, check_answer_budget, checked_argmax};

impl<B: Backend> Llava<B> {
    /// Logits of the last position of `hidden` (`[1, T, D]`), on the host.
    pub fn last_logits(&self, hidden: Tensor<B, 3>) -> Result<Vec<f32>> {
        Ok(self.language.last_logits(hidden)?)
    }

    /// Greedy decoding from prompt embeddings `[1, T, D]`.
    ///
    /// `prefill_taps` are captured during the prompt pass; `step_taps`
    /// during each decode step, and `on_step(j, captured)` receives them
    /// for the j-th generated token as it is fed back (so the rows belong
    /// to query position `T + j`). The last generated token is never fed
    /// back. `cache` receives the keys and values of everything processed.
    pub fn generate(
        &self,
        embeds: Tensor<B, 3>,
        cache: &mut KvCache<B>,
        rule: &StopRule,
        prefill_taps: &Taps,
        step_taps: &Taps,
        on_step: impl FnMut(usize, Captured<B>) -> Result<()>,
    ) -> Result<Generation<B>> {
        let [n, _, _] = embeds.dims();
        if n != 1 {
            return Err(LlavaError::invalid(
                "generation batch",
                format!("only batch 1 is supported, got {n}"),
            ));
        }
        let start = cache.len();
        let out = self.forward(embeds, start, Some(cache), prefill_taps);
        let first_logits = self.last_logits(out.hidden)?;
        let tokens = self.decode(&first_logits, cache, rule, step_taps, on_step)?;
        Ok(Generation {
            tokens,
            prefill: out.captured,
            first_logits,
        })
    }

    /// Greedy decoding after a prefill: `first_logits` are the logits of the
    /// last prompt position and `cache` holds every prompt position of every
    /// layer. Returns the generated tokens.
    pub fn decode(
        &self,
        first_logits: &[f32],
        cache: &mut KvCache<B>,
        rule: &StopRule,
        step_taps: &Taps,
        on_step: impl FnMut(usize, Captured<B>) -> Result<()>,
    ) -> Result<Vec<u32>> {
        let context = self.config().text.max_position_embeddings;
        let device = self.language.device();
        greedy_decode(
            first_logits,
            cache,
            context,
            rule,
            on_step,
            |token, cache| {
                let position = cache.len();
                let ids = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(vec![token as i64], [1]),
                    &device,
                )
                .reshape([1, 1]);
                let step = self.forward(self.language.embed(ids), position, Some(cache), step_taps);
                Ok((self.last_logits(step.hidden)?, step.captured))
            },
        )
    }
}

/// The greedy loop shared by every host: from the prompt's last logits,
/// feeds each new token back through `step(token, cache)` (which runs the
/// model on it at the next position, extending `cache`, and returns its
/// logits and captures) until `rule` stops it. `on_step(j, captured)`
/// receives the captures of the j-th generated token as it is fed back; the
/// last generated token is never fed back. `context` is the model's longest
/// sequence.
pub fn greedy_decode<B: Backend, E>(
    first_logits: &[f32],
    cache: &mut KvCache<B>,
    context: usize,
    rule: &StopRule,
    mut on_step: impl FnMut(usize, Captured<B>) -> std::result::Result<(), E>,
    mut step: impl FnMut(u32, &mut KvCache<B>) -> std::result::Result<(Vec<f32>, Captured<B>), E>,
) -> std::result::Result<Vec<u32>, E>
where
    E: From<LlavaError>,
{
    check_answer_budget(cache.len(), rule.max_new_tokens, context).map_err(LlavaError::from)?;
    let greedy = |logits: &[f32], step| checked_argmax(logits, step).map_err(LlavaError::from);
    let mut tokens = vec![greedy(first_logits, 0)?];
    while !rule.done(&tokens) {
        let last = *tokens.last().expect("at least one token");
        let (logits, captured) = step(last, cache)?;
        on_step(tokens.len() - 1, captured)?;
        tokens.push(greedy(&logits, tokens.len())?);
    }
    Ok(tokens)
}
