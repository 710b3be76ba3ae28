//! LLaVA-1.5: vision tower + projector + language model, with the image
//! features merged at the image-token positions.

use crate::cache::KvCache;
use crate::clip::ClipVisionTower;
use crate::config::LlavaConfig;
use crate::error::{LlavaError, Result};
use crate::llama::LlamaModel;
use crate::projector::Projector;
use crate::taps::{Captured, Taps};
use crate::weights::{Checkpoint, HostTensor, NamedParam, TensorLoader};
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use std::path::Path;

/// The LLaVA-1.5 host model.
#[derive(Module, Debug)]
pub struct Llava<B: Backend> {
    vision: ClipVisionTower<B>,
    projector: Projector<B>,
    /// The language model.
    pub language: LlamaModel<B>,
    #[module(skip)]
    config: LlavaConfig,
}

/// Image features at both taps the tests and `inspect` need.
#[derive(Debug, Clone)]
pub struct ImageFeatures<B: Backend> {
    /// Selected vision hidden state (CLS dropped), `[N, P, Dv]`.
    pub selected: Tensor<B, 3>,
    /// After the projector, `[N, P, D]`.
    pub projected: Tensor<B, 3>,
}

/// Output of a language-model pass.
#[derive(Debug, Clone)]
pub struct LmOutput<B: Backend> {
    /// Hidden states after the final norm, `[N, T, D]`.
    pub hidden: Tensor<B, 3>,
    /// What the taps asked for.
    pub captured: Captured<B>,
}

impl<B: Backend> Llava<B> {
    /// Loads a llava-hf checkpoint folder (`config.json` + safetensors).
    /// Every tensor of the checkpoint must be used and every tensor of the
    /// model present with its shape; otherwise the error lists them all.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        let config = LlavaConfig::from_dir(dir)?;
        Self::load_with_config(dir, config, device)
    }

    /// Loads the weights of `dir` into a model of `config`.
    pub fn load_with_config(dir: &Path, config: LlavaConfig, device: &B::Device) -> Result<Self> {
        Ok(Self::load_named_with_config(dir, config, device)?.0)
    }

    /// [`Llava::load`] with the checkpoint name of every parameter, to train
    /// further and write the result with [`Llava::export`].
    pub fn load_named(dir: &Path, device: &B::Device) -> Result<(Self, Vec<NamedParam>)> {
        let config = LlavaConfig::from_dir(dir)?;
        Self::load_named_with_config(dir, config, device)
    }

    fn load_named_with_config(
        dir: &Path,
        config: LlavaConfig,
        device: &B::Device,
    ) -> Result<(Self, Vec<NamedParam>)> {
        config.validate()?;
        let checkpoint = Checkpoint::open(dir)?;
        let mut loader = TensorLoader::new(&checkpoint, device);
        let model = Self::build(&mut loader, config);
        let names = loader.take_param_names();
        loader.finish(|_| false)?;
        Ok((model, names))
    }

    /// A model of `config` with seeded random weights (benchmarks, demos).
    pub fn random(config: LlavaConfig, seed: u64, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let mut loader = TensorLoader::random(device, seed);
        Ok(Self::build(&mut loader, config))
    }

    /// Like [`Llava::random`], with the weights drawn on the device by the
    /// backend's generator ([`TensorLoader::random_on_device`]): what the
    /// benchmarks build a 7B-shaped model with.
    pub fn random_on_device(config: LlavaConfig, seed: u64, device: &B::Device) -> Result<Self> {
        config.validate()?;
        let mut loader = TensorLoader::random_on_device(device, seed);
        Ok(Self::build(&mut loader, config))
    }

    /// A model to train from scratch: seeded random weights scaled by fan-in
    /// ([`TensorLoader::scaled_by_fan_in`]), with the checkpoint name of
    /// every parameter, for writing the result with [`Llava::export`].
    pub fn random_named(
        config: LlavaConfig,
        seed: u64,
        device: &B::Device,
    ) -> Result<(Self, Vec<NamedParam>)> {
        config.validate()?;
        let mut loader = TensorLoader::random(device, seed).scaled_by_fan_in();
        let model = Self::build(&mut loader, config);
        Ok((model, loader.take_param_names()))
    }

    /// The model's parameters in the llava-hf checkpoint layout, named by
    /// `names` (from [`Llava::random_named`] or [`Llava::load_named`] for
    /// this model or the one it was trained from: training keeps parameter
    /// ids). Fails when a named
    /// parameter is missing from the model.
    pub fn export(&self, names: &[NamedParam]) -> Result<Vec<HostTensor>> {
        let values = crate::export::param_values(self);
        crate::export::to_checkpoint_layout(values, names)
    }

    /// Writes a complete llava-hf checkpoint folder with seeded random
    /// weights (`config.json` + `model.safetensors`); `qk_scale` multiplies
    /// the attention query/key weights of the language model (sharper
    /// attention makes demo pseudo-labels less diffuse). The tokenizer is
    /// not written.
    pub fn write_random_checkpoint(
        config: &LlavaConfig,
        seed: u64,
        qk_scale: f32,
        dir: &Path,
        device: &B::Device,
    ) -> Result<()> {
        config.validate()?;
        std::fs::create_dir_all(dir).map_err(|e| crate::error::LlavaError::io(dir, e))?;
        let mut loader = TensorLoader::random(device, seed).recording();
        let _ = Self::build(&mut loader, config.clone());
        let mut tensors = loader.take_recorded();
        for (name, _, values) in tensors.iter_mut() {
            if name.starts_with("language_model")
                && (name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight"))
            {
                values.iter_mut().for_each(|v| *v *= qk_scale);
            }
        }
        crate::weights::write_safetensors(&dir.join("model.safetensors"), &tensors)?;
        let path = dir.join("config.json");
        std::fs::write(&path, config.to_hf_json())
            .map_err(|e| crate::error::LlavaError::io(&path, e))
    }

    /// [`Llava::build`] for tests in other modules.
    #[cfg(test)]
    pub(crate) fn build_for_tests(loader: &mut TensorLoader<B>, config: LlavaConfig) -> Self {
        Self::build(loader, config)
    }

    fn build(loader: &mut TensorLoader<B>, config: LlavaConfig) -> Self {
        Self {
            vision: ClipVisionTower::load(loader, "vision_tower.vision_model", &config.vision),
            projector: Projector::load(loader, &config),
            language: LlamaModel::load(loader, &config.text),
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LlavaConfig {
        &self.config
    }

    /// Encodes preprocessed images.
    ///
    /// # Shapes
    /// - `pixels`: `[N, 3, S, S]` -> features `[N, P, Dv]` and `[N, P, D]`
    pub fn image_features(&self, pixels: Tensor<B, 4>) -> Result<ImageFeatures<B>> {
        let selected = self.select_features(pixels)?;
        let projected = self.project(selected.clone());
        Ok(ImageFeatures {
            selected,
            projected,
        })
    }

    /// The vision tower's features at the configured layer (CLS dropped
    /// when configured), before the projector.
    ///
    /// # Shapes
    /// - `pixels`: `[N, 3, S, S]` -> `[N, P, Dv]`
    pub fn select_features(&self, pixels: Tensor<B, 4>) -> Result<Tensor<B, 3>> {
        let [n, c, h, w] = pixels.dims();
        let s = self.config.vision.image_size;
        if c != 3 || h != s || w != s {
            return Err(LlavaError::invalid(
                "pixel values",
                format!("expected [N, 3, {s}, {s}], got [{n}, {c}, {h}, {w}]"),
            ));
        }
        let states = self
            .vision
            .hidden_state(pixels, self.config.feature_state());
        let [n, tokens, dv] = states.dims();
        Ok(if self.config.drop_cls {
            states.slice([0..n, 1..tokens, 0..dv])
        } else {
            states
        })
    }

    /// The projector: vision features into the language model's space.
    ///
    /// # Shapes
    /// - `selected`: `[N, P, Dv]` -> `[N, P, D]`
    pub fn project(&self, selected: Tensor<B, 3>) -> Tensor<B, 3> {
        self.projector.forward(selected)
    }

    /// Embeds a token sequence and puts image features at the image-token
    /// positions, in order (the llava-hf convention: each image occupies
    /// P consecutive image-token ids).
    ///
    /// # Shapes
    /// - `images`: `[P, D]` each -> `[1, T, D]`
    pub fn embed_prompt(&self, ids: &[u32], images: &[Tensor<B, 2>]) -> Result<Tensor<B, 3>> {
        let device = self.language.device();
        let image_id = self.config.image_token_index;
        let vocab = self.config.text.vocab_size;
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(LlavaError::invalid(
                "token ids",
                format!("id {bad} is outside the vocabulary of {vocab}"),
            ));
        }
        let slots = ids.iter().filter(|&&t| t == image_id).count();
        let per_image = self.config.image_tokens();
        let given: usize = images.iter().map(|f| f.dims()[0]).sum();
        if slots != given {
            return Err(LlavaError::invalid(
                "prompt",
                format!(
                    "it has {slots} image-token positions but {} image(s) give {given} features ({per_image} per image)",
                    images.len()
                ),
            ));
        }
        let t = ids.len();
        let ids_tensor = Tensor::<B, 1, Int>::from_data(
            TensorData::new(ids.iter().map(|&x| x as i64).collect::<Vec<_>>(), [t]),
            &device,
        )
        .reshape([1, t]);
        let text = self.language.embed(ids_tensor);
        if slots == 0 {
            return Ok(text);
        }
        Ok(merge_features(
            text,
            ids,
            image_id,
            Tensor::cat(images.to_vec(), 0),
        ))
    }

    /// Runs all decoder layers and the final norm over `embeds` at positions
    /// `start..start+T`, using and extending `cache`.
    ///
    /// # Shapes
    /// - `embeds`: `[N, T, D]`
    pub fn forward(
        &self,
        embeds: Tensor<B, 3>,
        start: usize,
        cache: Option<&mut KvCache<B>>,
        taps: &Taps,
    ) -> LmOutput<B> {
        let mut captured = Captured::default();
        let layers = self.language.num_layers();
        let h = self
            .language
            .run_layers(embeds, start, 0..layers, cache, taps, &mut captured);
        let hidden = self.language.final_norm(h);
        if taps.hidden.contains(&layers) {
            captured.hidden.insert(layers, hidden.clone());
        }
        LmOutput { hidden, captured }
    }
}

/// Puts `features` (in order) at the positions of `ids` that hold
/// `image_id`, the text embeddings everywhere else.
///
/// # Shapes
/// - `text`: `[1, T, D]`, `features`: `[P, D]` with `P` the image positions -> `[1, T, D]`
pub fn merge_features<B: Backend>(
    text: Tensor<B, 3>,
    ids: &[u32],
    image_id: u32,
    features: Tensor<B, 2>,
) -> Tensor<B, 3> {
    let [_, t, d] = text.dims();
    // Alternate runs of text and image positions.
    let mut pieces = Vec::new();
    let (mut i, mut used) = (0, 0);
    while i < t {
        let is_image = ids[i] == image_id;
        let run = ids[i..]
            .iter()
            .take_while(|&&x| (x == image_id) == is_image)
            .count();
        pieces.push(if is_image {
            let p = features
                .clone()
                .slice([used..used + run, 0..d])
                .unsqueeze::<3>();
            used += run;
            p
        } else {
            text.clone().slice([0..1, i..i + run, 0..d])
        });
        i += run;
    }
    Tensor::cat(pieces, 1)
}
