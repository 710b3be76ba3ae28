//! Sink denoising: zero the grounding map at "attention sink" tokens.
//!
//! SPEC 2 step 1. Two detectors:
//! - attention proxy (default): token i is a sink when the shallow-layer
//!   sink map has `S_i >= tau` (compared as float64, like the reference);
//! - massive activations (option): token i is a sink when its RMS-normalised
//!   hidden state exceeds `threshold` in absolute value in any of the given
//!   dimensions (LLaMA-2-7B: {2533, 1415}, 13B: {2100, 4743}, threshold 20).

use crate::error::{CoreError, Result};
use crate::promote::round_up_f32;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor};
use serde::{Deserialize, Serialize};

/// How sink tokens are detected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkRule {
    /// No denoising: the grounding map is used as it is.
    Off,
    /// `S_i >= tau` on the sink attention map (paper default `tau = 1e-3`).
    AttentionProxy {
        /// Sink threshold on the sink map.
        tau: f64,
    },
    /// `|rms_norm(h_i)[d]| > threshold` for some `d` in `dims`, on the
    /// host's hidden state number `hidden_state` (HF numbering).
    MassiveActivation {
        /// Hidden dimensions that carry massive activations
        /// (LLaMA-2-7B: 2533, 1415; 13B: 2100, 4743).
        dims: Vec<usize>,
        /// Threshold on the normalised value (paper: 20).
        threshold: f64,
        /// Which hidden state of the prompt pass to look at.
        hidden_state: usize,
    },
}

impl Default for SinkRule {
    fn default() -> Self {
        SinkRule::AttentionProxy { tau: 1e-3 }
    }
}

/// Sinks by the attention proxy: `S >= tau` with float64 semantics.
///
/// # Shapes
/// - `sink_map`: `[N, P]` -> `[N, P]`
pub fn sinks_from_attention<B: Backend>(sink_map: Tensor<B, 2>, tau: f64) -> Tensor<B, 2, Bool> {
    sink_map
        .cast(DType::F32)
        .greater_equal_elem(round_up_f32(tau))
}

/// Sinks by massive activations of the hidden states at the visual tokens.
/// The states are RMS-normalised without a learned scale (`h / sqrt(mean(h^2) + eps)`).
///
/// # Shapes
/// - `hidden`: `[N, P, D]` -> `[N, P]`
pub fn sinks_from_activations<B: Backend>(
    hidden: Tensor<B, 3>,
    dims: &[usize],
    threshold: f64,
    eps: f64,
) -> Result<Tensor<B, 2, Bool>> {
    let [n, p, d] = hidden.dims();
    if dims.is_empty() {
        return Err(CoreError::config(
            "massive-activation dims",
            "no dimension given",
        ));
    }
    if let Some(&bad) = dims.iter().find(|&&x| x >= d) {
        return Err(CoreError::OutOfRange {
            what: "hidden dimension".into(),
            index: bad,
            limit: d,
        });
    }
    let h = hidden.cast(DType::F32);
    let rms = (h.clone().square().mean_dim(2) + eps).sqrt();
    let normed = h / rms;
    let idx: Vec<i64> = dims.iter().map(|&x| x as i64).collect();
    let idx = Tensor::<B, 1, Int>::from_data(idx.as_slice(), &normed.device());
    let picked = normed.select(2, idx);
    let over = picked.abs().greater_elem(threshold as f32).any_dim(2);
    Ok(over.reshape([n, p]))
}

/// `A'`: the grounding map with sink tokens set to 0.
///
/// # Shapes
/// - `grounding`: `[N, P]`, `sinks`: `[N, P]` -> `[N, P]`
pub fn denoise<B: Backend>(grounding: Tensor<B, 2>, sinks: Tensor<B, 2, Bool>) -> Tensor<B, 2> {
    grounding.cast(DType::F32).mask_fill(sinks, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::{dev, TestBackend as B};

    fn t2(v: &[f32], n: usize) -> Tensor<B, 2> {
        Tensor::<B, 1>::from_floats(v, &dev()).reshape([n, v.len() / n])
    }

    #[test]
    fn sinks_are_at_or_above_tau_in_float64() {
        // 1e-3f32 is slightly above 1e-3, so it is a sink; its predecessor is not.
        let s = t2(&[1e-3, 1e-3f32.next_down(), 0.5, 0.0], 1);
        let m = crate::readback::bools(sinks_from_attention(s, 1e-3)).unwrap();
        assert_eq!(m, vec![true, false, true, false]);
    }

    #[test]
    fn denoise_zeroes_sinks_only() {
        let a = t2(&[0.3, 0.2, 0.1, 0.4], 1);
        let s = t2(&[0.0, 0.5, 0.0, 2e-3], 1);
        let out = denoise(a, sinks_from_attention(s, 1e-3));
        assert_eq!(
            out.into_data().to_vec::<f32>().unwrap(),
            vec![0.3, 0.0, 0.1, 0.0]
        );
    }

    #[test]
    fn massive_activation_rule() {
        // Token 0: one huge value in dim 1 -> rms normalised ~ sqrt(4)=2 < 20.
        // Use 1000 dims of 1 and one of 100 to exceed 20 after normalisation.
        let d = 1000;
        let mut v = vec![1.0f32; 2 * d];
        v[5] = 100.0; // token 0, dim 5
        v[d + 7] = 100.0; // token 1, dim 7 (not watched)
        let h = Tensor::<B, 1>::from_floats(v.as_slice(), &dev()).reshape([1, 2, d]);
        let m = sinks_from_activations(h, &[5, 9], 20.0, 1e-6).unwrap();
        assert_eq!(crate::readback::bools(m).unwrap(), vec![true, false]);
        let h = Tensor::<B, 3>::zeros([1, 1, 4], &dev());
        assert!(sinks_from_activations(h, &[4], 20.0, 1e-6).is_err());
    }
}
