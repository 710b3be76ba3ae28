//! ViCrop's training-free RoI (Zhang et al., "MLLMs know where to look",
//! ICLR 2025), the comparison method of the SD-RPN paper: an attention map of
//! the frozen model ([`relative_attention`], [`head_mean_row`]) and ViCrop's
//! adaptive square crop around its peak ([`vicrop_box`]).
//!
//! Every rule follows the reference code, saccharomycetes/mllms_know at
//! a64c5d5 (`llava_methods.py` = LM, `utils.py` = U); `docs/VICROP.md` lists
//! them with their lines and says where this crate's hosts differ.

use crate::crop::PixelBox;
use crate::error::{CoreError, Result};
use crate::grid::Grid;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use std::ops::Range;

/// The box sizes ViCrop tries, as multiples of the base size (U:78).
pub const RATIOS: [f64; 6] = [1.0, 1.2, 1.4, 1.6, 1.8, 2.0];

/// The generic question whose map rel-att divides by (`run.py`:51).
pub const GENERIC_QUESTION: &str = "Write a general description of the image.";

/// The attention of query row `query` to the `visual` keys, averaged over
/// heads (LM:80: `attentions[layer][0, :, -1, pos:pos+576].mean(dim=0)`):
/// softmax weights over the whole sequence, not renormalised.
///
/// # Shapes
/// - `probs`: `[1, H, T, S]` post-softmax attention of one layer -> `P` values
pub fn head_mean_row<B: Backend>(
    probs: Tensor<B, 4>,
    query: usize,
    visual: Range<usize>,
) -> Tensor<B, 1> {
    let [_, heads, _, _] = probs.dims();
    let p = visual.len();
    probs
        .slice([0..1, 0..heads, query..query + 1, visual])
        .mean_dim(1)
        .reshape([p])
}

/// rel-att (LM:89): the question's map divided by the generic question's,
/// elementwise, with no epsilon and no normalisation. A generic weight that
/// underflowed to zero is read as the smallest positive `f32` (ViCrop's code
/// would divide by zero there), so the ratio stays finite.
pub fn relative_attention(question: &[f32], generic: &[f32]) -> Result<Vec<f32>> {
    if question.len() != generic.len() {
        return Err(CoreError::config(
            "rel-att maps",
            format!(
                "the question's map has {} values, the generic one {}",
                question.len(),
                generic.len()
            ),
        ));
    }
    crate::error::ensure_finite("question attention map", question)?;
    crate::error::ensure_finite("generic attention map", generic)?;
    Ok(question
        .iter()
        .zip(generic)
        .map(|(&q, &g)| q / g.max(f32::MIN_POSITIVE))
        .collect())
}

/// The window ViCrop's adaptive rule picks on a map, in grid cells.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// Left column of the window.
    pub x: usize,
    /// Top row of the window.
    pub y: usize,
    /// Width in cells.
    pub cols: usize,
    /// Height in cells.
    pub rows: usize,
    /// The chosen ratio (one of [`RATIOS`]).
    pub ratio: f64,
}

/// ViCrop's adaptive window (U:78-129): for each ratio `r` a window of
/// `int(base * r / cell)` cells a side (at most the grid) slides with stride
/// 1; its best position has the largest summed map (first on ties, columns
/// outer, rows inner); the ratio whose best window stands out most from its
/// four neighbouring positions, per cell (`(best - mean(neighbours)) /
/// cells`), wins (first on ties). `None` when even the ratio-1 window covers
/// the whole grid: ViCrop then crops the whole image (U:92-96).
///
/// `cell` is the source-image pixels one grid cell spans on each axis.
pub fn adaptive_window(
    map: &[f32],
    grid: Grid,
    cell: (f64, f64),
    base: f64,
) -> Result<Option<Window>> {
    grid.check_len("ViCrop map", map.len())?;
    crate::error::ensure_finite("ViCrop map", map)?;
    if !(cell.0 > 0.0 && cell.1 > 0.0 && base > 0.0) {
        return Err(CoreError::config(
            "ViCrop geometry",
            format!("cell {cell:?} and base box {base} must be positive"),
        ));
    }
    let at = |x: usize, y: usize| map[y * grid.cols + x] as f64;
    let mut best: Option<(f64, Window)> = None;
    for ratio in RATIOS {
        let side = base * ratio;
        let bx = ((side / cell.0) as usize).clamp(1, grid.cols);
        let by = ((side / cell.1) as usize).clamp(1, grid.rows);
        if grid.cols - bx < 1 && grid.rows - by < 1 {
            if ratio == 1.0 {
                return Ok(None);
            }
            // Larger ratios cover the grid too (U:95: `continue`).
            continue;
        }
        let (nx, ny) = (grid.cols - bx + 1, grid.rows - by + 1);
        let mut sums = vec![0.0f64; nx * ny];
        let mut top = (f64::NEG_INFINITY, 0, 0);
        for x in 0..nx {
            for y in 0..ny {
                let s: f64 = (y..y + by)
                    .map(|r| (x..x + bx).map(|c| at(c, r)).sum::<f64>())
                    .sum();
                sums[y * nx + x] = s;
                if s > top.0 {
                    top = (s, x, y);
                }
            }
        }
        let (max, px, py) = top;
        let mut neighbours = Vec::with_capacity(4);
        if px > 0 {
            neighbours.push(sums[py * nx + px - 1]);
        }
        if px + 1 < nx {
            neighbours.push(sums[py * nx + px + 1]);
        }
        if py > 0 {
            neighbours.push(sums[(py - 1) * nx + px]);
        }
        if py + 1 < ny {
            neighbours.push(sums[(py + 1) * nx + px]);
        }
        let mean = neighbours.iter().sum::<f64>() / neighbours.len() as f64;
        let difference = (max - mean) / (bx * by) as f64;
        let window = Window {
            x: px,
            y: py,
            cols: bx,
            rows: by,
            ratio,
        };
        if best.is_none_or(|(d, _)| difference > d) {
            best = Some((difference, window));
        }
    }
    Ok(best.map(|(_, w)| w))
}

/// The source pixels one cell of `grid` spans when the grid covers the
/// `width x height` image centred in it (padded to the grid's shape where
/// the host pads; cells are square): `max(width / cols, height / rows)`.
pub fn cell_pixels(grid: Grid, width: u32, height: u32) -> f64 {
    (width as f64 / grid.cols as f64).max(height as f64 / grid.rows as f64)
}

/// ViCrop's crop of a `width x height` image (U:60-144) from a map on
/// `grid`, with `base` the method's box size in source pixels (336 for
/// LLaVA-1.5, ViCrop's `bbox_size`): the [`adaptive_window`], its centre in
/// pixels (truncated), a square of side `base * ratio` (half side floored)
/// around it, shifted inside the image and clipped to it. The whole image
/// when the smallest window covers the grid.
///
/// The grid is placed over the image as the host's preprocessing placed the
/// image in it (centred, [`cell_pixels`] a cell); ViCrop's code stretches
/// its 24x24 map over the whole image instead, which is the same for square
/// images and for hosts that do not pad.
pub fn vicrop_box(map: &[f32], grid: Grid, width: u32, height: u32, base: f64) -> Result<PixelBox> {
    if width == 0 || height == 0 {
        return Err(CoreError::config(
            "image size",
            format!("{width}x{height} has no pixels"),
        ));
    }
    let cell = cell_pixels(grid, width, height);
    let whole = PixelBox {
        x0: 0,
        y0: 0,
        x1: width,
        y1: height,
    };
    let Some(w) = adaptive_window(map, grid, (cell, cell), base)? else {
        return Ok(whole);
    };
    // Where the image starts inside the grid's area (the centring pad).
    let pad_x = (grid.cols as f64 * cell - width as f64) / 2.0;
    let pad_y = (grid.rows as f64 * cell - height as f64) / 2.0;
    let half = (base * w.ratio / 2.0).floor();
    let centre = |start: usize, cells: usize, pad: f64, limit: u32| -> (f64, f64) {
        let mut c = (start as f64 * cell + cell * cells as f64 / 2.0 - pad).trunc();
        if c < half {
            c = half;
        }
        if c > limit as f64 - half {
            c = limit as f64 - half;
        }
        ((c - half).max(0.0), (c + half).min(limit as f64))
    };
    let (x0, x1) = centre(w.x, w.cols, pad_x, width);
    let (y0, y1) = centre(w.y, w.rows, pad_y, height);
    Ok(PixelBox {
        x0: x0 as u32,
        y0: y0 as u32,
        x1: x1 as u32,
        y1: y1 as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::{dev, TestBackend as B};
    use burn::tensor::TensorData;

    /// A 24x24 map, zero but for `value` on the cells of `cells`.
    fn map_with(cells: &[(usize, usize)], value: f32) -> Vec<f32> {
        let mut m = vec![0.0; 576];
        for &(x, y) in cells {
            m[y * 24 + x] = value;
        }
        m
    }

    #[test]
    fn a_single_hot_cell_gets_the_smallest_box_centred_on_it() {
        // 2400x2400: a cell is 100 px; ratio 1 -> 3-cell windows (336/100).
        // One hot cell at (10, 5): every window holding it sums the same; the
        // first (columns outer) has x = 8, y = 3; two of its four neighbours
        // hold the cell, so it stands out by 0.5 per 9 cells. Larger windows
        // stand out by the same over more cells, so ratio 1 wins.
        let map = map_with(&[(10, 5)], 1.0);
        let w = adaptive_window(&map, Grid::llava_1_5(), (100.0, 100.0), 336.0)
            .unwrap()
            .unwrap();
        assert_eq!((w.x, w.y, w.cols, w.rows, w.ratio), (8, 3, 3, 3, 1.0));
        // Centre: 8*100 + 150 = 950, 3*100 + 150 = 450; half side 168.
        let b = vicrop_box(&map, Grid::llava_1_5(), 2400, 2400, 336.0).unwrap();
        assert_eq!(
            (b.x0, b.y0, b.x1, b.y1),
            (950 - 168, 450 - 168, 950 + 168, 450 + 168)
        );
    }

    #[test]
    fn a_wide_hot_patch_picks_the_ratio_that_fits_it() {
        // A 5x5 block on 100-px cells: the 5-cell window (ratio 1.6:
        // int(537.6/100) = 5) takes it whole and stands out most per cell.
        let cells: Vec<_> = (4..9).flat_map(|x| (10..15).map(move |y| (x, y))).collect();
        let map = map_with(&cells, 1.0);
        let w = adaptive_window(&map, Grid::llava_1_5(), (100.0, 100.0), 336.0)
            .unwrap()
            .unwrap();
        assert_eq!((w.x, w.y, w.cols, w.rows), (4, 10, 5, 5));
        assert_eq!(w.ratio, 1.6);
        // 336 * 1.6 = 537.6 -> half side 268; centre (650, 1250).
        let b = vicrop_box(&map, Grid::llava_1_5(), 2400, 2400, 336.0).unwrap();
        assert_eq!((b.x0, b.y0, b.x1, b.y1), (382, 982, 918, 1518));
    }

    #[test]
    fn boxes_near_an_edge_shift_inside_and_small_images_are_taken_whole() {
        // A hot corner cell: the box is shifted to start at 0.
        let map = map_with(&[(0, 0)], 1.0);
        let b = vicrop_box(&map, Grid::llava_1_5(), 2400, 2400, 336.0).unwrap();
        assert_eq!((b.x0, b.y0, b.x1, b.y1), (0, 0, 336, 336));
        let map = map_with(&[(23, 23)], 1.0);
        let b = vicrop_box(&map, Grid::llava_1_5(), 2400, 2400, 336.0).unwrap();
        assert_eq!(
            (b.x0, b.y0, b.x1, b.y1),
            (2400 - 336, 2400 - 336, 2400, 2400)
        );
        // A 336-px image: the ratio-1 window is the whole grid.
        let b = vicrop_box(&map, Grid::llava_1_5(), 336, 336, 336.0).unwrap();
        assert_eq!((b.x0, b.y0, b.x1, b.y1), (0, 0, 336, 336));
        assert_eq!(
            adaptive_window(&map, Grid::llava_1_5(), (14.0, 14.0), 336.0).unwrap(),
            None
        );
    }

    #[test]
    fn a_padded_wide_image_maps_rows_through_the_centring_pad() {
        // 2400x1200 on a square grid: cells of 100 px, the image sits in
        // rows 6..18 (600 px of pad above). Hot cell (12, 9) -> window
        // (10, 7); centre y = 7*100 + 150 - 600 = 250; x = 1150.
        let map = map_with(&[(12, 9)], 1.0);
        let b = vicrop_box(&map, Grid::llava_1_5(), 2400, 1200, 336.0).unwrap();
        assert_eq!(
            (b.x0, b.y0, b.x1, b.y1),
            (1150 - 168, 250 - 168, 1150 + 168, 250 + 168)
        );
        // A box taller than the image spans it whole on that axis.
        let b = vicrop_box(&map, Grid::llava_1_5(), 2400, 200, 336.0).unwrap();
        assert_eq!((b.y0, b.y1), (0, 200));
        assert_eq!(b.width(), 336);
    }

    #[test]
    fn rel_att_divides_and_bad_maps_are_refused() {
        let r = relative_attention(&[0.2, 0.1, 0.3], &[0.1, 0.4, 0.0]).unwrap();
        assert!(
            (r[0] - 2.0).abs() < 1e-6 && (r[1] - 0.25).abs() < 1e-6,
            "{r:?}"
        );
        assert!(r[2].is_finite() && r[2] > 1e30);
        assert!(relative_attention(&[0.1], &[0.1, 0.2]).is_err());
        assert!(relative_attention(&[f32::NAN], &[0.1]).is_err());
        let err = adaptive_window(&[0.0; 10], Grid::llava_1_5(), (1.0, 1.0), 336.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("576"), "{err}");
        assert!(vicrop_box(&[0.0; 576], Grid::llava_1_5(), 0, 10, 336.0).is_err());
    }

    #[test]
    fn the_head_mean_row_reads_one_query_over_the_visual_keys() {
        // 2 heads, 3 queries, 4 keys: value = 100 h + 10 q + k.
        let v: Vec<f32> = (0..2)
            .flat_map(|h| {
                (0..3).flat_map(move |q| (0..4).map(move |k| (100 * h + 10 * q + k) as f32))
            })
            .collect();
        let probs = Tensor::<B, 4>::from_data(TensorData::new(v, [1, 2, 3, 4]), &dev());
        let row: Vec<f32> = head_mean_row(probs, 2, 1..3).into_data().to_vec().unwrap();
        assert_eq!(row, vec![71.0, 72.0]);
    }
}
