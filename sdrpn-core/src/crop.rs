//! Crop geometry: a box in token units -> a rectangle of the source image
//! (SPEC 4 step 4), as the reference computes it (float32 arithmetic).

use crate::components::TokenBox;
use crate::error::{CoreError, Result};
use crate::grid::Grid;
use serde::{Deserialize, Serialize};

/// A rectangle of the source image in pixels, ends exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PixelBox {
    /// Left edge.
    pub x0: u32,
    /// Top edge.
    pub y0: u32,
    /// One past the right edge.
    pub x1: u32,
    /// One past the bottom edge.
    pub y1: u32,
}

impl PixelBox {
    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.x1.saturating_sub(self.x0)
    }
    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.y1.saturating_sub(self.y0)
    }
}

/// Maps `token_box` on `grid` (each token `patch` pixels of the model's
/// square-padded input) to the source image of `width` x `height`:
/// multiply by `patch`, subtract the centring pad
/// `(side_in - floor(side * r)) / 2` with `r = min(in_w / width, in_h / height)`,
/// divide by `r`, clamp to the image, truncate.
///
/// Returns `None` when the box lies entirely in the padding (nothing to crop).
pub fn token_box_to_pixels(
    token_box: TokenBox,
    grid: Grid,
    patch: usize,
    width: u32,
    height: u32,
) -> Result<Option<PixelBox>> {
    if width == 0 || height == 0 {
        return Err(CoreError::config(
            "image size",
            format!("{width}x{height} has no pixels"),
        ));
    }
    if token_box.x1 > grid.cols
        || token_box.y1 > grid.rows
        || token_box.x0 >= token_box.x1
        || token_box.y0 >= token_box.y1
    {
        return Err(CoreError::config(
            "token box",
            format!("{token_box:?} is empty or outside the {grid} grid"),
        ));
    }
    let (in_w, in_h) = ((grid.cols * patch) as f64, (grid.rows * patch) as f64);
    let r = (in_w / width as f64).min(in_h / height as f64);
    let pad_x = (in_w - (width as f64 * r).trunc()) / 2.0;
    let pad_y = (in_h - (height as f64 * r).trunc()) / 2.0;
    // The reference does this part in float32 torch tensors.
    let map = |t: usize, pad: f64, limit: u32| -> u32 {
        let v = ((t as f32 * patch as f32) - pad as f32) / r as f32;
        v.clamp(0.0, limit as f32) as u32
    };
    let b = PixelBox {
        x0: map(token_box.x0, pad_x, width),
        y0: map(token_box.y0, pad_y, height),
        x1: map(token_box.x1, pad_x, width),
        y1: map(token_box.y1, pad_y, height),
    };
    Ok((b.width() > 0 && b.height() > 0).then_some(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tb(x0: usize, y0: usize, x1: usize, y1: usize) -> TokenBox {
        TokenBox { x0, y0, x1, y1 }
    }

    #[test]
    fn square_image_scales_without_padding() {
        // 672x672: r = 0.5, no pad: token 6 -> pixel 6*14/0.5 = 168.
        let b = token_box_to_pixels(tb(6, 0, 12, 24), Grid::llava_1_5(), 14, 672, 672)
            .unwrap()
            .unwrap();
        assert_eq!(
            b,
            PixelBox {
                x0: 168,
                y0: 0,
                x1: 336,
                y1: 672
            }
        );
    }

    #[test]
    fn wide_image_subtracts_the_vertical_pad() {
        // 1000x500: r = 0.336, scaled height floor(168) -> pad_y = 84 px (6 tokens).
        // Token row 6 -> (84 - 84)/0.336 = 0; row 12 -> (168-84)/0.336 = 250.
        // Column 3 -> 42/0.336 = 125.
        let b = token_box_to_pixels(tb(3, 6, 24, 12), Grid::llava_1_5(), 14, 1000, 500)
            .unwrap()
            .unwrap();
        assert_eq!(
            b,
            PixelBox {
                x0: 125,
                y0: 0,
                x1: 1000,
                y1: 250
            }
        );
    }

    #[test]
    fn boxes_in_the_padding_are_clamped_and_may_vanish() {
        // Rows 0..6 of a 1000x500 image are all padding.
        assert_eq!(
            token_box_to_pixels(tb(0, 0, 24, 6), Grid::llava_1_5(), 14, 1000, 500).unwrap(),
            None
        );
        // Rows 0..8 reach 2 token rows into the image: (112 - 84)/0.336 = 83.33 -> 83.
        let b = token_box_to_pixels(tb(0, 0, 24, 8), Grid::llava_1_5(), 14, 1000, 500)
            .unwrap()
            .unwrap();
        assert_eq!((b.y0, b.y1), (0, 83));
    }

    #[test]
    fn tall_image_and_odd_sizes_truncate() {
        // 61 wide x 97 tall: r = min(336/61, 336/97) = 336/97 = 3.46392;
        // height 97 * r = 336 (no vertical pad), width floor(61 * r) =
        // floor(211.3) = 211 -> pad_x = (336 - 211) / 2 = 62.5.
        // Tokens (5, 1)-(6, 2): x0 = (70 - 62.5) / r = 2.17 -> 2,
        // y0 = 14 / r = 4.04 -> 4, x1 = (84 - 62.5) / r = 6.21 -> 6,
        // y1 = 28 / r = 8.08 -> 8.
        let b = token_box_to_pixels(tb(5, 1, 6, 2), Grid::llava_1_5(), 14, 61, 97)
            .unwrap()
            .unwrap();
        assert_eq!(
            b,
            PixelBox {
                x0: 2,
                y0: 4,
                x1: 6,
                y1: 8
            }
        );
        // Columns 4..20 reach into both side pads: (56 - 62.5) / r < 0 -> 0,
        // (280 - 62.5) / r = 62.8 -> the image's 61.
        let b = token_box_to_pixels(tb(4, 0, 20, 24), Grid::llava_1_5(), 14, 61, 97)
            .unwrap()
            .unwrap();
        assert_eq!(
            b,
            PixelBox {
                x0: 0,
                y0: 0,
                x1: 61,
                y1: 97
            }
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(token_box_to_pixels(tb(0, 0, 25, 1), Grid::llava_1_5(), 14, 10, 10).is_err());
        assert!(token_box_to_pixels(tb(3, 0, 3, 1), Grid::llava_1_5(), 14, 10, 10).is_err());
        assert!(token_box_to_pixels(tb(0, 0, 1, 1), Grid::llava_1_5(), 14, 0, 10).is_err());
    }
}
