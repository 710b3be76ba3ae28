//! The contract between the method and a host MLLM.
//!
//! A host (LLaVA-1.5 today; Qwen2.5-VL or DeepSeek-VL tomorrow) exposes its
//! decoder layers, the frozen prefix up to the branch point, attention rows
//! during generation, and where its visual tokens sit. The method needs
//! nothing else.

use crate::attention::AttentionAccumulator;
use crate::error::CoreError;
use crate::grid::Grid;
use crate::rpn::Rpn;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use std::ops::Range;

/// Hidden states after the frozen prefix, and where the tokens of interest are.
#[derive(Debug, Clone)]
pub struct PrefixStates<B: Backend> {
    /// Output of base layer K-1. `[1, T, D]`
    pub hidden: Tensor<B, 3>,
    /// Position of the query token (the last prompt token).
    pub query: usize,
    /// Positions of the visual tokens, `grid.len()` of them, row-major.
    pub visual: Range<usize>,
}

/// A greedy answer produced while attention maps were accumulated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TappedAnswer {
    /// Generated token ids (the final EOS included when one was produced).
    pub tokens: Vec<u32>,
    /// How many generated tokens were fed back, i.e. contributed attention rows.
    pub fed_back: usize,
}

/// What a host model must provide for SD-RPN.
pub trait RpnHost<B: Backend> {
    /// The host's decoder layer, reused as twig layers.
    type Layer: crate::rpn::TwigLayer<B>;
    /// The host's normalisation layer.
    type Norm: crate::rpn::TwigNorm<B>;
    /// A prepared prompt: tokens plus image features, ready for a forward pass.
    type Prompt;
    /// The host's error type; method errors convert into it.
    type Error: std::error::Error + From<CoreError>;

    /// Number of decoder layers of the language model.
    fn num_layers(&self) -> usize;
    /// Number of attention heads per layer.
    fn num_heads(&self) -> usize;
    /// The visual-token grid of one image.
    fn grid(&self) -> Grid;

    /// An RPN whose whole twig layers copy base layers `branch..branch+twig-1`,
    /// whose twig norm copies the final norm, and whose head copies the
    /// input norm and q/k projections of base layer `branch+twig-1`.
    fn init_rpn(
        &self,
        branch: usize,
        twig: usize,
    ) -> Result<Rpn<B, Self::Layer, Self::Norm>, Self::Error>;

    /// Runs base layers `0..branch` over the prompt.
    fn frozen_prefix(
        &self,
        prompt: &Self::Prompt,
        branch: usize,
    ) -> Result<PrefixStates<B>, Self::Error>;

    /// Greedy generation (at most `max_new_tokens`) that feeds the
    /// post-softmax attention rows of every fed-back generated token to each
    /// accumulator (rows `[1, heads, keys]` of the layers it asks for).
    fn generate_with_maps(
        &self,
        prompt: &Self::Prompt,
        maps: &mut [AttentionAccumulator<B>],
        max_new_tokens: usize,
    ) -> Result<TappedAnswer, Self::Error>;
}
