//! Pseudo-labels from a denoised grounding map (SPEC 2, steps 2 to 6).
//!
//! With `m = max(A')` per sample:
//! - foreground `F = {i : A'_i > fg_ratio * m}`;
//! - the tight inclusive row/column box of `F` (the whole grid when `F` is empty);
//! - background `B = {i outside the box : A'_i < bg_ratio * m}`;
//! - everything else is ignored;
//! - when the box covers `reject_ratio` of the grid or more, the whole sample
//!   is ignored.
//!
//! Comparisons are strict and run with float64 semantics on float32 maps,
//! as in the reference code (see [`crate::promote`]).

use crate::error::{CoreError, Result};
use crate::grid::Grid;
use crate::promote::{round_down_f32, round_up_f32};
use crate::readback::{bools, floats};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// The label of one visual token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Label {
    /// Part of the region of interest (target 1).
    Foreground,
    /// Certainly not part of it (target 0).
    Background,
    /// Left out of the loss (the reference code's -100).
    Ignore,
}

/// The thresholds of label construction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabelConfig {
    /// Foreground: `A'_i > fg_ratio * max(A')` (paper: 0.2).
    pub fg_ratio: f64,
    /// Background: `A'_i < bg_ratio * max(A')` outside the box (paper: 0.1).
    pub bg_ratio: f64,
    /// Reject the sample when box area >= `reject_ratio` * grid size (paper: 0.5).
    pub reject_ratio: f64,
}

impl Default for LabelConfig {
    fn default() -> Self {
        Self {
            fg_ratio: 0.2,
            bg_ratio: 0.1,
            reject_ratio: 0.5,
        }
    }
}

impl LabelConfig {
    /// Checks the ratios are usable.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("fg_ratio", self.fg_ratio),
            ("bg_ratio", self.bg_ratio),
            ("reject_ratio", self.reject_ratio),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(CoreError::config(
                    name,
                    format!("must be a finite non-negative number, got {v}"),
                ));
            }
        }
        if self.bg_ratio > self.fg_ratio {
            return Err(CoreError::config(
                "bg_ratio",
                format!(
                    "({}) must not exceed fg_ratio ({})",
                    self.bg_ratio, self.fg_ratio
                ),
            ));
        }
        Ok(())
    }
}

/// Labels of a batch of samples, as tensors ready for a loss.
#[derive(Debug, Clone)]
pub struct LabelBatch<B: Backend> {
    /// 1.0 at foreground tokens, 0.0 elsewhere. `[N, P]`
    pub target: Tensor<B, 2>,
    /// True where the token takes part in the loss (foreground or background
    /// of a sample that was not rejected). `[N, P]`
    pub valid: Tensor<B, 2, Bool>,
    /// True for samples whose box covered `reject_ratio` of the grid. `[N]`
    pub rejected: Tensor<B, 1, Bool>,
}

impl<B: Backend> LabelBatch<B> {
    /// The labels as plain values, one `Vec` per sample.
    pub fn to_labels(&self) -> Vec<Vec<Label>> {
        let [n, p] = self.target.dims();
        let target = floats(self.target.clone()).unwrap_or_default();
        let valid = bools(self.valid.clone()).unwrap_or_default();
        (0..n)
            .map(|s| {
                (0..p)
                    .map(|i| match (valid[s * p + i], target[s * p + i] > 0.5) {
                        (false, _) => Label::Ignore,
                        (true, true) => Label::Foreground,
                        (true, false) => Label::Background,
                    })
                    .collect()
            })
            .collect()
    }
}

/// Builds labels for `N` samples from their denoised grounding maps.
///
/// # Shapes
/// - `denoised`: `[N, P]` with `P = grid.len()`, non-negative, finite.
pub fn build_labels<B: Backend>(
    denoised: Tensor<B, 2>,
    grid: Grid,
    config: &LabelConfig,
) -> Result<LabelBatch<B>> {
    config.validate()?;
    let [n, p] = denoised.dims();
    grid.check_len("grounding map", p)?;
    let device = denoised.device();
    let a = denoised.cast(DType::F32);

    check_finite("grounding map", &a)?;
    // Per-sample maxima, read back so thresholds are computed in float64.
    let maxima = floats(a.clone().max_dim(1))?;
    let thresholds = |ratio: f64, round: fn(f64) -> f32| -> Tensor<B, 2> {
        let v: Vec<f32> = maxima.iter().map(|&m| round(ratio * m as f64)).collect();
        Tensor::<B, 1>::from_data(TensorData::new(v, [n]), &device)
            .reshape([n, 1])
            .expand([n, p])
    };
    let fg = a
        .clone()
        .greater(thresholds(config.fg_ratio, round_down_f32));
    let low = a.lower(thresholds(config.bg_ratio, round_up_f32));

    // Tight box of the foreground; the whole grid when there is none.
    let (rows, cols) = (grid.rows, grid.cols);
    let fg3 = fg.clone().reshape([n, rows, cols]);
    let (r0, r1) = span(fg3.clone().any_dim(2).reshape([n, rows]), rows);
    let (c0, c1) = span(fg3.any_dim(1).reshape([n, cols]), cols);
    let row_idx = Tensor::<B, 1, Int>::arange(0..rows as i64, &device)
        .float()
        .reshape([1, rows, 1])
        .expand([n, rows, cols]);
    let col_idx = Tensor::<B, 1, Int>::arange(0..cols as i64, &device)
        .float()
        .reshape([1, 1, cols])
        .expand([n, rows, cols]);
    let within = |idx: Tensor<B, 3>, lo: &Tensor<B, 1>, hi: &Tensor<B, 1>| {
        let lo = lo.clone().reshape([n, 1, 1]).expand([n, rows, cols]);
        let hi = hi.clone().reshape([n, 1, 1]).expand([n, rows, cols]);
        idx.clone().greater_equal(lo).bool_and(idx.lower_equal(hi))
    };
    let inside = within(row_idx, &r0, &r1)
        .bool_and(within(col_idx, &c0, &c1))
        .reshape([n, p]);
    let area = (r1 - r0 + 1.0) * (c1 - c0 + 1.0);
    let limit = (config.reject_ratio * p as f64).ceil() as f32;
    let rejected = area.greater_equal_elem(limit);

    let background = inside.bool_not().bool_and(low);
    let kept = rejected.clone().bool_not().reshape([n, 1]).expand([n, p]);
    let valid = fg.clone().bool_or(background).bool_and(kept);
    Ok(LabelBatch {
        target: fg.float(),
        valid,
        rejected,
    })
}

/// First and last true index along dim 1 of `[N, len]`, as floats; `(0, len-1)`
/// for rows with no true entry.
fn span<B: Backend>(mask: Tensor<B, 2, Bool>, len: usize) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [n, _] = mask.dims();
    let device = mask.device();
    let idx = Tensor::<B, 1, Int>::arange(0..len as i64, &device)
        .float()
        .reshape([1, len])
        .expand([n, len]);
    let none = mask.clone().any_dim(1).bool_not().reshape([n]);
    let first = idx
        .clone()
        .mask_fill(mask.clone().bool_not(), len as f32)
        .min_dim(1)
        .reshape([n])
        .mask_fill(none.clone(), 0.0);
    let last = idx
        .mask_fill(mask.bool_not(), -1.0)
        .max_dim(1)
        .reshape([n])
        .mask_fill(none, (len - 1) as f32);
    (first, last)
}

/// Fails with [`CoreError::NonFinite`] naming the first NaN or infinite entry
/// of `map` (`[N, P]`) by sample and token.
pub fn check_finite<B: Backend>(what: &str, map: &Tensor<B, 2>) -> Result<()> {
    let [_, p] = map.dims();
    let bad = map.clone().is_finite().bool_not();
    let flags = bools(bad)?;
    let Some(first) = flags.iter().position(|&b| b) else {
        return Ok(());
    };
    Err(CoreError::NonFinite {
        what: format!("{what} of sample {}", first / p),
        index: first % p,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::{dev, TestBackend as B};
    use Label::{Background as Bg, Foreground as Fg, Ignore as Ig};

    fn labels(map: &[f32], grid: Grid) -> Vec<Label> {
        let a = Tensor::<B, 1>::from_floats(map, &dev()).reshape([1, map.len()]);
        build_labels(a, grid, &LabelConfig::default())
            .unwrap()
            .to_labels()
            .remove(0)
    }

    #[test]
    fn foreground_box_background_and_ignore() {
        // 4x4 grid. Max 1.0. Foreground > 0.2, background < 0.1 outside the box.
        #[rustfmt::skip]
        let map = [
            0.00, 0.05, 0.00, 0.00,
            0.00, 1.00, 0.15, 0.00,
            0.00, 0.15, 0.30, 0.15,
            0.00, 0.00, 0.15, 0.00,
        ];
        // Box = rows 1..=2, cols 1..=2 (area 4 < 8).
        #[rustfmt::skip]
        let want = [
            Bg, Bg, Bg, Bg,
            Bg, Fg, Ig, Bg,
            Bg, Ig, Fg, Ig,
            Bg, Bg, Ig, Bg,
        ];
        assert_eq!(labels(&map, Grid::new(4, 4).unwrap()), want);
    }

    #[test]
    fn comparisons_are_strict_with_float64_promotion() {
        // 4x4, max 1. 0.2f32 > 0.2 (float64), so it is foreground; a value
        // just below 0.2 as f64 is not. Exactly 0.1 * 2.0 = 0.2 in binary? no:
        // use max 1.0 and value 0.1f32 (> 0.1 in float64) -> not background.
        let mut map = [0.0f32; 16];
        map[0] = 1.0;
        map[1] = 0.2;
        map[15] = 0.1; // outside the box, 0.1f32 > 0.1: ignore, not background
        map[14] = 0.1f32.next_down(); // < 0.1 -> background
        map[13] = 0.2f32.next_down(); // 0.19999999 < 0.2 -> not foreground
        let l = labels(&map, Grid::new(4, 4).unwrap());
        assert_eq!(&l[0..2], &[Fg, Fg]);
        assert_eq!(l[13], Ig, "between the thresholds, outside the box");
        assert_eq!(l[14], Bg);
        assert_eq!(l[15], Ig);
    }

    #[test]
    fn exact_threshold_values_are_neither_side() {
        // max 0.5 (exact in binary): 0.2 * 0.5 = 0.1 in float64; a float32 value
        // equal to the float64 0.1 does not exist, so use max = 1.25:
        // 0.2 * 1.25 = 0.25 exactly, 0.1 * 1.25 = 0.125 exactly.
        let mut map = [0.0f32; 16];
        map[0] = 1.25;
        map[5] = 0.25; // exactly 0.2 * max: not foreground
        map[15] = 0.125; // exactly 0.1 * max outside the box: not background
        let l = labels(&map, Grid::new(4, 4).unwrap());
        assert_eq!(l[0], Fg);
        assert_eq!(l[5], Ig);
        assert_eq!(l[15], Ig);
        assert_eq!(l[3], Bg);
    }

    #[test]
    fn box_area_at_the_reject_limit_rejects_the_sample() {
        // 4x4 grid, rho 0.5 -> limit 8 cells. A 2x4 box (area 8) is rejected,
        // a 2x3 box (area 6) is kept.
        let mut map = [0.0f32; 16];
        map[0] = 1.0;
        map[7] = 1.0; // rows 0..=1, cols 0..=3 -> area 8
        assert!(labels(&map, Grid::new(4, 4).unwrap())
            .iter()
            .all(|&l| l == Ig));
        let mut map = [0.0f32; 16];
        map[0] = 1.0;
        map[6] = 1.0; // rows 0..=1, cols 0..=2 -> area 6
        let l = labels(&map, Grid::new(4, 4).unwrap());
        assert_eq!(l[0], Fg);
        assert_eq!(l[15], Bg);
    }

    #[test]
    fn zero_constant_and_all_sink_maps_are_all_ignore() {
        let g = Grid::new(3, 3).unwrap();
        // all zero (also what an all-sink map becomes after denoising): empty
        // foreground -> full box -> rejected.
        assert!(labels(&[0.0; 9], g).iter().all(|&l| l == Ig));
        // constant: nothing is strictly above 0.2 * max... every cell is
        // foreground (c > 0.2c), the box is the full grid -> rejected.
        assert!(labels(&[0.3; 9], g).iter().all(|&l| l == Ig));
    }

    #[test]
    fn an_all_sink_map_denoises_to_an_all_ignore_sample() {
        use crate::denoise::{denoise, sinks_from_attention};
        let g = Grid::new(3, 3).unwrap();
        let a = Tensor::<B, 1>::from_floats([0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], &dev())
            .reshape([1, 9]);
        let s = Tensor::<B, 2>::ones([1, 9], &dev()) * 0.01; // every token >= tau
        let clean = denoise(a, sinks_from_attention(s, 1e-3));
        let labels = build_labels(clean, g, &LabelConfig::default()).unwrap();
        assert!(labels.to_labels()[0].iter().all(|&l| l == Ig));
        assert_eq!(bools(labels.rejected).unwrap(), vec![true]);
    }

    #[test]
    fn sinks_inside_the_box_are_ignored_and_outside_are_background() {
        use crate::denoise::{denoise, sinks_from_attention};
        // 4x4: foreground at (1,1) and (2,2); sinks at (1,2) (inside the box)
        // and (3,3) (outside), both with high grounding that denoising removes.
        let mut a = [0.0f32; 16];
        a[5] = 1.0;
        a[10] = 1.0;
        a[6] = 0.9;
        a[15] = 0.9;
        let mut s = [0.0f32; 16];
        s[6] = 0.5;
        s[15] = 0.5;
        let a = Tensor::<B, 1>::from_floats(a, &dev()).reshape([1, 16]);
        let s = Tensor::<B, 1>::from_floats(s, &dev()).reshape([1, 16]);
        let l = build_labels(
            denoise(a, sinks_from_attention(s, 1e-3)),
            Grid::new(4, 4).unwrap(),
            &LabelConfig::default(),
        )
        .unwrap()
        .to_labels()
        .remove(0);
        assert_eq!((l[5], l[10]), (Fg, Fg));
        assert_eq!(l[6], Ig, "a sink inside the box");
        assert_eq!(l[15], Bg, "a sink outside the box");
    }

    #[test]
    fn batch_samples_are_independent() {
        let g = Grid::new(3, 3).unwrap();
        let mut v = vec![0.0f32; 18];
        v[4] = 1.0; // sample 0: centre
        v[9] = 2.0; // sample 1: top-left
        let a = Tensor::<B, 1>::from_floats(v.as_slice(), &dev()).reshape([2, 9]);
        let b = build_labels(a, g, &LabelConfig::default()).unwrap();
        let l = b.to_labels();
        assert_eq!(l[0][4], Fg);
        assert_eq!(l[0].iter().filter(|&&x| x == Bg).count(), 8);
        assert_eq!(l[1][0], Fg);
        assert_eq!(l[1][8], Bg);
        assert_eq!(bools(b.rejected).unwrap(), vec![false, false]);
    }

    #[test]
    fn nan_is_a_clear_error() {
        let g = Grid::new(2, 2).unwrap();
        let a = Tensor::<B, 1>::from_floats([0.1, f32::NAN, 0.2, 0.3], &dev()).reshape([1, 4]);
        let e = build_labels(a, g, &LabelConfig::default()).unwrap_err();
        assert!(matches!(e, CoreError::NonFinite { index: 1, .. }), "{e}");
    }

    #[test]
    fn wrong_grid_size_is_an_error() {
        let a = Tensor::<B, 2>::zeros([1, 5], &dev());
        assert!(build_labels(a, Grid::new(2, 2).unwrap(), &LabelConfig::default()).is_err());
    }
}
