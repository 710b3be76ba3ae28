//! Qwen2.5-VL as an SD-RPN host ([`sdrpn_core::host::RpnHost`]), as the
//! reference code runs it (YuHengsss/SD-RPN 00876ac,
//! `Qwen2.5-VL/qwen_src/`):
//! - the grid is the image's merged-token grid (any rows x cols);
//! - twig layers see the prompt's M-RoPE positions; the RPN head skips the
//!   twig norm, rotates q and k with M-RoPE at their tokens' positions and
//!   repeats the key heads (`modeling_qwen2_5_vl.py:2175-2224`);
//! - a token box maps to source pixels by `x * 28 * W / (cols * 28)`,
//!   truncated (`ana_utils.py:1103-1154`);
//! - the crop goes through the same processor (same `min_pixels` /
//!   `max_pixels`, its own grid), and pass 2 puts `<|vision_start|>`, the
//!   kept crop tokens and `<|vision_end|>` right after the image's tokens,
//!   with positions from `get_rope_index` on the two images, computed
//!   before dropping masked crop tokens (`mm_utils.py:1140-1199`,
//!   `modeling_qwen2_5_vl.py:1364-1384`).
//!
//! Pass 1's prefix (system prompt, image) keeps its positions in pass 2, so
//! its keys/values can be reused (the reference recomputes them:
//! `reuse_prefix_cache = false`).

use crate::error::{QwenError, Result};
use crate::rope_index::rope_index;
use crate::session::{QwenPrepared, QwenSession};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use image::RgbImage;
use sdrpn_core::attention::AttentionAccumulator;
use sdrpn_core::cache::KvCache;
use sdrpn_core::components::TokenBox;
use sdrpn_core::crop::PixelBox;
use sdrpn_core::host::{AnswerOptions, HostPrompt, RoiInsert, RpnHost, TappedAnswer};
use sdrpn_core::rpn::{check_branch, HeadRotary, Rpn, RpnHead};
use sdrpn_core::{Grid, Positions};
use sdrpn_llava::host::generate_into_maps;
use sdrpn_llava::llama::LlamaDecoderLayer;
use sdrpn_llava::nn::RmsNorm;
use sdrpn_llava::taps::Taps;
use std::ops::Range;

/// The RPN of a Qwen2.5-VL host.
pub type QwenRpn<B> = sdrpn_llava::host::LlamaRpn<B>;

impl<B: Backend> HostPrompt<B> for QwenPrepared<B> {
    fn embeds(&self) -> Tensor<B, 3> {
        self.embeds.clone()
    }

    fn positions(&self) -> Positions {
        self.positions.positions.clone()
    }

    fn decode_offset(&self) -> i64 {
        self.positions.delta
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

impl<B: Backend> QwenSession<B> {
    /// The merged-token grid a `width x height` image is encoded on.
    pub fn image_grid(&self, width: u32, height: u32) -> Result<Grid> {
        let (w, h) = self.processor.target_size(width, height)?;
        let f = self.processor.factor() as u32;
        Ok(Grid::new((h / f) as usize, (w / f) as usize)?)
    }
}

impl<B: Backend> RpnHost<B> for QwenSession<B> {
    type Layer = LlamaDecoderLayer<B>;
    type Norm = RmsNorm<B>;
    type Prompt = QwenPrepared<B>;
    type Error = QwenError;

    fn num_layers(&self) -> usize {
        self.model.config().text.num_layers
    }

    fn num_heads(&self) -> usize {
        self.model.config().text.num_heads
    }

    fn device(&self) -> B::Device {
        QwenSession::device(self)
    }

    fn on_device(&self, device: &B::Device) -> Self {
        use burn::module::Module;
        QwenSession {
            model: std::sync::Arc::new((*self.model).clone().to_device(device)),
            ..self.clone()
        }
    }

    fn fingerprint(&self) -> &sdrpn_core::host::ModelFingerprint {
        &self.fingerprint
    }

    fn label_grid(&self) -> Result<Grid> {
        let side = self.square.ok_or_else(|| {
            QwenError::invalid(
                "label grid",
                "Qwen2.5-VL's grid follows each image's size: label and train with a square resolution (QwenSession::with_square, 672 px in the reference)",
            )
        })?;
        self.image_grid(side, side)
    }

    fn prepare(&self, image: &RgbImage, question: &str) -> Result<QwenPrepared<B>> {
        QwenSession::prepare(self, image, question)
    }

    fn init_rpn(&self, branch: usize, twig: usize) -> Result<QwenRpn<B>> {
        check_branch(branch, twig, self.num_layers())?;
        let text = &self.model.config().text;
        let layers = &self.model.language.layers;
        let last = &layers[branch + twig - 1];
        let (num_heads, head_dim) = last.self_attn.heads();
        Ok(Rpn {
            twig_layers: layers[branch..branch + twig - 1].to_vec(),
            twig_norm: None,
            head_norm: last.input_layernorm.clone(),
            head: RpnHead {
                q_proj: last.self_attn.q_proj().clone(),
                k_proj: last.self_attn.k_proj.clone(),
                num_heads,
                num_kv_heads: text.num_kv_heads,
                head_dim,
                rotary: Some(HeadRotary {
                    theta: text.rope_theta,
                    sections: text.mrope_section.clone(),
                }),
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
        self.decode_tokens(
            first_logits,
            cache,
            decode_offset,
            options,
            &Taps::none(),
            |_, _| Ok(()),
        )
    }

    fn answer_text(&self, tokens: &[u32], options: &AnswerOptions) -> Result<String> {
        QwenSession::answer_text(self, tokens, options)
    }

    fn token_box_pixels(
        &self,
        prompt: &QwenPrepared<B>,
        token_box: TokenBox,
        width: u32,
        height: u32,
    ) -> Result<Option<PixelBox>> {
        let grid = prompt.grid;
        if let Some(side) = self.square {
            // The grid covers the image padded to a square.
            let f = self.processor.factor();
            debug_assert_eq!(grid.cols * f, side as usize);
            return Ok(sdrpn_core::crop::token_box_to_pixels(
                token_box, grid, f, width, height,
            )?);
        }
        if token_box.x1 > grid.cols
            || token_box.y1 > grid.rows
            || token_box.x0 >= token_box.x1
            || token_box.y0 >= token_box.y1
        {
            return Err(QwenError::invalid(
                "token box",
                format!("{token_box:?} is empty or outside the {grid} grid"),
            ));
        }
        // The reference's float32 arithmetic: token * 28 * (W / (cols * 28)).
        let f = self.processor.factor() as f32;
        let (sx, sy) = (
            width as f32 / (grid.cols as f32 * f),
            height as f32 / (grid.rows as f32 * f),
        );
        let px = |t: usize, s: f32, limit: u32| ((t as f32 * f * s) as u32).min(limit);
        let region = PixelBox {
            x0: px(token_box.x0, sx, width),
            y0: px(token_box.y0, sy, height),
            x1: px(token_box.x1, sx, width),
            y1: px(token_box.y1, sy, height),
        };
        Ok((region.width() > 0 && region.height() > 0).then_some(region))
    }

    fn crop_grid(&self, region: PixelBox) -> Result<Grid> {
        self.image_grid(region.width(), region.height())
    }

    fn roi_insert(
        &self,
        prompt: &QwenPrepared<B>,
        image: &RgbImage,
        region: PixelBox,
        keep: Option<&[bool]>,
    ) -> Result<RoiInsert<B>> {
        if region.x1 > image.width()
            || region.y1 > image.height()
            || region.width() == 0
            || region.height() == 0
        {
            return Err(QwenError::invalid(
                "RoI region",
                format!(
                    "{region:?} is empty or outside the {}x{} image",
                    image.width(),
                    image.height()
                ),
            ));
        }
        let crop =
            image::imageops::crop_imm(image, region.x0, region.y0, region.width(), region.height())
                .to_image();
        let (p, patches) = self.patches(&crop)?;
        let m = self.model.config().vision.spatial_merge_size;
        let crop_grid = Grid::new(p.rows / m, p.cols / m)?;
        let features = self.model.image_features(patches, p.rows, p.cols)?;
        let kept: Vec<usize> = match keep {
            None => (0..crop_grid.len()).collect(),
            Some(k) => {
                crop_grid.check_len("RoI keep mask", k.len())?;
                (0..k.len()).filter(|&i| k[i]).collect()
            }
        };
        if kept.is_empty() {
            return Err(QwenError::invalid("RoI mask", "keeps no token"));
        }
        let device = QwenSession::device(self);
        let idx: Vec<i64> = kept.iter().map(|&i| i as i64).collect();
        let n = idx.len();
        let features = features.select(
            0,
            Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [n]), &device),
        );
        let cfg = self.model.config();
        let (start_id, end_id, image_id) = (
            cfg.vision_start_token_id,
            cfg.vision_end_token_id,
            cfg.image_token_id,
        );
        let markers = Tensor::<B, 1, Int>::from_data(
            TensorData::new(vec![start_id as i64, end_id as i64], [2]),
            &device,
        )
        .reshape([1, 2]);
        let markers = self.model.language.embed(markers);
        let d = cfg.text.hidden_size;
        let embeds = Tensor::cat(
            vec![
                markers.clone().slice([0..1, 0..1, 0..d]),
                features.unsqueeze::<3>(),
                markers.slice([0..1, 1..2, 0..d]),
            ],
            1,
        );
        // Positions of the whole sequence with every crop token, then the
        // masked ones dropped (the kept ones keep theirs).
        let at = prompt.visual.end;
        let mut ids = prompt.ids[..at].to_vec();
        ids.push(start_id);
        ids.extend(std::iter::repeat_n(image_id, crop_grid.len()));
        ids.push(end_id);
        ids.extend_from_slice(&prompt.ids[at..]);
        let full = rope_index(
            &ids,
            image_id,
            &[
                (prompt.grid.rows, prompt.grid.cols),
                (crop_grid.rows, crop_grid.cols),
            ],
        )?;
        let Positions::Axes(samples) = &full.positions else {
            unreachable!("rope_index gives per-axis positions")
        };
        let crop_start = at + 1;
        let dropped: std::collections::BTreeSet<usize> = (0..crop_grid.len())
            .filter(|i| !kept.contains(i))
            .map(|i| crop_start + i)
            .collect();
        let axes: Vec<Vec<i64>> = samples[0]
            .iter()
            .map(|axis| {
                axis.iter()
                    .enumerate()
                    .filter(|(t, _)| !dropped.contains(t))
                    .map(|(_, &p)| p)
                    .collect()
            })
            .collect();
        let len = axes[0].len();
        let max = axes.iter().flatten().copied().max().unwrap_or(0);
        Ok(RoiInsert {
            embeds,
            at,
            positions: Positions::Axes(vec![axes]),
            decode_offset: max + 1 - len as i64,
            roi_tokens: n,
        })
    }

    fn generate_with_maps(
        &self,
        prompt: &QwenPrepared<B>,
        maps: &mut [AttentionAccumulator<B>],
        max_new_tokens: usize,
    ) -> Result<TappedAnswer> {
        generate_into_maps(
            maps,
            max_new_tokens,
            self.num_layers(),
            &mut |options, cache, taps, on_step| {
                let (tokens, _) =
                    self.generate(prompt, cache, options, (&Taps::none(), taps), on_step)?;
                Ok(tokens)
            },
        )
    }
}
