//! A loaded model with its tokenizer and prompt settings: turns an image
//! and a question into model inputs, answers greedily, and records every
//! intermediate tensor for `sdrpn inspect`.

use crate::cache::KvCache;
use crate::error::{LlavaError, Result};
use crate::generate::{stop_on_strings, StopRule};
use crate::model::{ImageFeatures, Llava};
use crate::preprocess::{preprocess, ImageMode};
use crate::prompt::Template;
use crate::taps::Taps;
use crate::tokenizer::{LlavaTokenizer, Tokenization};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use image::RgbImage;
use sdrpn_core::Grid;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::Path;

/// How prompts are built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptOptions {
    /// Conversation template.
    pub template: Template,
    /// Tokenisation rule.
    pub tokenization: Tokenization,
    /// Image preprocessing.
    pub image_mode: ImageMode,
}

/// An image and a question turned into model inputs.
#[derive(Debug, Clone)]
pub struct Prepared<B: Backend> {
    /// The prompt text (template applied, `<image>` unexpanded).
    pub prompt: String,
    /// The full token sequence (image tokens expanded).
    pub ids: Vec<u32>,
    /// Preprocessed image, `[1, 3, S, S]`.
    pub pixels: Tensor<B, 4>,
    /// Encoded image.
    pub features: ImageFeatures<B>,
    /// Prompt embeddings with the image merged, `[1, T, D]`.
    pub embeds: Tensor<B, 3>,
    /// Positions of the (first) image's tokens.
    pub visual: Range<usize>,
    /// The image tokens' grid (the tower's patch grid).
    pub grid: Grid,
}

impl<B: Backend> Prepared<B> {
    /// Position of the query token: the last prompt token.
    pub fn query(&self) -> usize {
        self.ids.len() - 1
    }
}

/// Generation settings (the method's, shared by every host).
pub use sdrpn_core::host::AnswerOptions;

/// A loaded LLaVA model, tokenizer and prompt settings.
pub struct LlavaSession<B: Backend> {
    /// The model.
    pub model: Llava<B>,
    /// Its tokenizer.
    pub tokenizer: LlavaTokenizer,
    /// Prompt settings.
    pub options: PromptOptions,
    /// What the checkpoint is (recorded by every output made with it).
    pub fingerprint: crate::fingerprint::ModelFingerprint,
}

impl<B: Backend> LlavaSession<B> {
    /// Loads model and tokenizer from a llava-hf folder.
    pub fn load(dir: &Path, device: &B::Device, options: PromptOptions) -> Result<Self> {
        let model = Llava::load(dir, device)?;
        let tokenizer = LlavaTokenizer::from_dir(dir, model.config().image_token_index)?;
        let side = model.config().vision.grid_side();
        let grid = format!("{side}x{side}");
        let fingerprint = crate::fingerprint::model_fingerprint(dir, &grid)?;
        Ok(Self {
            model,
            tokenizer,
            options,
            fingerprint,
        })
    }

    /// The model's device.
    pub fn device(&self) -> B::Device {
        self.model.language.device()
    }

    /// Preprocesses an image to `[1, 3, S, S]`.
    pub fn pixels(&self, image: &RgbImage) -> Tensor<B, 4> {
        let s = self.model.config().vision.image_size;
        let values = preprocess(image, self.options.image_mode, s as u32);
        Tensor::from_data(TensorData::new(values, [1, 3, s, s]), &self.device())
    }

    /// Builds the prompt for `text`, tokenises it and embeds it with `image`.
    pub fn prepare(&self, image: &RgbImage, text: &str) -> Result<Prepared<B>> {
        let prompt = self.options.template.render(text);
        let per_image = self.model.config().image_tokens();
        let ids = self
            .tokenizer
            .encode_prompt(&prompt, self.options.tokenization, per_image)?;
        let image_id = self.tokenizer.image_token();
        let start = ids.iter().position(|&t| t == image_id).ok_or_else(|| {
            LlavaError::invalid("prompt", format!("{prompt:?} has no <image> placeholder"))
        })?;
        if ids.len() - start < per_image
            || ids.iter().filter(|&&t| t == image_id).count() != per_image
        {
            return Err(LlavaError::invalid(
                "prompt",
                "exactly one <image> placeholder is supported",
            ));
        }
        if ids.len() > self.model.config().text.max_position_embeddings {
            return Err(LlavaError::invalid(
                "prompt",
                format!(
                    "{} tokens exceed the model's {} positions",
                    ids.len(),
                    self.model.config().text.max_position_embeddings
                ),
            ));
        }
        let pixels = self.pixels(image);
        let features = self.model.image_features(pixels.clone())?;
        let [_, p, d] = features.projected.dims();
        let embeds = self
            .model
            .embed_prompt(&ids, &[features.projected.clone().reshape([p, d])])?;
        Ok(Prepared {
            prompt,
            ids,
            pixels,
            features,
            embeds,
            visual: start..start + per_image,
            grid: self.grid(),
        })
    }

    /// Calls `f` with the stop rule of `options`: the token limit, EOS, and
    /// the stop strings (checked on the decoded text so far).
    pub fn with_stop_rule<R>(&self, options: &AnswerOptions, f: impl FnOnce(&StopRule) -> R) -> R {
        let stop = stop_on_strings(&options.stop_strings, |t| self.tokenizer.decode(t).ok());
        let rule = StopRule {
            max_new_tokens: options.max_new_tokens,
            eos: vec![self.tokenizer.eos()],
            stop: Some(&stop),
        };
        f(&rule)
    }

    /// Greedy generation from prompt embeddings with per-step taps (see
    /// [`Llava::generate`]); returns the new tokens.
    pub fn answer_tokens(
        &self,
        embeds: Tensor<B, 3>,
        cache: &mut KvCache<B>,
        options: &AnswerOptions,
        step_taps: &Taps,
        on_step: impl FnMut(usize, crate::taps::Captured<B>) -> Result<()>,
    ) -> Result<Vec<u32>> {
        self.with_stop_rule(options, |rule| {
            self.model
                .generate(embeds, cache, rule, &Taps::none(), step_taps, on_step)
                .map(|g| g.tokens)
        })
    }

    /// The answer text of generated tokens: decoded without special tokens,
    /// cut at the first stop string, stripped.
    pub fn answer_text(&self, tokens: &[u32], options: &AnswerOptions) -> Result<String> {
        Ok(options.answer_in(self.tokenizer.decode(tokens)?))
    }

    /// Greedy answer to `question` about `image` (the plain baseline).
    pub fn answer(
        &self,
        image: &RgbImage,
        question: &str,
        options: &AnswerOptions,
    ) -> Result<String> {
        let prepared = self.prepare(image, question)?;
        let mut cache = KvCache::new(self.model.language.num_layers());
        let tokens = self.answer_tokens(
            prepared.embeds,
            &mut cache,
            options,
            &Taps::none(),
            |_, _| Ok(()),
        )?;
        self.answer_text(&tokens, options)
    }
}
