//! A loaded Qwen2.5-VL with its tokenizer, chat template and image
//! processor: turns an image and a user message into model inputs (ids,
//! patches, M-RoPE positions, merged embeddings) and answers greedily.

use crate::chat::QwenTokenizer;
use crate::error::{QwenError, Result};
use crate::model::QwenVl;
use crate::preprocess::{ImageProcessor, Patches};
use crate::rope_index::{rope_index, PromptPositions};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use image::RgbImage;
use sdrpn_core::host::AnswerOptions;
use sdrpn_core::{Grid, Positions};
use sdrpn_llava::cache::KvCache;
use sdrpn_llava::fingerprint::{model_fingerprint, ModelFingerprint};
use sdrpn_llava::generate::{greedy_decode, stop_on_strings, StopRule};
use sdrpn_llava::preprocess::expand_to_square;
use sdrpn_llava::taps::{Captured, Taps};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

/// An image and a message turned into model inputs.
#[derive(Debug, Clone)]
pub struct QwenPrepared<B: Backend> {
    /// The rendered prompt text (one image placeholder).
    pub prompt: String,
    /// The full token sequence (image tokens expanded).
    pub ids: Vec<u32>,
    /// The processor's flattened patches, `[rows*cols, 3*2*p*p]`.
    pub patches: Tensor<B, 2>,
    /// The patch grid (`rows`, `cols`) before merging.
    pub patch_grid: (usize, usize),
    /// The image after `smart_resize`.
    pub resized: RgbImage,
    /// Merged image tokens, `[P, D]`.
    pub features: Tensor<B, 2>,
    /// Prompt embeddings with the image merged, `[1, T, D]`.
    pub embeds: Tensor<B, 3>,
    /// M-RoPE positions and the offset of generated tokens.
    pub positions: PromptPositions,
    /// Positions of the image's tokens.
    pub visual: Range<usize>,
    /// The merged-token grid of the image.
    pub grid: Grid,
}

impl<B: Backend> QwenPrepared<B> {
    /// Position of the query token: the last prompt token.
    pub fn query(&self) -> usize {
        self.ids.len() - 1
    }
}

/// A loaded Qwen2.5-VL model, tokenizer and image processor.
#[derive(Clone)]
pub struct QwenSession<B: Backend> {
    /// The model (shared by the session's views: [`QwenSession::with_square`]
    /// on a clone copies no weights).
    pub model: Arc<QwenVl<B>>,
    /// Its tokenizer and chat template.
    pub tokenizer: QwenTokenizer,
    /// Its image processor settings.
    pub processor: ImageProcessor,
    /// What the checkpoint is (recorded by every output made with it).
    pub fingerprint: ModelFingerprint,
    /// Side in pixels of the square every prompt image is padded (centred,
    /// grey 127) and resized to, as the reference labels and trains
    /// (`make_pseudo_label_natural.py:58-71`: 672 px, 24x24 tokens); `None`
    /// (the default): the processor's `smart_resize`, as the reference
    /// evaluates. RoI crops always use the processor.
    pub square: Option<u32>,
}

impl<B: Backend> QwenSession<B> {
    /// Loads model, tokenizer, chat template and processor from a
    /// Qwen2.5-VL folder.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        let model = QwenVl::load(dir, device)?;
        let tokenizer = QwenTokenizer::from_dir(dir, model.config().image_token_id)?;
        let processor = ImageProcessor::from_dir(dir)?;
        let v = &model.config().vision;
        if (
            processor.patch_size,
            processor.merge_size,
            processor.temporal_patch_size,
        ) != (v.patch_size, v.spatial_merge_size, v.temporal_patch_size)
        {
            return Err(QwenError::invalid(
                "preprocessor_config.json",
                format!(
                    "patch {} / merge {} / temporal {} differ from config.json's {} / {} / {}",
                    processor.patch_size,
                    processor.merge_size,
                    processor.temporal_patch_size,
                    v.patch_size,
                    v.spatial_merge_size,
                    v.temporal_patch_size
                ),
            ));
        }
        let fingerprint = model_fingerprint(dir, "per-image")?;
        Ok(Self {
            model: Arc::new(model),
            tokenizer,
            processor,
            fingerprint,
            square: None,
        })
    }

    /// The session with prompt images padded to a square of `side` pixels
    /// (a multiple of 28), see [`QwenSession::square`]. On a clone of a
    /// session this is a second view of the same weights: labelling and
    /// training at the square resolution beside evaluation at each image's
    /// own one, with the model loaded once.
    pub fn with_square(mut self, side: u32) -> Result<Self> {
        let f = self.processor.factor() as u32;
        if side == 0 || !side.is_multiple_of(f) {
            return Err(QwenError::invalid(
                "square side",
                format!("{side} px is not a positive multiple of {f}"),
            ));
        }
        self.square = Some(side);
        Ok(self)
    }

    /// The image a prompt is made of: as given, or padded to the square
    /// setting's side, with the processor that sizes it.
    fn prompt_image(&self, image: &RgbImage) -> (RgbImage, ImageProcessor) {
        match self.square {
            None => (image.clone(), self.processor.clone()),
            Some(side) => {
                let pixels = (side * side) as usize;
                let padded = expand_to_square(image, image::Rgb([127, 127, 127]));
                let processor = ImageProcessor {
                    min_pixels: pixels,
                    max_pixels: pixels,
                    ..self.processor.clone()
                };
                (padded, processor)
            }
        }
    }

    /// The model's device.
    pub fn device(&self) -> B::Device {
        self.model.language.device()
    }

    /// Preprocesses an image into patches on the device.
    pub fn patches(&self, image: &RgbImage) -> Result<(Patches, Tensor<B, 2>)> {
        self.patches_with(&self.processor, image)
    }

    fn patches_with(
        &self,
        processor: &ImageProcessor,
        image: &RgbImage,
    ) -> Result<(Patches, Tensor<B, 2>)> {
        let p = processor.patches(image)?;
        let per = self.model.config().vision.patch_values();
        let n = p.rows * p.cols;
        let t = Tensor::from_data(TensorData::new(p.values.clone(), [n, per]), &self.device());
        Ok((p, t))
    }

    /// Renders `message` with the chat template, tokenises it, encodes the
    /// image and merges it into the prompt embeddings.
    pub fn prepare(&self, image: &RgbImage, message: &str) -> Result<QwenPrepared<B>> {
        let prompt = self.tokenizer.render(message)?;
        let (image, processor) = self.prompt_image(image);
        let (p, patches) = self.patches_with(&processor, &image)?;
        let m = self.model.config().vision.spatial_merge_size;
        let grid = Grid::new(p.rows / m, p.cols / m)?;
        let ids = self.tokenizer.encode_prompt(&prompt, grid.len())?;
        let context = self.model.config().text.max_position_embeddings;
        if ids.len() > context {
            return Err(QwenError::invalid(
                "prompt",
                format!(
                    "{} tokens exceed the model's {context} positions",
                    ids.len()
                ),
            ));
        }
        let image_id = self.tokenizer.image_token();
        let start = ids
            .iter()
            .position(|&t| t == image_id)
            .expect("encode_prompt checked the image tokens");
        let positions = rope_index(&ids, image_id, &[(grid.rows, grid.cols)])?;
        let features = self.model.image_features(patches.clone(), p.rows, p.cols)?;
        let embeds = self.model.embed_prompt(&ids, features.clone())?;
        Ok(QwenPrepared {
            prompt,
            ids,
            patches,
            patch_grid: (p.rows, p.cols),
            resized: p.resized,
            features,
            embeds,
            positions,
            visual: start..start + grid.len(),
            grid,
        })
    }

    /// Greedy generation from a prepared prompt, with `prefill_taps`
    /// captured in the prompt pass (returned) and `step_taps` during each
    /// decode step, handed to `on_step(j, captured)` for the j-th generated
    /// token as it is fed back. `cache` receives every processed position.
    pub fn generate(
        &self,
        prepared: &QwenPrepared<B>,
        cache: &mut KvCache<B>,
        options: &AnswerOptions,
        taps: (&Taps, &Taps),
        on_step: impl FnMut(usize, Captured<B>) -> Result<()>,
    ) -> Result<(Vec<u32>, Captured<B>)> {
        let (prefill_taps, step_taps) = taps;
        if !cache.is_empty() {
            return Err(QwenError::invalid(
                "KV cache",
                "generation starts from an empty cache",
            ));
        }
        let prefill = self.model.forward(
            prepared.embeds.clone(),
            0,
            &prepared.positions.positions,
            Some(cache),
            prefill_taps,
        );
        let first = self.model.last_logits(prefill.hidden)?;
        let tokens = self.decode_tokens(
            &first,
            cache,
            prepared.positions.delta,
            options,
            step_taps,
            on_step,
        )?;
        Ok((tokens, prefill.captured))
    }

    /// Greedy decoding after a prefill: `first` are the last prompt
    /// position's logits, `cache` holds the prompt, generated tokens sit at
    /// rotary position `cache index + delta` on every axis (text after the
    /// prompt). `step_taps` are captured at each fed-back token and handed
    /// to `on_step`.
    pub fn decode_tokens(
        &self,
        first: &[f32],
        cache: &mut KvCache<B>,
        delta: i64,
        options: &AnswerOptions,
        step_taps: &Taps,
        on_step: impl FnMut(usize, Captured<B>) -> Result<()>,
    ) -> Result<Vec<u32>> {
        let device = self.device();
        let context = self.model.config().text.max_position_embeddings;
        self.with_stop_rule(options, |rule| {
            greedy_decode(first, cache, context, rule, on_step, |token, cache| {
                let start = cache.len();
                let position = start as i64 + delta;
                let positions = Positions::Sequential {
                    start: usize::try_from(position).map_err(|_| {
                        QwenError::invalid("positions", format!("negative position {position}"))
                    })?,
                    len: 1,
                };
                let ids = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(vec![token as i64], [1]),
                    &device,
                )
                .reshape([1, 1]);
                let embeds = self.model.language.embed(ids);
                let out = self
                    .model
                    .forward(embeds, start, &positions, Some(cache), step_taps);
                Ok((self.model.last_logits(out.hidden)?, out.captured))
            })
        })
    }

    /// Calls `f` with the stop rule of `options`: the token limit, the
    /// end-of-turn tokens, and the stop strings (checked on the decoded
    /// text so far).
    pub fn with_stop_rule<R>(&self, options: &AnswerOptions, f: impl FnOnce(&StopRule) -> R) -> R {
        let stop = stop_on_strings(&options.stop_strings, |t| self.tokenizer.decode(t).ok());
        let rule = StopRule {
            max_new_tokens: options.max_new_tokens,
            eos: self.tokenizer.eos().to_vec(),
            stop: Some(&stop),
        };
        f(&rule)
    }

    /// The answer text of generated tokens: decoded without special tokens,
    /// cut at the first stop string, stripped.
    pub fn answer_text(&self, tokens: &[u32], options: &AnswerOptions) -> Result<String> {
        Ok(options.answer_in(self.tokenizer.decode(tokens)?))
    }

    /// Greedy answer to `message` about `image`.
    pub fn answer(
        &self,
        image: &RgbImage,
        message: &str,
        options: &AnswerOptions,
    ) -> Result<String> {
        let prepared = self.prepare(image, message)?;
        let mut cache = KvCache::new(self.model.language.num_layers());
        let none = Taps::none();
        let (tokens, _) = self.generate(
            &prepared,
            &mut cache,
            options,
            (&none, &none),
            |_, _| Ok(()),
        )?;
        self.answer_text(&tokens, options)
    }
}
