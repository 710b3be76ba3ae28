//! Qwen2.5-VL: the vision tower with its merger, and the Qwen2 decoder
//! (LLaMA's with q/k/v biases and M-RoPE), image features merged at the
//! `<|image_pad|>` positions.

use crate::config::QwenConfig;
use crate::error::{QwenError, Result};
use crate::vision::QwenVisionTower;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use sdrpn_core::Positions;
use sdrpn_llava::cache::KvCache;
use sdrpn_llava::llama::LlamaModel;
use sdrpn_llava::model::{merge_features, LmOutput};
use sdrpn_llava::taps::{Captured, Taps};
use sdrpn_llava::weights::{Checkpoint, TensorLoader};
use std::path::Path;

/// Renames a key of the newer transformers layout (`model.visual.*`,
/// `model.language_model.*`) to the released checkpoints' layout
/// (`visual.*`, `model.*`); `lm_head.*` is the same in both.
pub fn canonical_name(key: &str) -> String {
    const RULES: [(&str, &str); 2] = [
        ("model.visual.", "visual."),
        ("model.language_model.", "model."),
    ];
    for (from, to) in RULES {
        if let Some(rest) = key.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    key.to_string()
}

/// The Qwen2.5-VL host model.
#[derive(Module, Debug)]
pub struct QwenVl<B: Backend> {
    /// The vision tower and merger.
    pub vision: QwenVisionTower<B>,
    /// The language model.
    pub language: LlamaModel<B>,
    #[module(skip)]
    config: QwenConfig,
}

impl<B: Backend> QwenVl<B> {
    /// Loads a Qwen2.5-VL checkpoint folder (`config.json` + safetensors,
    /// either key layout). Every tensor of the checkpoint must be used and
    /// every tensor of the model present with its shape; otherwise the
    /// error lists them all.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        let config = QwenConfig::from_dir(dir)?;
        let checkpoint = Checkpoint::open_renamed(dir, canonical_name)?;
        let mut loader = TensorLoader::new(&checkpoint, device);
        let model = Self::build(&mut loader, config);
        let tied = model.config.text.tie_word_embeddings;
        // A tied checkpoint may still carry a copy of the head.
        loader.finish(|name| tied && name == "lm_head.weight")?;
        Ok(model)
    }

    /// A model of `config` with seeded random weights (benchmarks).
    pub fn random(config: QwenConfig, seed: u64, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let mut loader = TensorLoader::random(device, seed);
        Ok(Self::build(&mut loader, config))
    }

    fn build(loader: &mut TensorLoader<B>, config: QwenConfig) -> Self {
        Self {
            vision: QwenVisionTower::load(loader, "visual", &config.vision),
            language: LlamaModel::load_at(loader, &config.text, "model", "lm_head"),
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &QwenConfig {
        &self.config
    }

    /// Merged image tokens of one image's flattened patches.
    ///
    /// # Shapes
    /// - `patches`: `[rows*cols, 3*2*p*p]` -> `[rows*cols/4, D]`
    pub fn image_features(
        &self,
        patches: Tensor<B, 2>,
        rows: usize,
        cols: usize,
    ) -> Result<Tensor<B, 2>> {
        self.vision.forward(patches, rows, cols)
    }

    /// Embeds a token sequence and puts image features at the
    /// `<|image_pad|>` positions, in order.
    ///
    /// # Shapes
    /// - `features`: `[P, D]` -> `[1, T, D]`
    pub fn embed_prompt(&self, ids: &[u32], features: Tensor<B, 2>) -> Result<Tensor<B, 3>> {
        let vocab = self.config.text.vocab_size;
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(QwenError::invalid(
                "token ids",
                format!("id {bad} is outside the vocabulary of {vocab}"),
            ));
        }
        let image_id = self.config.image_token_id;
        let slots = ids.iter().filter(|&&t| t == image_id).count();
        let [given, _] = features.dims();
        if slots != given {
            return Err(QwenError::invalid(
                "prompt",
                format!(
                    "it has {slots} image-token positions but the image gives {given} features"
                ),
            ));
        }
        let t = ids.len();
        let ids_tensor = Tensor::<B, 1, Int>::from_data(
            TensorData::new(ids.iter().map(|&x| x as i64).collect::<Vec<_>>(), [t]),
            &self.language.device(),
        )
        .reshape([1, t]);
        let text = self.language.embed(ids_tensor);
        Ok(if slots == 0 {
            text
        } else {
            merge_features(text, ids, image_id, features)
        })
    }

    /// Runs all decoder layers and the final norm over `embeds` (tokens at
    /// rotary `positions`, after `start` cached ones), using and extending
    /// `cache`.
    ///
    /// # Shapes
    /// - `embeds`: `[N, T, D]`
    pub fn forward(
        &self,
        embeds: Tensor<B, 3>,
        start: usize,
        positions: &Positions,
        cache: Option<&mut KvCache<B>>,
        taps: &Taps,
    ) -> LmOutput<B> {
        let mut captured = Captured::default();
        let layers = self.language.num_layers();
        let h = self.language.run_layers_at(
            embeds,
            start,
            positions,
            0..layers,
            cache,
            taps,
            &mut captured,
        );
        let hidden = self.language.final_norm(h);
        if taps.hidden.contains(&layers) {
            captured.hidden.insert(layers, hidden.clone());
        }
        LmOutput { hidden, captured }
    }

    /// Logits of the last position of `hidden` (`[1, T, D]`), on the host.
    pub fn last_logits(&self, hidden: Tensor<B, 3>) -> Result<Vec<f32>> {
        Ok(self.language.last_logits(hidden)?)
    }
}

#[cfg(test)]
mod tests {
    use super::canonical_name;

    #[test]
    fn newer_layout_keys_map_to_the_released_layout() {
        assert_eq!(
            canonical_name("model.language_model.layers.3.self_attn.q_proj.bias"),
            "model.layers.3.self_attn.q_proj.bias"
        );
        assert_eq!(
            canonical_name("model.visual.blocks.0.attn.qkv.weight"),
            "visual.blocks.0.attn.qkv.weight"
        );
        assert_eq!(canonical_name("lm_head.weight"), "lm_head.weight");
        assert_eq!(
            canonical_name("model.embed_tokens.weight"),
            "model.embed_tokens.weight"
        );
        assert_eq!(
            canonical_name("visual.merger.mlp.0.bias"),
            "visual.merger.mlp.0.bias"
        );
    }
}
