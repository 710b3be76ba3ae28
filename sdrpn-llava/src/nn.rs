//! Small building blocks shared by the vision tower and the language model.

use crate::config::Activation;
use crate::weights::TensorLoader;
use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

/// RMSNorm as HF LLaMA computes it: normalise in f32, cast back, scale.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Scale, `[D]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Epsilon added to the mean square.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Loads `{prefix}.weight`.
    pub fn load(loader: &mut TensorLoader<B>, prefix: &str, dim: usize, eps: f64) -> Self {
        Self {
            weight: loader.param(&format!("{prefix}.weight"), [dim]),
            eps,
        }
    }

    /// # Shapes
    /// - `x`: `[N, T, D]` -> `[N, T, D]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let h = x.cast(DType::F32);
        let rms = (h.clone().square().mean_dim(2) + self.eps).sqrt();
        let normed = (h / rms).cast(dtype);
        normed * self.weight.val().unsqueeze::<3>()
    }
}

impl<B: Backend> sdrpn_core::rpn::TwigNorm<B> for RmsNorm<B> {
    fn forward_norm(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward(x)
    }
}

/// Loads a LayerNorm `{prefix}.weight` / `{prefix}.bias`.
pub fn load_layer_norm<B: Backend>(
    loader: &mut TensorLoader<B>,
    prefix: &str,
    dim: usize,
    eps: f64,
) -> LayerNorm<B> {
    let mut ln = LayerNormConfig::new(dim)
        .with_epsilon(eps)
        .init::<B>(loader.device());
    ln.gamma = loader.param(&format!("{prefix}.weight"), [dim]);
    ln.beta = Some(loader.param(&format!("{prefix}.bias"), [dim]));
    ln
}

/// Applies an activation.
pub fn activate<B: Backend, const D: usize>(x: Tensor<B, D>, act: Activation) -> Tensor<B, D> {
    match act {
        Activation::Gelu => gelu(x),
        Activation::QuickGelu => sdrpn_core::fast_cpu::quick_gelu(x),
    }
}

/// Softmax over the last dimension computed in f32, cast back to the input dtype.
pub fn softmax_f32<B: Backend>(scores: Tensor<B, 4>) -> Tensor<B, 4> {
    let dtype = scores.dtype();
    softmax(scores.cast(DType::F32), 3).cast(dtype)
}

/// Attention probabilities `softmax(scores * scale + bias)` over the last
/// axis, computed in f32 and cast back to the scores' dtype: fused on the
/// CPU (see [`sdrpn_core::fast_cpu`]), else with Burn's ops.
///
/// # Shapes
/// - `scores`: `[A, B, C, D]`; `bias`: `[1 or A, 1 or B, 1 or C, D]` -> `[A, B, C, D]`
pub fn scaled_softmax_f32<B: Backend>(
    scores: Tensor<B, 4>,
    scale: f64,
    bias: Option<&Tensor<B, 4>>,
) -> Tensor<B, 4> {
    match sdrpn_core::fast_cpu::scaled_softmax(scores, scale as f32, bias) {
        Ok(probs) => probs,
        Err(scores) => {
            let dtype = scores.dtype();
            let mut scores = scores * scale;
            if let Some(bias) = bias {
                scores = scores + bias.clone().cast(dtype);
            }
            softmax_f32(scores)
        }
    }
}

/// Splits `[N, T, H*hd]` into heads `[N, H, T, hd]`.
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize, head_dim: usize) -> Tensor<B, 4> {
    let [n, t, _] = x.dims();
    x.reshape([n, t, heads, head_dim]).swap_dims(1, 2)
}

/// Merges heads `[N, H, T, hd]` back into `[N, T, H*hd]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    sdrpn_core::fast_cpu::merge_heads(vec![x])
}
