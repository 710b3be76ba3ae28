//! A built-in 5 x 7 bitmap font for the digits the testbed's codes are
//! made of (no system fonts), drawn at an integer scale.

use image::{Rgb, RgbImage};

/// Glyph width in font pixels.
pub const GLYPH_W: u32 = 5;
/// Glyph height in font pixels.
pub const GLYPH_H: u32 = 7;
/// Font pixels between two glyphs of a code.
pub const GLYPH_GAP: u32 = 1;

/// The glyphs `0`..`9`, one row per entry, most significant bit left.
const DIGITS: [[u8; 7]; 10] = [
    [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E], // 0
    [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E], // 1
    [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F], // 2
    [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E], // 3
    [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02], // 4
    [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E], // 5
    [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E], // 6
    [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08], // 7
    [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E], // 8
    [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C], // 9
];

/// Whether font pixel (`x`, `y`) of digit `d` is ink.
pub fn ink(d: u8, x: u32, y: u32) -> bool {
    DIGITS[d as usize][y as usize] & (0x10 >> x) != 0
}

/// Size in image pixels of a code of `len` glyphs drawn at `scale`.
pub fn code_size(len: usize, scale: u32) -> (u32, u32) {
    let len = len as u32;
    (
        (len * GLYPH_W + len.saturating_sub(1) * GLYPH_GAP) * scale,
        GLYPH_H * scale,
    )
}

/// Draws the digits of `code` with their top-left corner at (`x0`, `y0`),
/// each font pixel a `scale` x `scale` square of `colour`; pixels outside
/// the image are skipped.
pub fn draw_code(img: &mut RgbImage, code: &[u8], x0: u32, y0: u32, scale: u32, colour: [u8; 3]) {
    for (i, &d) in code.iter().enumerate() {
        let gx = x0 + i as u32 * (GLYPH_W + GLYPH_GAP) * scale;
        for fy in 0..GLYPH_H {
            for fx in 0..GLYPH_W {
                if !ink(d, fx, fy) {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (x, y) = (gx + fx * scale + dx, y0 + fy * scale + dy);
                        if x < img.width() && y < img.height() {
                            img.put_pixel(x, y, Rgb(colour));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_digit_is_distinct_and_inked() {
        for (a, rows) in DIGITS.iter().enumerate() {
            assert!(rows.iter().any(|&r| r != 0), "{a} has ink");
            assert!(rows.iter().all(|&r| r < 0x20), "{a} fits 5 columns");
            for (b, other) in DIGITS.iter().enumerate().skip(a + 1) {
                assert_ne!(rows, other, "{a} and {b} differ");
            }
        }
        // The one: a vertical stem in the middle column.
        assert!((0..7).all(|y| ink(1, 2, y)));
        assert!(!ink(1, 0, 3) && !ink(1, 4, 3));
    }

    #[test]
    fn codes_are_drawn_at_their_scale() {
        assert_eq!(code_size(2, 2), (22, 14));
        let mut img = RgbImage::new(30, 20);
        draw_code(&mut img, &[1, 7], 2, 3, 2, [255, 0, 0]);
        // The stem of the 1 (font column 2) covers image columns 6..8.
        for y in 3..17 {
            assert_eq!(img.get_pixel(6, y).0, [255, 0, 0], "row {y}");
            assert_eq!(img.get_pixel(7, y).0, [255, 0, 0]);
        }
        // The top bar of the 7 starts 12 pixels right of the 1.
        assert_eq!(img.get_pixel(14, 3).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(23, 4).0, [255, 0, 0]);
        assert_eq!(img.get_pixel(13, 3).0, [0, 0, 0], "the gap stays empty");
        let inked = img.pixels().filter(|p| p.0 != [0, 0, 0]).count();
        let font_pixels: u32 = [1u8, 7]
            .iter()
            .map(|&d| {
                (0..7)
                    .map(|y| (0..5).filter(|&x| ink(d, x, y)).count() as u32)
                    .sum::<u32>()
            })
            .sum();
        assert_eq!(inked as u32, font_pixels * 4);
    }
}
