//! Image resizing bit-exact with Pillow's `Image.resize` on 8-bit RGB
//! (`libImaging/Resample.c`): separable convolution, horizontal pass then
//! vertical pass, coefficients in 22-bit fixed point, uint8 between passes.
//! Down-scaling widens the filter (antialiasing), as Pillow does.

use image::RgbImage;

/// Pillow's resampling filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BILINEAR` (triangle, support 1).
    Bilinear,
    /// `Image.BICUBIC` (Keys cubic with a = -0.5, support 2).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output index: first source index and fixed-point weights.
struct Coefficients {
    spans: Vec<(usize, Vec<i32>)>,
}

impl Coefficients {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for resizing
    /// `in_size` pixels to `out_size` (box = the whole input).
    fn new(in_size: usize, out_size: usize, filter: Filter) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ss = 1.0 / filterscale;
        let spans = (0..out_size)
            .map(|xx| {
                let center = (xx as f64 + 0.5) * scale;
                // C casts truncate toward zero.
                let xmin = ((center - support + 0.5) as i64).max(0) as usize;
                let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
                let weights: Vec<f64> = (xmin..xmax)
                    .map(|x| filter.weight((x as f64 - center + 0.5) * ss))
                    .collect();
                let total: f64 = weights.iter().sum();
                let fixed = weights
                    .iter()
                    .map(|&w| {
                        let w = if total != 0.0 { w / total } else { w };
                        let scaled = w * (1u32 << PRECISION_BITS) as f64;
                        if w < 0.0 {
                            (scaled - 0.5) as i32
                        } else {
                            (scaled + 0.5) as i32
                        }
                    })
                    .collect();
                (xmin, fixed)
            })
            .collect();
        Self { spans }
    }
}

fn clip8(acc: i64) -> u8 {
    if acc >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PRECISION_BITS) as u8
    }
}

/// Resizes `src` to `width` x `height` exactly as Pillow's
/// `Image.resize((width, height), filter)` does.
pub fn resize(src: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (in_w, in_h) = (src.width() as usize, src.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    let horizontal = Coefficients::new(in_w, out_w, filter);
    let vertical = Coefficients::new(in_h, out_h, filter);
    let round = 1i64 << (PRECISION_BITS - 1);
    let data = src.as_raw();

    // Horizontal pass over the rows the vertical pass will read.
    let (rows, first_row) = if out_w != in_w {
        let first = vertical.spans.first().map_or(0, |s| s.0);
        let last = vertical.spans.last().map_or(in_h, |(s, k)| s + k.len());
        let mut tmp = vec![0u8; (last - first) * out_w * 3];
        for (ty, y) in (first..last).enumerate() {
            let row = &data[y * in_w * 3..(y + 1) * in_w * 3];
            for (xx, (xmin, k)) in horizontal.spans.iter().enumerate() {
                for c in 0..3 {
                    let acc = k.iter().enumerate().fold(round, |acc, (i, &w)| {
                        acc + row[(xmin + i) * 3 + c] as i64 * w as i64
                    });
                    tmp[(ty * out_w + xx) * 3 + c] = clip8(acc);
                }
            }
        }
        (tmp, first)
    } else {
        (data.clone(), 0)
    };
    let row_w = if out_w != in_w { out_w } else { in_w };
    if out_h == in_h {
        return RgbImage::from_raw(width, height, rows).expect("buffer sized for the image");
    }
    let mut out = vec![0u8; out_w * out_h * 3];
    for (yy, (ymin, k)) in vertical.spans.iter().enumerate() {
        for xx in 0..out_w {
            for c in 0..3 {
                let acc = k.iter().enumerate().fold(round, |acc, (i, &w)| {
                    acc + rows[((ymin - first_row + i) * row_w + xx) * 3 + c] as i64 * w as i64
                });
                out[(yy * out_w + xx) * 3 + c] = clip8(acc);
            }
        }
    }
    RgbImage::from_raw(width, height, out).expect("buffer sized for the image")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_a_copy() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 10, y as u8 * 20, 7]));
        assert_eq!(resize(&img, 5, 4, Filter::Bicubic), img);
    }

    #[test]
    fn constant_images_stay_constant() {
        let img = RgbImage::from_pixel(13, 7, image::Rgb([200, 3, 90]));
        for f in [Filter::Bilinear, Filter::Bicubic] {
            let out = resize(&img, 29, 4, f);
            assert!(out.pixels().all(|p| p.0 == [200, 3, 90]), "{f:?}");
        }
    }

    #[test]
    fn bicubic_weights_sum_to_one_in_fixed_point() {
        let c = Coefficients::new(97, 84, Filter::Bicubic);
        for (_, k) in &c.spans {
            let s: i64 = k.iter().map(|&w| w as i64).sum();
            assert!((s - (1 << PRECISION_BITS)).abs() <= k.len() as i64, "{s}");
        }
    }
}
