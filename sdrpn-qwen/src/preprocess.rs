//! Image preprocessing as HF's slow (Pillow) `Qwen2VLImageProcessor` does
//! it: `smart_resize` to multiples of 28 pixels within
//! `[min_pixels, max_pixels]`, Pillow bicubic resize (bit-exact, see
//! [`sdrpn_llava::resample`]), `/ 255`, normalise with the CLIP mean and
//! std, and flatten into `[3, 2, 14, 14]` patches in merge order (the image
//! repeated as its own second frame).

use crate::error::{QwenError, Result};
use image::RgbImage;
use sdrpn_llava::preprocess::{CLIP_MEAN, CLIP_STD};
use sdrpn_llava::resample::{resize, Filter};
use serde_json::Value;
use std::path::Path;

/// The processor's settings (`preprocessor_config.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessor {
    /// Fewest pixels after resizing.
    pub min_pixels: usize,
    /// Most pixels after resizing.
    pub max_pixels: usize,
    /// Patch side.
    pub patch_size: usize,
    /// Frames per patch.
    pub temporal_patch_size: usize,
    /// Patches merged per token side.
    pub merge_size: usize,
    /// Normalisation mean (f32, as numpy holds it).
    pub mean: [f32; 3],
    /// Normalisation standard deviation.
    pub std: [f32; 3],
}

impl Default for ImageProcessor {
    /// HF's class defaults (`min_pixels` 56*56, `max_pixels` 28*28*1280).
    fn default() -> Self {
        Self {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }
}

/// A preprocessed image: flattened patches and their grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Patches {
    /// `[rows * cols, 3 * 2 * p * p]`, row-major.
    pub values: Vec<f32>,
    /// Patch rows (resized height / patch).
    pub rows: usize,
    /// Patch columns.
    pub cols: usize,
    /// The resized image the patches come from.
    pub resized: RgbImage,
}

/// HF's `smart_resize`: `(height, width)` rounded to multiples of
/// `factor`, scaled to hold between `min_pixels` and `max_pixels` pixels.
/// Python's `round` is round-half-to-even.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    if height == 0 || width == 0 {
        return Err(QwenError::invalid(
            "image",
            format!("{width}x{height} pixels is empty"),
        ));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(QwenError::invalid(
            "image",
            format!(
                "aspect ratio {:.1} of {width}x{height} exceeds Qwen2-VL's limit of 200",
                h.max(w) / h.min(w)
            ),
        ));
    }
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

impl ImageProcessor {
    /// Reads `preprocessor_config.json` in `dir` (HF's class defaults when
    /// the file is absent). As in transformers 4.57, `min_pixels` /
    /// `max_pixels` decide the size range; a `size` object alone does not.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        if !path.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| QwenError::Host(sdrpn_llava::LlavaError::io(&path, e)))?;
        Self::from_json(&text).map_err(|e| QwenError::json(&path, e.to_string()))
    }

    /// Parses the text of a `preprocessor_config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: Value =
            serde_json::from_str(text).map_err(|e| QwenError::invalid("JSON", e.to_string()))?;
        let d = Self::default();
        let int = |k: &str, default: usize| -> Result<usize> {
            match raw.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
                    QwenError::invalid(k, format!("{v} is not a non-negative integer"))
                }),
            }
        };
        let triple = |k: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match raw.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Array(a)) if a.len() == 3 && a.iter().all(Value::is_number) => {
                    Ok([0, 1, 2].map(|i| a[i].as_f64().unwrap_or(0.0) as f32))
                }
                Some(v) => Err(QwenError::invalid(k, format!("{v} is not three numbers"))),
            }
        };
        for (k, want) in [
            ("do_resize", true),
            ("do_rescale", true),
            ("do_normalize", true),
        ] {
            if raw
                .get(k)
                .and_then(Value::as_bool)
                .is_some_and(|b| b != want)
            {
                return Err(QwenError::invalid(k, format!("only {want} is supported")));
            }
        }
        if let Some(r) = raw.get("rescale_factor").and_then(Value::as_f64) {
            if (r - 1.0 / 255.0).abs() > 1e-12 {
                return Err(QwenError::invalid(
                    "rescale_factor",
                    format!("{r} is not supported (1/255)"),
                ));
            }
        }
        if let Some(r) = raw.get("resample").and_then(Value::as_u64) {
            if r != 3 {
                return Err(QwenError::invalid(
                    "resample",
                    format!("{r} is not supported (3, bicubic)"),
                ));
            }
        }
        let p = Self {
            min_pixels: int("min_pixels", d.min_pixels)?,
            max_pixels: int("max_pixels", d.max_pixels)?,
            patch_size: int("patch_size", d.patch_size)?,
            temporal_patch_size: int("temporal_patch_size", d.temporal_patch_size)?,
            merge_size: int("merge_size", d.merge_size)?,
            mean: triple("image_mean", d.mean)?,
            std: triple("image_std", d.std)?,
        };
        if p.patch_size == 0 || p.merge_size == 0 || p.temporal_patch_size == 0 {
            return Err(QwenError::invalid("patch sizes", "must be positive"));
        }
        if p.min_pixels > p.max_pixels {
            return Err(QwenError::invalid(
                "min_pixels",
                format!("{} exceeds max_pixels {}", p.min_pixels, p.max_pixels),
            ));
        }
        Ok(p)
    }

    /// Pixels per token side (28).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// The size (`width`, `height`) an image of `width x height` is resized to.
    pub fn target_size(&self, width: u32, height: u32) -> Result<(u32, u32)> {
        let (h, w) = smart_resize(
            height as usize,
            width as usize,
            self.factor(),
            self.min_pixels,
            self.max_pixels,
        )?;
        Ok((w as u32, h as u32))
    }

    /// Resizes, normalises and flattens an image into patches.
    pub fn patches(&self, image: &RgbImage) -> Result<Patches> {
        let (w, h) = self.target_size(image.width(), image.height())?;
        let resized = if (w, h) == image.dimensions() {
            image.clone()
        } else {
            resize(image, w, h, Filter::Bicubic)
        };
        let (p, m, tp) = (self.patch_size, self.merge_size, self.temporal_patch_size);
        let (rows, cols) = (h as usize / p, w as usize / p);
        let per_patch = 3 * tp * p * p;
        let mut values = Vec::with_capacity(rows * cols * per_patch);
        // numpy: (u8 as float64 * (1/255)) -> float32, then (v - mean) / std in float32.
        let norm =
            |v: u8, c: usize| ((v as f64 * (1.0 / 255.0)) as f32 - self.mean[c]) / self.std[c];
        for br in 0..rows / m {
            for bc in 0..cols / m {
                for i in 0..m {
                    for j in 0..m {
                        let (y0, x0) = ((br * m + i) * p, (bc * m + j) * p);
                        for c in 0..3 {
                            for _frame in 0..tp {
                                for y in 0..p {
                                    for x in 0..p {
                                        let px =
                                            resized.get_pixel((x0 + x) as u32, (y0 + y) as u32);
                                        values.push(norm(px[c], c));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(Patches {
            values,
            rows,
            cols,
            resized,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_hf_on_hand_computed_cases() {
        // 150x90 (w x h): round(90/28)=3 -> 84, round(150/28)=5 -> 140.
        assert_eq!(
            smart_resize(90, 150, 28, 3136, 1_003_520).unwrap(),
            (84, 140)
        );
        // Python rounds half to even: 42/28 = 1.5 -> 2, 70/28 = 2.5 -> 2.
        assert_eq!(smart_resize(42, 70, 28, 0, 1_000_000).unwrap(), (56, 56));
        // Too many pixels: beta = sqrt(1000*1000/(28*28*4)) = 17.857; floor(1000/17.857/28)*28 = 56.
        assert_eq!(
            smart_resize(1000, 1000, 28, 0, 28 * 28 * 4).unwrap(),
            (56, 56)
        );
        // Too few: beta = sqrt(3136/100) = 5.6; ceil(10*5.6/28)*28 = 56.
        assert_eq!(smart_resize(10, 10, 28, 3136, 1_003_520).unwrap(), (56, 56));
        assert!(smart_resize(1, 300, 28, 3136, 1_003_520).is_err());
        assert!(smart_resize(0, 3, 28, 3136, 1_003_520).is_err());
    }

    #[test]
    fn patches_hold_both_frames_channel_major_in_merge_order() {
        let proc = ImageProcessor {
            min_pixels: 0,
            ..ImageProcessor::default()
        };
        // 56x28 image: 2x4 patches, already a multiple of 28 (no resize).
        let img = RgbImage::from_fn(56, 28, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let p = proc.patches(&img).unwrap();
        assert_eq!((p.rows, p.cols), (2, 4));
        let per = 3 * 2 * 14 * 14;
        assert_eq!(p.values.len(), 8 * per);
        let norm = |v: u8, c: usize| ((v as f64 / 255.0) as f32 - CLIP_MEAN[c]) / CLIP_STD[c];
        // Patch 1 is row 0, column 1 (x from 14); patch 4 is row 0, column 2.
        assert_eq!(p.values[per], norm(14, 0));
        assert_eq!(p.values[4 * per], norm(28, 0));
        // Second frame equals the first; green channel follows after both frames of red.
        assert_eq!(p.values[196], p.values[0]);
        assert_eq!(p.values[2 * 196 + 14], norm(1, 1));
    }
}
