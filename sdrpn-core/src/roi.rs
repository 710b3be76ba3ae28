//! From the RPN's probability map to what pass 2 crops (SPEC 4, step 1-3).
//!
//! Blur, threshold, components, size rules, then the decision:
//! - 0 boxes: no crop (pass 2 is the plain baseline);
//! - 1 box: crop that box and append all crop tokens;
//! - 2+ boxes: crop the union box of the whole thresholded map, resize the
//!   map inside it to the grid (bilinear, align_corners false), keep the crop
//!   tokens where it is > 0.5, in raster order.

use crate::blur::gaussian_blur3;
use crate::components::{connected_components, SizeRules, TokenBox};
use crate::error::{CoreError, Result};
use crate::grid::Grid;
use crate::labels::check_finite;
use crate::promote::round_down_f32;
use crate::readback::floats;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// Settings of RoI extraction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoiConfig {
    /// Threshold on the blurred probability map (`> t`); paper default 0.15.
    pub threshold: f64,
    /// Sigma of the 3x3 Gaussian blur (1).
    pub sigma: f64,
    /// Per-component size rules.
    pub size_rules: SizeRules,
    /// From this many boxes on, the union mask is used instead of one box (2).
    pub mask_from_boxes: usize,
    /// Ambiguity resolution for several boxes: true (the paper) keeps only
    /// the crop tokens under the resized mask; false (ablation) crops the
    /// union box and keeps all its tokens.
    pub multi_box_mask: bool,
}

impl Default for RoiConfig {
    fn default() -> Self {
        Self {
            threshold: 0.15,
            sigma: 1.0,
            size_rules: SizeRules::default(),
            mask_from_boxes: 2,
            multi_box_mask: true,
        }
    }
}

/// How pass 2 uses the RoI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoiMode {
    /// No box survived: answer from the global image only.
    None,
    /// One box: all crop tokens.
    Bbox,
    /// Several boxes: the union box, only the tokens under the mask.
    Mask,
}

/// The outcome of RoI extraction for one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct RoiSelection {
    /// What pass 2 does.
    pub mode: RoiMode,
    /// Boxes of the components that survived the size rules.
    pub boxes: Vec<TokenBox>,
    /// The box to crop (`None` in mode `None`).
    pub crop: Option<TokenBox>,
    /// Which of the crop's grid tokens to keep (`None`: all of them).
    pub keep: Option<Vec<bool>>,
    /// The blurred map, `grid.len()` values.
    pub blurred: Vec<f32>,
    /// The thresholded map.
    pub mask: Vec<bool>,
}

/// Checks an RoI threshold: the map is a probability, so a threshold at or
/// above 1 never selects anything and one below 0 selects the whole grid.
pub fn check_threshold(threshold: f64) -> Result<()> {
    if (0.0..1.0).contains(&threshold) {
        Ok(())
    } else {
        Err(CoreError::config(
            "threshold",
            format!("must be in [0, 1) (the RoI map is a probability), got {threshold}"),
        ))
    }
}

impl RoiConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        check_threshold(self.threshold)?;
        if self.mask_from_boxes < 2 {
            return Err(CoreError::config("mask_from_boxes", "must be at least 2"));
        }
        Ok(())
    }

    /// Extracts the RoI of one probability map.
    ///
    /// # Shapes
    /// - `probs`: `[P]`, `sigmoid` of the RPN logits, `P = grid.len()`
    pub fn select<B: Backend>(&self, probs: Tensor<B, 1>, grid: Grid) -> Result<RoiSelection> {
        self.validate()?;
        let [p] = probs.dims();
        grid.check_len("RoI map", p)?;
        let probs = probs.cast(DType::F32).reshape([1, p]);
        check_finite("RoI map", &probs)?;
        let blurred = gaussian_blur3(probs.reshape([1, grid.rows, grid.cols]), self.sigma)?;
        let blurred = floats(blurred.reshape([p]))?;
        Ok(self.select_blurred(blurred, grid))
    }

    /// The decision on an already blurred map.
    pub fn select_blurred(&self, blurred: Vec<f32>, grid: Grid) -> RoiSelection {
        let t = round_down_f32(self.threshold);
        let mask: Vec<bool> = blurred.iter().map(|&v| v > t).collect();
        let boxes: Vec<TokenBox> = connected_components(&mask, grid)
            .iter()
            .filter_map(|c| self.size_rules.apply(c, grid))
            .collect();
        let (mode, crop, keep) = match boxes.len() {
            0 => (RoiMode::None, None, None),
            n if n < self.mask_from_boxes => (RoiMode::Bbox, Some(boxes[0]), None),
            _ => {
                let union = TokenBox::of_mask(&mask, grid).expect("boxes imply a non-empty mask");
                if self.multi_box_mask {
                    let keep = resize_mask_to_grid(&mask, grid, union);
                    (RoiMode::Mask, Some(union), Some(keep))
                } else {
                    (RoiMode::Bbox, Some(union), None)
                }
            }
        };
        RoiSelection {
            mode,
            boxes,
            crop,
            keep,
            blurred,
            mask,
        }
    }
}

/// The part of `mask` inside `region`, resized to the whole grid with
/// bilinear interpolation (align_corners false, as `torch.nn.functional.
/// interpolate`) and thresholded at `> 0.5`.
pub fn resize_mask_to_grid(mask: &[bool], grid: Grid, region: TokenBox) -> Vec<bool> {
    resize_mask_to(mask, grid, region, grid)
}

/// [`resize_mask_to_grid`] onto another grid, `target` (the crop's own
/// grid on hosts whose crops are encoded at their own size).
pub fn resize_mask_to(mask: &[bool], grid: Grid, region: TokenBox, target: Grid) -> Vec<bool> {
    let (in_h, in_w) = (region.height(), region.width());
    let value = |r: usize, c: usize| -> f32 {
        if mask[grid.index(region.y0 + r, region.x0 + c)] {
            1.0
        } else {
            0.0
        }
    };
    let ys: Vec<_> = (0..target.rows)
        .map(|o| bilinear_source(o, in_h, target.rows))
        .collect();
    let xs: Vec<_> = (0..target.cols)
        .map(|o| bilinear_source(o, in_w, target.cols))
        .collect();
    let mut out = Vec::with_capacity(target.len());
    for &(y0, y1, ly) in &ys {
        for &(x0, x1, lx) in &xs {
            let top = (1.0 - lx) * value(y0, x0) + lx * value(y0, x1);
            let bottom = (1.0 - lx) * value(y1, x0) + lx * value(y1, x1);
            out.push((1.0 - ly) * top + ly * bottom > 0.5);
        }
    }
    out
}

/// Source indices and weight of output index `o` when resizing `input`
/// cells to `output` (half-pixel centres, negative coordinates clamped to 0).
fn bilinear_source(o: usize, input: usize, output: usize) -> (usize, usize, f32) {
    let scale = input as f32 / output as f32;
    let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (src as usize).min(input - 1);
    let i1 = if i0 + 1 < input { i0 + 1 } else { i0 };
    (i0, i1, src - i0 as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::{dev, TestBackend as B};

    fn g() -> Grid {
        Grid::llava_1_5()
    }

    fn probs(hot: &[(usize, usize)], value: f32) -> Tensor<B, 1> {
        let mut v = vec![0.0f32; g().len()];
        for &(r, c) in hot {
            v[g().index(r, c)] = value;
        }
        Tensor::from_floats(v.as_slice(), &dev())
    }

    fn block(r0: usize, c0: usize, h: usize, w: usize) -> Vec<(usize, usize)> {
        (r0..r0 + h)
            .flat_map(|r| (c0..c0 + w).map(move |c| (r, c)))
            .collect()
    }

    #[test]
    fn nothing_above_threshold_means_no_crop() {
        let s = RoiConfig::default().select(probs(&[], 0.0), g()).unwrap();
        assert_eq!(s.mode, RoiMode::None);
        assert!(s.crop.is_none() && s.boxes.is_empty());
    }

    #[test]
    fn one_block_gives_one_box() {
        // A 4x4 block of 1.0: the blur spreads it by one cell at weight
        // >= 0.27*0.73 > 0.15 on the sides, so the component is 6x6.
        let s = RoiConfig::default()
            .select(probs(&block(5, 7, 4, 4), 1.0), g())
            .unwrap();
        assert_eq!(s.mode, RoiMode::Bbox);
        assert_eq!(
            s.crop,
            Some(TokenBox {
                x0: 6,
                y0: 4,
                x1: 12,
                y1: 10
            })
        );
        assert!(s.keep.is_none());
    }

    #[test]
    fn blur_joins_blocks_one_cell_apart() {
        let mut hot = block(5, 5, 3, 3);
        hot.extend(block(5, 9, 3, 3)); // gap column 8
        let s = RoiConfig::default().select(probs(&hot, 1.0), g()).unwrap();
        // Rows 5..8, columns 5..8 and 9..12, each grown by one cell by the
        // blur (as in `one_block_gives_one_box`), and the gap column 8 lit
        // from both sides: one component, rows 4..9, columns 4..13.
        let joined = TokenBox {
            x0: 4,
            y0: 4,
            x1: 13,
            y1: 9,
        };
        assert_eq!(s.boxes, vec![joined]);
        assert_eq!(s.mode, RoiMode::Bbox);
        assert_eq!(s.crop, Some(joined));
        assert!(s.keep.is_none());
    }

    #[test]
    fn two_components_use_the_union_mask() {
        let mut hot = block(2, 2, 3, 3);
        hot.extend(block(15, 15, 3, 3));
        let s = RoiConfig::default().select(probs(&hot, 1.0), g()).unwrap();
        assert_eq!(s.mode, RoiMode::Mask);
        assert_eq!(s.boxes.len(), 2);
        // Union of the thresholded map: blocks grown by one cell.
        assert_eq!(
            s.crop,
            Some(TokenBox {
                x0: 1,
                y0: 1,
                x1: 19,
                y1: 19
            })
        );
        let keep = s.keep.unwrap();
        // Near the union's corners sit the two blocks: kept; the other corners are empty.
        assert!(keep[g().index(1, 1)] && keep[g().index(22, 22)]);
        assert!(!keep[g().index(23, 0)] && !keep[g().index(0, 23)]);
    }

    #[test]
    fn without_ambiguity_resolution_two_components_crop_the_whole_union() {
        let mut hot = block(2, 2, 3, 3);
        hot.extend(block(15, 15, 3, 3));
        let cfg = RoiConfig {
            multi_box_mask: false,
            ..RoiConfig::default()
        };
        let s = cfg.select(probs(&hot, 1.0), g()).unwrap();
        assert_eq!(s.mode, RoiMode::Bbox);
        assert_eq!(
            s.crop,
            Some(TokenBox {
                x0: 1,
                y0: 1,
                x1: 19,
                y1: 19
            })
        );
        assert!(s.keep.is_none());
    }

    #[test]
    fn a_dropped_component_still_counts_in_the_union() {
        // Two kept blocks plus a single cell hot enough to survive the blur
        // threshold alone: its component has size 1 and is dropped, but the
        // union mask spans it.
        let mut hot = block(2, 2, 3, 3);
        hot.extend(block(2, 10, 3, 3));
        let cfg = RoiConfig {
            threshold: 0.15,
            ..RoiConfig::default()
        };
        let mut p = probs(&hot, 1.0).into_data().to_vec::<f32>().unwrap();
        p[g().index(20, 20)] = 0.8; // centre after blur: 0.8 * 0.452^2 = 0.163 > 0.15, neighbours < 0.15
        let s = cfg
            .select(Tensor::<B, 1>::from_floats(p.as_slice(), &dev()), g())
            .unwrap();
        assert_eq!(s.boxes.len(), 2);
        assert_eq!(s.crop.unwrap().y1, 21);
        assert_eq!(s.crop.unwrap().x1, 21);
    }

    #[test]
    fn mask_resize_matches_torch_bilinear() {
        // A 2x2 region with one true cell at top-left, resized to 4x4 (scale 0.5):
        // rows/cols 0..1 map to source 0 fully (clamped) or 0.25: values
        // 1, 0.75, 0.25, 0 along each axis -> > 0.5 keeps the top-left 2x2.
        let grid = Grid::new(4, 4).unwrap();
        let mut mask = vec![false; 16];
        mask[0] = true;
        let keep = resize_mask_to_grid(
            &mask,
            grid,
            TokenBox {
                x0: 0,
                y0: 0,
                x1: 2,
                y1: 2,
            },
        );
        let kept: Vec<usize> = keep
            .iter()
            .enumerate()
            .filter(|(_, &k)| k)
            .map(|(i, _)| i)
            .collect();
        // (0,0)=1, (0,1)=0.75, (1,0)=0.75, (1,1)=0.5625 -> all four kept.
        assert_eq!(kept, vec![0, 1, 4, 5]);
    }

    #[test]
    fn nan_maps_are_rejected() {
        let mut v = vec![0.0f32; g().len()];
        v[3] = f32::NAN;
        let e = RoiConfig::default()
            .select(Tensor::<B, 1>::from_floats(v.as_slice(), &dev()), g())
            .unwrap_err();
        assert!(matches!(e, CoreError::NonFinite { index: 3, .. }), "{e}");
    }

    #[test]
    fn thresholds_outside_the_probability_range_are_rejected() {
        for bad in [1.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
            let config = RoiConfig {
                threshold: bad,
                ..RoiConfig::default()
            };
            let e = config.validate().unwrap_err().to_string();
            assert!(
                e.contains("threshold") && e.contains("[0, 1)"),
                "{bad}: {e}"
            );
        }
        for good in [0.0, 0.15, 0.99] {
            let config = RoiConfig {
                threshold: good,
                ..RoiConfig::default()
            };
            assert!(config.validate().is_ok(), "{good}");
        }
    }
}
