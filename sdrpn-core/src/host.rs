//! The contract between the method and a host MLLM.
//!
//! A host (LLaVA-1.5, Qwen2.5-VL) prepares prompts (where the visual
//! tokens sit, on what grid, at what rotary positions), runs its decoder
//! layers over any range with a KV cache, decodes greedily, exposes
//! attention rows during generation, and says how a crop of the image
//! becomes tokens for the second pass and where they go. Labelling,
//! training and two-pass inference are written once over this trait.

use crate::attention::AttentionAccumulator;
use crate::cache::KvCache;
use crate::components::TokenBox;
use crate::crop::PixelBox;
use crate::error::CoreError;
use crate::grid::Grid;
use crate::positions::Positions;
use crate::rpn::Rpn;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// What a checkpoint folder is: recorded by every output made with it, so
/// outputs of different models are never mixed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFingerprint {
    /// Hash of `config.json`.
    pub config: String,
    /// Hash of the safetensors headers and sampled data.
    pub weights: String,
    /// The visual token grid, `rows x cols`.
    pub grid: String,
}

impl ModelFingerprint {
    /// What differs from `other`, in words (empty when equal).
    pub fn differences(&self, other: &ModelFingerprint) -> Vec<String> {
        let mut out = Vec::new();
        if self.grid != other.grid {
            out.push(format!("visual grid {} vs {}", self.grid, other.grid));
        }
        if self.config != other.config {
            out.push("config.json differs".into());
        }
        if self.weights != other.weights {
            out.push("the weights differ".into());
        }
        out
    }
}

/// Hidden states after the frozen prefix, and where the tokens of interest are.
#[derive(Debug, Clone)]
pub struct PrefixStates<B: Backend> {
    /// Output of base layer K-1. `[1, T, D]`
    pub hidden: Tensor<B, 3>,
    /// Rotary positions of the `T` tokens.
    pub positions: Positions,
    /// Position of the query token (the last prompt token).
    pub query: usize,
    /// Positions of the visual tokens, `grid.len()` of them, row-major.
    pub visual: Range<usize>,
    /// The visual grid of this prompt's image.
    pub grid: Grid,
}

/// A greedy answer produced while attention maps were accumulated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TappedAnswer {
    /// Generated token ids (the final EOS included when one was produced).
    pub tokens: Vec<u32>,
    /// How many generated tokens were fed back, i.e. contributed attention rows.
    pub fed_back: usize,
}

/// Generation settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerOptions {
    /// Most new tokens.
    pub max_new_tokens: usize,
    /// Strings that end the answer (cut from it).
    pub stop_strings: Vec<String>,
}

impl AnswerOptions {
    /// The answer in decoded `text`: cut at the first of the stop strings
    /// (each in turn), stripped.
    pub fn answer_in(&self, mut text: String) -> String {
        for s in &self.stop_strings {
            if let Some(at) = text.find(s.as_str()) {
                text.truncate(at);
            }
        }
        text.trim().to_string()
    }
}

impl Default for AnswerOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            stop_strings: Vec::new(),
        }
    }
}

/// What the method reads of a prepared prompt.
pub trait HostPrompt<B: Backend> {
    /// Prompt embeddings with the image merged, `[1, T, D]`.
    fn embeds(&self) -> Tensor<B, 3>;
    /// Rotary positions of the `T` prompt tokens.
    fn positions(&self) -> Positions;
    /// Where generated tokens sit: the token at cache index `t >= T` is at
    /// rotary position `t + decode_offset` (0 for 1-D RoPE).
    fn decode_offset(&self) -> i64;
    /// Positions of the visual tokens (row-major over [`HostPrompt::grid`]).
    fn visual(&self) -> Range<usize>;
    /// The visual grid of this prompt's image.
    fn grid(&self) -> Grid;
    /// Number of prompt tokens `T`.
    fn len(&self) -> usize;
    /// Whether the prompt has no tokens (never, for a prepared prompt).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The query token: the last prompt token.
    fn query(&self) -> usize {
        self.len() - 1
    }
    /// The prompt text as the model saw it (image placeholders unexpanded).
    fn text(&self) -> String;
}

/// The second pass's extra tokens and where they go.
#[derive(Debug, Clone)]
pub struct RoiInsert<B: Backend> {
    /// Embeddings inserted before prompt token `at`, `[1, R, D]`: the kept
    /// crop tokens and any markers the host wraps an image in.
    pub embeds: Tensor<B, 3>,
    /// Where they go (the prompt's tokens `0..at` come first).
    pub at: usize,
    /// Rotary positions of the whole pass-2 sequence (`T + R` tokens);
    /// they must equal the prompt's for tokens `0..at` (the prefix cache of
    /// pass 1 is reused there).
    pub positions: Positions,
    /// Where pass 2's generated tokens sit (see [`HostPrompt::decode_offset`]).
    pub decode_offset: i64,
    /// How many of the inserted embeddings are crop tokens.
    pub roi_tokens: usize,
}

/// What a host model must provide for SD-RPN.
pub trait RpnHost<B: Backend> {
    /// The host's decoder layer, reused as twig layers.
    type Layer: crate::rpn::TwigLayer<B>;
    /// The host's normalisation layer.
    type Norm: crate::rpn::TwigNorm<B>;
    /// A prepared prompt: tokens plus image features, ready for a forward pass.
    type Prompt: HostPrompt<B>;
    /// The host's error type; method errors convert into it.
    type Error: std::error::Error + From<CoreError> + Send + Sync + 'static;

    /// Number of decoder layers of the language model.
    fn num_layers(&self) -> usize;
    /// Number of attention heads per layer.
    fn num_heads(&self) -> usize;
    /// The device the model lives on.
    fn device(&self) -> B::Device;
    /// A copy of this host with its weights on `device`: one per device in
    /// data-parallel training.
    fn on_device(&self, device: &B::Device) -> Self
    where
        Self: Sized;
    /// What the checkpoint is.
    fn fingerprint(&self) -> &ModelFingerprint;
    /// The grid every labelled prompt is made on (labels of one folder
    /// share it); an error when the host's prompts have no fixed grid in
    /// its current settings.
    fn label_grid(&self) -> Result<Grid, Self::Error>;

    /// Preprocesses `image`, builds the host's prompt for `question`, and
    /// embeds both.
    fn prepare(&self, image: &RgbImage, question: &str) -> Result<Self::Prompt, Self::Error>;

    /// An RPN whose whole twig layers copy base layers `branch..branch+twig-1`,
    /// whose twig norm copies the final norm (when the host's head uses
    /// one), and whose head copies the input norm and q/k projections of
    /// base layer `branch+twig-1`.
    fn init_rpn(
        &self,
        branch: usize,
        twig: usize,
    ) -> Result<Rpn<B, Self::Layer, Self::Norm>, Self::Error>;

    /// Runs decoder layers `layers` over `h`, whose tokens sit at rotary
    /// `positions` after `start` cached ones, extending `cache` when given.
    ///
    /// # Shapes
    /// - `h`: `[1, T, D]` -> `[1, T, D]`
    fn run_layers(
        &self,
        h: Tensor<B, 3>,
        start: usize,
        positions: &Positions,
        layers: Range<usize>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3>;

    /// [`RpnHost::run_layers`] that also returns the post-softmax attention
    /// of the layers in `keep` (in that order), for batched generation with
    /// attention taps.
    ///
    /// # Shapes
    /// - `h`: `[N, T, D]` -> (`[N, T, D]`, `[N, H, T, S]` per kept layer)
    fn run_layers_keeping(
        &self,
        h: Tensor<B, 3>,
        start: usize,
        positions: &Positions,
        layers: Range<usize>,
        cache: Option<&mut KvCache<B>>,
        keep: &[usize],
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 4>>);

    /// The post-softmax attention `A` of decoder layer `layer` over a
    /// prompt whose input to that layer is `h` (at rotary `positions`, no
    /// cache), and the gradient `dA` of the log-probability of the greedy
    /// next token at the last position with respect to it: ViCrop's
    /// grad-att ingredients, by autodiff through the frozen layers
    /// `layer..L` and the head (no parameter gradients).
    ///
    /// # Shapes
    /// - `h`: `[1, T, D]` -> (`A`, `dA`), both `[1, H, T, T]`
    fn attention_gradient(
        &self,
        h: Tensor<B, 3>,
        positions: &Positions,
        layer: usize,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>), Self::Error>;

    /// Embeddings of one token per sample.
    ///
    /// # Shapes
    /// - returns `[N, 1, D]`, `N = ids.len()`
    fn embed_tokens(&self, ids: &[u32]) -> Tensor<B, 3>;

    /// Whether an answer of `tokens` (at least one) is complete under
    /// `options`: the token limit reached, an end-of-sequence token
    /// produced, or a stop string in its text (the host's
    /// [`RpnHost::decode`] stops at the same point).
    fn answer_done(&self, tokens: &[u32], options: &AnswerOptions) -> bool;

    /// The longest sequence (prompt and answer) the model takes.
    fn context_len(&self) -> usize;

    /// Logits of the last position of the last decoder layer's output `h`
    /// (`[1, T, D]`): final norm and head, on the host.
    fn last_logits(&self, h: Tensor<B, 3>) -> Result<Vec<f32>, Self::Error>;

    /// [`RpnHost::last_logits`] of every sample of `h` (`[N, T, D]`).
    fn batch_last_logits(&self, h: Tensor<B, 3>) -> Result<Vec<Vec<f32>>, Self::Error> {
        let [n, t, d] = h.dims();
        (0..n)
            .map(|i| self.last_logits(h.clone().slice([i..i + 1, t - 1..t, 0..d])))
            .collect()
    }

    /// Greedy decoding after a prefill: `first_logits` are the last prompt
    /// position's logits, `cache` holds every prompt position, generated
    /// tokens sit at `cache index + decode_offset`.
    fn decode(
        &self,
        first_logits: &[f32],
        cache: &mut KvCache<B>,
        decode_offset: i64,
        options: &AnswerOptions,
    ) -> Result<Vec<u32>, Self::Error>;

    /// The answer text of generated tokens (special tokens skipped, cut at
    /// the first stop string, stripped).
    fn answer_text(&self, tokens: &[u32], options: &AnswerOptions) -> Result<String, Self::Error>;

    /// The rectangle of the `width x height` source image under
    /// `token_box` of the prompt's grid; `None` when the box lies entirely
    /// in padding the host added.
    fn token_box_pixels(
        &self,
        prompt: &Self::Prompt,
        token_box: TokenBox,
        width: u32,
        height: u32,
    ) -> Result<Option<PixelBox>, Self::Error>;

    /// The visual grid a crop of `region` is encoded on.
    fn crop_grid(&self, region: PixelBox) -> Result<Grid, Self::Error>;

    /// Encodes the crop of `region` from `image` (only the tokens of its
    /// grid under `keep`, raster order, when given) and says where pass 2
    /// puts it.
    fn roi_insert(
        &self,
        prompt: &Self::Prompt,
        image: &RgbImage,
        region: PixelBox,
        keep: Option<&[bool]>,
    ) -> Result<RoiInsert<B>, Self::Error>;

    /// Greedy generation (at most `max_new_tokens`) that feeds the
    /// post-softmax attention rows of every fed-back generated token to each
    /// accumulator (rows `[1, heads, keys]` of the layers it asks for).
    fn generate_with_maps(
        &self,
        prompt: &Self::Prompt,
        maps: &mut [AttentionAccumulator<B>],
        max_new_tokens: usize,
    ) -> Result<TappedAnswer, Self::Error>;

    /// Runs base layers `0..branch` over the prompt.
    fn frozen_prefix(
        &self,
        prompt: &Self::Prompt,
        branch: usize,
    ) -> Result<PrefixStates<B>, Self::Error> {
        crate::rpn::check_branch(branch, 1, self.num_layers())?;
        let positions = prompt.positions();
        let hidden = self.run_layers(prompt.embeds(), 0, &positions, 0..branch, None);
        Ok(PrefixStates {
            hidden,
            positions,
            query: prompt.query(),
            visual: prompt.visual(),
            grid: prompt.grid(),
        })
    }

    /// Hidden states of the prompt at the visual tokens, for the
    /// massive-activation sink rule: HF hidden state `index` (0 =
    /// embeddings, i = output of decoder layer i-1), `index < L`.
    ///
    /// # Shapes
    /// - returns `[1, P, D]`
    fn visual_hidden_state(
        &self,
        prompt: &Self::Prompt,
        index: usize,
    ) -> Result<Tensor<B, 3>, Self::Error> {
        let layers = self.num_layers();
        if index >= layers {
            return Err(CoreError::config(
                "hidden state index",
                format!("{index} must be below the model's {layers} layers"),
            )
            .into());
        }
        let h = self.run_layers(prompt.embeds(), 0, &prompt.positions(), 0..index, None);
        let [n, _, d] = h.dims();
        Ok(h.slice([0..n, prompt.visual(), 0..d]))
    }
}
