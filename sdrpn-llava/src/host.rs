//! LLaVA-1.5 as an SD-RPN host ([`sdrpn_core::host::RpnHost`]).

use crate::cache::KvCache;
use crate::error::{LlavaError, Result};
use crate::llama::LlamaDecoderLayer;
use crate::nn::RmsNorm;
use crate::session::{AnswerOptions, LlavaSession, Prepared};
use crate::taps::{Captured, Taps};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use sdrpn_core::attention::AttentionAccumulator;
use sdrpn_core::host::{PrefixStates, RpnHost, TappedAnswer};
use sdrpn_core::rpn::{check_branch, Rpn, RpnHead};
use sdrpn_core::Grid;

/// The RPN of a LLaVA host.
pub type LlavaRpn<B> = Rpn<B, LlamaDecoderLayer<B>, RmsNorm<B>>;

impl<B: Backend> LlavaSession<B> {
    /// Feeds the rows of `captured` (one decode step, `[1, H, 1, S]` per
    /// layer) to every accumulator that wants them.
    fn feed(maps: &mut [AttentionAccumulator<B>], captured: &Captured<B>) -> Result<()> {
        for acc in maps.iter_mut() {
            let wanted: Vec<usize> = acc.layers().collect();
            for layer in wanted {
                let rows = captured.attention.get(&layer).ok_or_else(|| {
                    LlavaError::invalid("attention taps", format!("layer {layer} was not captured"))
                })?;
                let [n, h, q, s] = rows.dims();
                acc.add(layer, rows.clone().reshape([n * q, h, s]))?;
            }
        }
        Ok(())
    }
}

impl<B: Backend> RpnHost<B> for LlavaSession<B> {
    type Layer = LlamaDecoderLayer<B>;
    type Norm = RmsNorm<B>;
    type Prompt = Prepared<B>;
    type Error = LlavaError;

    fn num_layers(&self) -> usize {
        self.model.config().text.num_layers
    }

    fn num_heads(&self) -> usize {
        self.model.config().text.num_heads
    }

    fn grid(&self) -> Grid {
        let side = self.model.config().vision.grid_side();
        Grid {
            rows: side,
            cols: side,
        }
    }

    fn init_rpn(&self, branch: usize, twig: usize) -> Result<LlavaRpn<B>> {
        check_branch(branch, twig, self.num_layers())?;
        let text = &self.model.config().text;
        if text.num_kv_heads != text.num_heads {
            return Err(LlavaError::invalid(
                "RPN head",
                "grouped-query attention (fewer key/value heads than query heads) is not supported",
            ));
        }
        let layers = &self.model.language.layers;
        let last = &layers[branch + twig - 1];
        let (num_heads, head_dim) = last.self_attn.heads();
        Ok(Rpn {
            twig_layers: layers[branch..branch + twig - 1].to_vec(),
            twig_norm: Some(self.model.language.norm.clone()),
            head_norm: last.input_layernorm.clone(),
            head: RpnHead {
                q_proj: last.self_attn.q_proj().clone(),
                k_proj: last.self_attn.k_proj.clone(),
                num_heads,
                num_kv_heads: num_heads,
                head_dim,
                rotary: None,
            },
        })
    }

    fn frozen_prefix(&self, prompt: &Prepared<B>, branch: usize) -> Result<PrefixStates<B>> {
        check_branch(branch, 1, self.num_layers())?;
        let mut captured = Captured::default();
        let hidden = self.model.language.run_layers(
            prompt.embeds.clone(),
            0,
            0..branch,
            None,
            &Taps::none(),
            &mut captured,
        );
        Ok(PrefixStates {
            hidden,
            query: prompt.query(),
            visual: prompt.visual.clone(),
        })
    }

    fn generate_with_maps(
        &self,
        prompt: &Prepared<B>,
        maps: &mut [AttentionAccumulator<B>],
        max_new_tokens: usize,
    ) -> Result<TappedAnswer> {
        let layers: std::collections::BTreeSet<usize> = maps
            .iter()
            .flat_map(|m| m.layers().collect::<Vec<_>>())
            .collect();
        let taps = Taps::attention_of(layers);
        let mut cache = KvCache::new(self.num_layers());
        let options = AnswerOptions {
            max_new_tokens,
            stop_strings: Vec::new(),
        };
        let mut fed_back = 0;
        let tokens = self.answer_tokens(
            prompt.embeds.clone(),
            &mut cache,
            &options,
            &taps,
            |_, captured| {
                fed_back += 1;
                Self::feed(maps, &captured)
            },
        )?;
        Ok(TappedAnswer { tokens, fed_back })
    }
}

/// Hidden states of the prompt at the visual tokens, for the
/// massive-activation sink rule: HF hidden state `index` (0 = embeddings,
/// i = output of decoder layer i-1), `index < L`.
///
/// # Shapes
/// - returns `[1, P, D]`
pub fn visual_hidden_state<B: Backend>(
    session: &LlavaSession<B>,
    prompt: &Prepared<B>,
    index: usize,
) -> Result<Tensor<B, 3>> {
    let layers = session.model.language.num_layers();
    if index >= layers {
        return Err(LlavaError::invalid(
            "hidden state index",
            format!("{index} must be below the model's {layers} layers"),
        ));
    }
    let mut captured = Captured::default();
    let h = session.model.language.run_layers(
        prompt.embeds.clone(),
        0,
        0..index,
        None,
        &Taps::none(),
        &mut captured,
    );
    let [n, _, d] = h.dims();
    Ok(h.slice([0..n, prompt.visual.clone(), 0..d]))
}
