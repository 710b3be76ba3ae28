//! Training losses of the RPN, masked to the valid (non-ignored) tokens.
//!
//! All three reduce to the mean over valid tokens pooled over the batch, and
//! give 0 (still attached to the graph) when no token is valid.

use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};
use serde::{Deserialize, Serialize};

/// Which loss trains the RPN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LossKind {
    /// Binary cross-entropy with logits (paper default).
    #[default]
    Bce,
    /// Sigmoid focal loss (torchvision form).
    Focal {
        /// Weight of the positive class (paper option: 0.9).
        alpha: f64,
        /// Focusing exponent (paper option: 2).
        gamma: f64,
    },
    /// Mean squared error of `sigmoid(logits)` to the normalised map.
    Mse,
}

impl LossKind {
    /// The focal loss with the paper's settings.
    pub fn focal() -> Self {
        LossKind::Focal {
            alpha: 0.9,
            gamma: 2.0,
        }
    }

    /// The names [`FromStr`](std::str::FromStr) accepts.
    pub const NAMES: [&'static str; 3] = ["bce", "focal", "mse"];

    /// The loss of `logits` against `target` over the `valid` tokens.
    /// For BCE and focal the target is the 0/1 label; for MSE it is the
    /// normalised map `A' / max(A')`.
    ///
    /// # Shapes
    /// - `logits`, `target`, `valid`: `[N, P]` -> `[1]`
    pub fn loss<B: Backend>(
        &self,
        logits: Tensor<B, 2>,
        target: Tensor<B, 2>,
        valid: Tensor<B, 2, Bool>,
    ) -> Tensor<B, 1> {
        let count = valid.clone().float().sum().clamp_min(1.0);
        self.summed(logits, target, valid) / count
    }

    /// The sum of the per-token loss over the `valid` tokens: [`LossKind::loss`]
    /// before the division by their count (for normalising by the tokens of
    /// a larger batch this one is part of).
    ///
    /// # Shapes
    /// - `logits`, `target`, `valid`: `[N, P]` -> `[1]`
    pub fn summed<B: Backend>(
        &self,
        logits: Tensor<B, 2>,
        target: Tensor<B, 2>,
        valid: Tensor<B, 2, Bool>,
    ) -> Tensor<B, 1> {
        let per_token = match *self {
            LossKind::Bce => bce_elementwise(logits, target),
            LossKind::Focal { alpha, gamma } => focal_elementwise(logits, target, alpha, gamma),
            LossKind::Mse => (sigmoid(logits) - target).square(),
        };
        (per_token * valid.float()).sum()
    }
}

/// A loss by name: `bce`, `focal` (alpha 0.9, gamma 2, the paper's option)
/// or `mse`.
impl std::str::FromStr for LossKind {
    type Err = crate::error::CoreError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "bce" => Ok(LossKind::Bce),
            "focal" => Ok(LossKind::focal()),
            "mse" => Ok(LossKind::Mse),
            other => Err(crate::error::CoreError::config(
                "loss",
                format!("unknown loss {other:?}: use bce, focal or mse"),
            )),
        }
    }
}

/// Elementwise BCE with logits, stable for large |x|:
/// `-(y log s(x) + (1-y) log(1-s(x)))`, using `log(1 - s(x)) = log s(-x)`.
fn bce_elementwise<B: Backend>(logits: Tensor<B, 2>, target: Tensor<B, 2>) -> Tensor<B, 2> {
    let pos = log_sigmoid(logits.clone());
    let neg = log_sigmoid(logits.neg());
    (target.clone() * pos + (target.neg() + 1.0) * neg).neg()
}

/// Masked BCE with logits, mean over valid tokens pooled over the batch.
pub fn masked_bce_with_logits<B: Backend>(
    logits: Tensor<B, 2>,
    target: Tensor<B, 2>,
    valid: Tensor<B, 2, Bool>,
) -> Tensor<B, 1> {
    LossKind::Bce.loss(logits, target, valid)
}

/// Elementwise sigmoid focal loss: `alpha_t (1 - p_t)^gamma * BCE`, with
/// `p_t = p y + (1-p)(1-y)` and `alpha_t = alpha y + (1-alpha)(1-y)`.
fn focal_elementwise<B: Backend>(
    logits: Tensor<B, 2>,
    target: Tensor<B, 2>,
    alpha: f64,
    gamma: f64,
) -> Tensor<B, 2> {
    let p = sigmoid(logits.clone());
    let ce = bce_elementwise(logits, target.clone());
    let one_minus_t = target.clone().neg() + 1.0;
    let p_t = p.clone() * target.clone() + (p.neg() + 1.0) * one_minus_t.clone();
    let alpha_t = target * alpha + one_minus_t * (1.0 - alpha);
    let weight = (p_t.neg() + 1.0).powf_scalar(gamma) * alpha_t;
    ce * weight
}

/// Masked sigmoid focal loss, mean over valid tokens pooled over the batch.
pub fn masked_focal<B: Backend>(
    logits: Tensor<B, 2>,
    target: Tensor<B, 2>,
    valid: Tensor<B, 2, Bool>,
    alpha: f64,
    gamma: f64,
) -> Tensor<B, 1> {
    LossKind::Focal { alpha, gamma }.loss(logits, target, valid)
}

/// Masked MSE between `sigmoid(logits)` and a continuous target map.
pub fn masked_mse<B: Backend>(
    logits: Tensor<B, 2>,
    target: Tensor<B, 2>,
    valid: Tensor<B, 2, Bool>,
) -> Tensor<B, 1> {
    LossKind::Mse.loss(logits, target, valid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::{dev, TestBackend as B};

    fn t(v: &[f32]) -> Tensor<B, 2> {
        Tensor::<B, 1>::from_floats(v, &dev()).reshape([1, v.len()])
    }
    fn m(v: &[bool]) -> Tensor<B, 2, Bool> {
        Tensor::<B, 1, Bool>::from_data(v, &dev()).reshape([1, v.len()])
    }
    fn scalar(x: Tensor<B, 1>) -> f64 {
        x.into_scalar() as f64
    }

    #[test]
    fn losses_parse_by_name_and_unknown_names_are_refused() {
        for name in LossKind::NAMES {
            assert!(name.parse::<LossKind>().is_ok(), "{name}");
        }
        assert_eq!("focal".parse::<LossKind>().unwrap(), LossKind::focal());
        assert_eq!("mse".parse::<LossKind>().unwrap(), LossKind::Mse);
        let err = "dice".parse::<LossKind>().unwrap_err().to_string();
        assert!(
            err.contains("\"dice\"") && err.contains("bce, focal or mse"),
            "{err}"
        );
    }

    #[test]
    fn bce_matches_hand_values_and_skips_ignored() {
        // x=0 -> ln 2 for either target; x=2,y=1 -> ln(1+e^-2) = 0.126928.
        let l = scalar(masked_bce_with_logits(
            t(&[0.0, 2.0, 50.0]),
            t(&[1.0, 1.0, 0.0]),
            m(&[true, true, false]),
        ));
        let want = (std::f64::consts::LN_2 + (1.0 + (-2.0f64).exp()).ln()) / 2.0;
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
    }

    #[test]
    fn bce_is_stable_for_large_logits() {
        let l = scalar(masked_bce_with_logits(
            t(&[-100.0, 100.0]),
            t(&[1.0, 0.0]),
            m(&[true, true]),
        ));
        assert!((l - 100.0).abs() < 1e-3, "{l}");
    }

    #[test]
    fn mean_pools_over_the_batch() {
        // Sample 0 has 1 valid token (ln 2), sample 1 has 3 valid tokens of 0 loss-ish.
        let logits = Tensor::<B, 2>::from_floats([[0.0, 0.0, 0.0], [60.0, 60.0, 60.0]], &dev());
        let target = Tensor::<B, 2>::from_floats([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]], &dev());
        let valid =
            Tensor::<B, 2, Bool>::from_data([[true, false, false], [true, true, true]], &dev());
        let l = scalar(masked_bce_with_logits(logits, target, valid));
        assert!((l - std::f64::consts::LN_2 / 4.0).abs() < 1e-6, "{l}");
    }

    #[test]
    fn no_valid_token_gives_zero() {
        for kind in [LossKind::Bce, LossKind::focal(), LossKind::Mse] {
            let l = scalar(kind.loss(t(&[1.0, -3.0]), t(&[1.0, 0.0]), m(&[false, false])));
            assert_eq!(l, 0.0, "{kind:?}");
        }
    }

    #[test]
    fn focal_matches_torchvision_formula() {
        // x = 0: p = 0.5, ce = ln 2, (1 - p_t)^2 = 0.25; alpha_t = 0.9 (y=1) or 0.1 (y=0).
        let l = scalar(masked_focal(
            t(&[0.0, 0.0]),
            t(&[1.0, 0.0]),
            m(&[true, true]),
            0.9,
            2.0,
        ));
        let want = std::f64::consts::LN_2 * 0.25 * (0.9 + 0.1) / 2.0;
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
        // A confident correct prediction is down-weighted far below BCE.
        let f = scalar(masked_focal(t(&[3.0]), t(&[1.0]), m(&[true]), 0.9, 2.0));
        let b = scalar(masked_bce_with_logits(t(&[3.0]), t(&[1.0]), m(&[true])));
        let p = 1.0 / (1.0 + (-3.0f64).exp());
        assert!((f - 0.9 * (1.0 - p).powi(2) * b).abs() < 1e-6);
    }

    #[test]
    fn mse_compares_probabilities_to_the_map() {
        let l = scalar(masked_mse(
            t(&[0.0, 0.0]),
            t(&[1.0, 0.25]),
            m(&[true, true]),
        ));
        assert!((l - (0.25 + 0.0625) / 2.0).abs() < 1e-6, "{l}");
    }
}
