//! ViCrop's rel-att and grad-att maps on any host (the RoI sources of the
//! paper's comparison method, [`sdrpn_core::vicrop`]): the crop is chosen by
//! `sdrpn_core::vicrop::vicrop_box` and answered by
//! [`crate::two_pass::TwoPass::answer_with_vicrop`].

use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use image::RgbImage;
use sdrpn_core::cache::KvCache;
use sdrpn_core::host::{HostPrompt, RpnHost};
use sdrpn_core::readback::floats;
use sdrpn_core::vicrop::{head_mean_row, relative_attention};
use serde::Serialize;

/// Which of ViCrop's training-free maps picks the crop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViCropMap {
    /// rel-att: the attention of the last prompt position to the image at
    /// one layer, averaged over heads, divided by the same map for a generic
    /// question ([`relative_maps`]).
    #[default]
    Relative,
    /// grad-att: that attention weighted by the positive part of the
    /// gradient of the greedy first answer token's log-probability with
    /// respect to it, averaged over heads, not divided ([`gradient_map`]).
    Gradient,
}

/// ViCrop's training-free RoI source ([`sdrpn_core::vicrop`]): one of its
/// maps at one layer ([`ViCropMap`]); ViCrop's square crop around its peak;
/// the crop's tokens appended after the image's, as for an SD-RPN box
/// (ViCrop also gives the crop as a second image right after the original).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ViCropRule {
    /// rel-att or grad-att.
    pub map: ViCropMap,
    /// The crop's base side in source pixels (ViCrop's `bbox_size`: 336 for
    /// LLaVA-1.5, 224 for Qwen2.5-VL).
    pub base_box: f64,
    /// The generic question (ViCrop: "Write a general description of the
    /// image."); it takes the question's last line too when the question
    /// has several (its answer-format instruction: ViCrop's generic prompt
    /// keeps the short-answer suffix, `run.py`:57).
    pub generic_question: String,
}

impl Default for ViCropRule {
    fn default() -> Self {
        Self {
            map: ViCropMap::Relative,
            base_box: 336.0,
            generic_question: sdrpn_core::vicrop::GENERIC_QUESTION.to_string(),
        }
    }
}

impl ViCropRule {
    /// ViCrop's attention layer (0-based) for a language model of
    /// `num_layers`: 14 of LLaVA-1.5-7B's 32 (`llava_methods.py`:14), 22 of
    /// Qwen2.5-VL-3B's 36 (`qwen2_5_methods.py`:9); other depths take the
    /// 7B's share (`round(14 * L / 32)`), a default to tune on validation
    /// data as ViCrop did (its README:163).
    pub fn default_layer(num_layers: usize) -> usize {
        match num_layers {
            32 => 14,
            36 => 22,
            n => ((14 * n) as f64 / 32.0)
                .round()
                .clamp(0.0, n.saturating_sub(1) as f64) as usize,
        }
    }

    /// The generic question asked with `question`.
    pub fn generic_for(&self, question: &str) -> String {
        match question.trim_end().rsplit_once('\n') {
            Some((_, last)) if !last.trim().is_empty() => {
                format!("{}\n{}", self.generic_question, last)
            }
            _ => self.generic_question.clone(),
        }
    }
}

/// The output states of the last layer run (`[1, T, D]`) and one map of
/// `P` values per asked layer.
pub type StatesAndMaps<B> = (Tensor<B, 3>, Vec<Vec<f32>>);

/// ViCrop's rel-att map at each of `layers` (ascending) for `question` about
/// `image`: the head-averaged attention of the prompt's last position to its
/// visual tokens ([`head_mean_row`]) divided by the same for the rule's
/// generic question ([`relative_attention`]). Runs layers `0..=max(layers)`
/// of both prompts; the question's fill `cache` when given.
///
/// # Shapes
/// - returns (the output of the last layer run `[1, T, D]`, `P` values per layer)
pub fn relative_maps<B: Backend, H: RpnHost<B>>(
    host: &H,
    prompt: &H::Prompt,
    image: &RgbImage,
    question: &str,
    layers: &[usize],
    rule: &ViCropRule,
    cache: Option<&mut KvCache<B>>,
) -> Result<StatesAndMaps<B>, H::Error> {
    let (h, maps) = attention_rows(host, prompt, layers, cache)?;
    let generic = host.prepare(image, &rule.generic_for(question))?;
    let (_, generic) = attention_rows(host, &generic, layers, None)?;
    let rel = maps
        .iter()
        .zip(&generic)
        .map(|(q, g)| relative_attention(q, g))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((h, rel))
}

/// The head-averaged attention row of `prompt`'s last position over its
/// visual tokens at each of `layers` (ascending), running layers
/// `0..=max(layers)` (into `cache` when given).
pub fn attention_rows<B: Backend, H: RpnHost<B>>(
    host: &H,
    prompt: &H::Prompt,
    layers: &[usize],
    cache: Option<&mut KvCache<B>>,
) -> Result<StatesAndMaps<B>, H::Error> {
    let last = check_layers(host, layers)?;
    let (h, kept) = host.run_layers_keeping(
        prompt.embeds(),
        0,
        &prompt.positions(),
        0..last + 1,
        cache,
        layers,
    );
    let rows = kept
        .into_iter()
        .map(|probs| floats(head_mean_row(probs, prompt.query(), prompt.visual())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((h, rows))
}

/// ViCrop's grad-att map at `layer` for `prompt`
/// (`gradient_attention_llava`, `llava_methods.py`:16-54): `A * relu(dA)`
/// of the layer's attention `A` and the gradient `dA` of the greedy first
/// answer token's log-probability ([`RpnHost::attention_gradient`]), the
/// last prompt row over the visual tokens, averaged over heads
/// ([`head_mean_row`]); no generic question. Runs layers `0..=layer` of the
/// prompt (into `cache` when given) and layers `layer..L` once more with
/// autodiff.
///
/// # Shapes
/// - returns (the output of layer `layer` `[1, T, D]`, `P` values)
pub fn gradient_map<B: Backend, H: RpnHost<B>>(
    host: &H,
    prompt: &H::Prompt,
    layer: usize,
    mut cache: Option<&mut KvCache<B>>,
) -> Result<(Tensor<B, 3>, Vec<f32>), H::Error> {
    check_layers(host, &[layer])?;
    let positions = prompt.positions();
    let before = host.run_layers(
        prompt.embeds(),
        0,
        &positions,
        0..layer,
        cache.as_deref_mut(),
    );
    let (a, grad) = host.attention_gradient(before.clone(), &positions, layer)?;
    let h = host.run_layers(before, 0, &positions, layer..layer + 1, cache);
    let weighted = a * relu(grad);
    Ok((
        h,
        floats(head_mean_row(weighted, prompt.query(), prompt.visual()))?,
    ))
}

/// The last of `layers`, which must ascend and lie below the host's depth.
fn check_layers<B: Backend, H: RpnHost<B>>(host: &H, layers: &[usize]) -> Result<usize, H::Error> {
    match layers.last() {
        Some(&last) if last < host.num_layers() && layers.windows(2).all(|w| w[0] < w[1]) => {
            Ok(last)
        }
        _ => Err(sdrpn_core::CoreError::config(
            "ViCrop layers",
            format!(
                "{layers:?} must ascend and lie below the model's {} layers",
                host.num_layers()
            ),
        )
        .into()),
    }
}
