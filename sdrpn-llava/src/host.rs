//! LLaVA-1.5 as an SD-RPN host ([`sdrpn_core::host::RpnHost`]): 1-D
//! positions, one fixed square grid, the RoI crop resized to the tower's
//! input and its tokens put right after the image's.

use crate::cache::KvCache;
use crate::error::{LlavaError, Result};
use crate::llama::LlamaDecoderLayer;
use crate::nn::RmsNorm;
use crate::preprocess::{clip_preprocess, crop_and_resize};
use crate::session::{AnswerOptions, LlavaSession, Prepared};
use crate::taps::{Captured, Taps};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use image::RgbImage;
use sdrpn_core::attention::AttentionAccumulator;
use sdrpn_core::components::TokenBox;
use sdrpn_core::crop::{token_box_to_pixels, PixelBox};
use sdrpn_core::host::{HostPrompt, RoiInsert, RpnHost, TappedAnswer};
use sdrpn_core::rpn::{check_branch, Rpn, RpnHead};
use sdrpn_core::{Grid, Positions};
use std::ops::Range;

/// The RPN of a host with a LLaMA-family decoder (LLaVA's Vicuna,
/// Qwen2.5-VL's Qwen2): its twig layers are [`LlamaDecoderLayer`]s.
pub type LlamaRpn<B> = Rpn<B, LlamaDecoderLayer<B>, RmsNorm<B>>;

/// The RPN of a LLaVA host.
pub type LlavaRpn<B> = LlamaRpn<B>;

/// Feeds the rows of `captured` (one decode step, `[1, H, 1, S]` per layer)
/// to every accumulator that wants them.
pub fn feed_maps<B: Backend>(
    maps: &mut [AttentionAccumulator<B>],
    captured: &Captured<B>,
) -> Result<()> {
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

/// The attention taps every accumulator asks for.
pub fn taps_of_maps<B: Backend>(maps: &[AttentionAccumulator<B>]) -> Taps {
    let layers: std::collections::BTreeSet<usize> = maps
        .iter()
        .flat_map(|m| m.layers().collect::<Vec<_>>())
        .collect();
    Taps::attention_of(layers)
}

/// A host's greedy generation with per-step taps: `(options, cache, taps,
/// on_step)` -> the new tokens, `on_step(j, captured)` called as token j is
/// fed back.
pub type TappedGeneration<'a, B, E> = &'a mut dyn FnMut(
    &AnswerOptions,
    &mut KvCache<B>,
    &Taps,
    &mut dyn FnMut(usize, Captured<B>) -> std::result::Result<(), E>,
) -> std::result::Result<Vec<u32>, E>;

/// [`RpnHost::generate_with_maps`] for a host whose greedy generation is
/// `generate` (on a fresh cache of `layers` layers, no stop strings):
/// every fed-back token's attention rows go to the maps that want them.
pub fn generate_into_maps<B: Backend, E: From<LlavaError>>(
    maps: &mut [AttentionAccumulator<B>],
    max_new_tokens: usize,
    layers: usize,
    generate: TappedGeneration<'_, B, E>,
) -> std::result::Result<TappedAnswer, E> {
    let taps = taps_of_maps(maps);
    let mut cache = KvCache::new(layers);
    let options = AnswerOptions {
        max_new_tokens,
        stop_strings: Vec::new(),
    };
    let mut fed_back = 0;
    let tokens = generate(&options, &mut cache, &taps, &mut |_, captured| {
        fed_back += 1;
        Ok(feed_maps(maps, &captured)?)
    })?;
    Ok(TappedAnswer { tokens, fed_back })
}

impl<B: Backend> HostPrompt<B> for Prepared<B> {
    fn embeds(&self) -> Tensor<B, 3> {
        self.embeds.clone()
    }

    fn positions(&self) -> Positions {
        Positions::prefix(self.ids.len())
    }

    fn decode_offset(&self) -> i64 {
        0
    }

    fn visual(&self) -> Range<usize> {
        self.visual.clone()
    }

    fn grid(&self) -> Grid {
        self.grid
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn text(&self) -> String {
        self.prompt.clone()
    }
}

impl<B: Backend> LlavaSession<B> {
    /// The visual grid of every LLaVA prompt (the tower's fixed input).
    pub fn grid(&self) -> Grid {
        let side = self.model.config().vision.grid_side();
        Grid {
            rows: side,
            cols: side,
        }
    }

    /// Encodes the RoI crop: the source rectangle resized to the tower's
    /// input (Pillow bilinear), CLIP-normalised, encoded and projected;
    /// only the tokens under `keep` (raster order) when given.
    ///
    /// # Shapes
    /// - returns `[1, P', D]`
    pub fn roi_tokens(
        &self,
        image: &RgbImage,
        region: PixelBox,
        keep: Option<&[bool]>,
    ) -> Result<Tensor<B, 3>> {
        let s = self.model.config().vision.image_size;
        let crop = crop_and_resize(image, region, s as u32, s as u32)?;
        let pixels = Tensor::from_data(
            TensorData::new(clip_preprocess(&crop, s as u32), [1, 3, s, s]),
            &self.device(),
        );
        let projected = self.model.image_features(pixels)?.projected;
        let Some(keep) = keep else {
            return Ok(projected);
        };
        let idx: Vec<i64> = keep
            .iter()
            .enumerate()
            .filter(|(_, &k)| k)
            .map(|(i, _)| i as i64)
            .collect();
        if idx.is_empty() {
            return Err(LlavaError::invalid("RoI mask", "keeps no token"));
        }
        let n = idx.len();
        Ok(projected.select(
            1,
            Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [n]), &self.device()),
        ))
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

    fn on_device(&self, device: &B::Device) -> Self {
        use burn::module::Module;
        LlavaSession {
            model: self.model.clone().to_device(device),
            tokenizer: self.tokenizer.clone(),
            options: self.options,
            fingerprint: self.fingerprint.clone(),
        }
    }

    fn device(&self) -> B::Device {
        self.model.language.device()
    }

    fn fingerprint(&self) -> &sdrpn_core::host::ModelFingerprint {
        &self.fingerprint
    }

    fn label_grid(&self) -> Result<Grid> {
        Ok(self.grid())
    }

    fn prepare(&self, image: &RgbImage, question: &str) -> Result<Prepared<B>> {
        LlavaSession::prepare(self, image, question)
    }

    fn init_rpn(&self, branch: usize, twig: usize) -> Result<LlavaRpn<B>> {
        check_branch(branch, twig, self.num_layers())?;
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
                num_kv_heads: self.model.config().text.num_kv_heads,
                head_dim,
                rotary: None,
            },
        })
    }

    fn run_layers(
        &self,
        h: Tensor<B, 3>,
        start: usize,
        positions: &Positions,
        layers: Range<usize>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        self.model
            .language
            .run_untapped(h, start, positions, layers, cache)
    }

    fn run_layers_keeping(
        &self,
        h: Tensor<B, 3>,
        start: usize,
        positions: &Positions,
        layers: Range<usize>,
        cache: Option<&mut KvCache<B>>,
        keep: &[usize],
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 4>>) {
        self.model
            .language
            .run_keeping(h, start, positions, layers, cache, keep)
    }

    fn attention_gradient(
        &self,
        h: Tensor<B, 3>,
        positions: &Positions,
        layer: usize,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>)> {
        Ok(self
            .model
            .language
            .attention_gradient(h, positions, layer)?)
    }

    fn embed_tokens(&self, ids: &[u32]) -> Tensor<B, 3> {
        self.model.language.embed_each(ids)
    }

    fn answer_done(&self, tokens: &[u32], options: &AnswerOptions) -> bool {
        self.with_stop_rule(options, |rule| rule.done(tokens))
    }

    fn context_len(&self) -> usize {
        self.model.config().text.max_position_embeddings
    }

    fn last_logits(&self, h: Tensor<B, 3>) -> Result<Vec<f32>> {
        self.model.last_logits(self.model.language.final_norm(h))
    }

    fn decode(
        &self,
        first_logits: &[f32],
        cache: &mut KvCache<B>,
        decode_offset: i64,
        options: &AnswerOptions,
    ) -> Result<Vec<u32>> {
        if decode_offset != 0 {
            return Err(LlavaError::invalid(
                "decode offset",
                "LLaVA's positions are the cache indices (offset 0)",
            ));
        }
        self.with_stop_rule(options, |rule| {
            self.model
                .decode(first_logits, cache, rule, &Taps::none(), |_, _| Ok(()))
        })
    }

    fn answer_text(&self, tokens: &[u32], options: &AnswerOptions) -> Result<String> {
        LlavaSession::answer_text(self, tokens, options)
    }

    fn token_box_pixels(
        &self,
        prompt: &Prepared<B>,
        token_box: TokenBox,
        width: u32,
        height: u32,
    ) -> Result<Option<PixelBox>> {
        let patch = self.model.config().vision.patch_size;
        Ok(token_box_to_pixels(
            token_box,
            HostPrompt::grid(prompt),
            patch,
            width,
            height,
        )?)
    }

    fn crop_grid(&self, _region: PixelBox) -> Result<Grid> {
        Ok(self.grid())
    }

    fn roi_insert(
        &self,
        prompt: &Prepared<B>,
        image: &RgbImage,
        region: PixelBox,
        keep: Option<&[bool]>,
    ) -> Result<RoiInsert<B>> {
        let embeds = self.roi_tokens(image, region, keep)?;
        let count = embeds.dims()[1];
        Ok(RoiInsert {
            embeds,
            at: prompt.visual.end,
            positions: Positions::prefix(prompt.ids.len() + count),
            decode_offset: 0,
            roi_tokens: count,
        })
    }

    fn generate_with_maps(
        &self,
        prompt: &Prepared<B>,
        maps: &mut [AttentionAccumulator<B>],
        max_new_tokens: usize,
    ) -> Result<TappedAnswer> {
        generate_into_maps(
            maps,
            max_new_tokens,
            self.num_layers(),
            &mut |options, cache, taps, on_step| {
                self.answer_tokens(prompt.embeds.clone(), cache, options, taps, on_step)
            },
        )
    }
}
