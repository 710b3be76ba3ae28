//! Image preprocessing as LLaVA does it.
//!
//! - `pad` (original LLaVA-1.5, the default): pad to a square with the CLIP
//!   mean colour (122, 116, 104), the image centred at `(W - H) / 2`, then
//!   the CLIP preprocessing below.
//! - `crop` (HF `CLIPImageProcessor` / llava-hf): bicubic resize of the
//!   shortest edge to S (long edge `int(S * long / short)`), centre crop
//!   S x S, `/ 255`, normalise with the CLIP mean and std.
//!
//! Resizing is bit-exact with Pillow (see [`crate::resample`]).

use crate::error::{LlavaError, Result};
use crate::resample::{resize, Filter};
use image::{Rgb, RgbImage};
use sdrpn_core::crop::PixelBox;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// CLIP's normalisation mean.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's normalisation standard deviation (the published decimals, rounded
/// to f32 as numpy's `np.array(std, dtype=float32)` does).
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// How the image reaches the square model input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageMode {
    /// Pad to a square with the mean colour, then resize (original LLaVA).
    #[default]
    Pad,
    /// Resize the shortest edge and centre-crop (HF processor).
    Crop,
}

impl std::str::FromStr for ImageMode {
    type Err = LlavaError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pad" => Ok(ImageMode::Pad),
            "crop" => Ok(ImageMode::Crop),
            other => Err(LlavaError::invalid(
                "image mode",
                format!("{other:?} (expected pad or crop)"),
            )),
        }
    }
}

/// Reads an image file as 8-bit RGB (alpha dropped, grey expanded).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let img = image::ImageReader::open(path)
        .map_err(|e| LlavaError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| LlavaError::io(path, e))?
        .decode()
        .map_err(|e| LlavaError::Image {
            path: path.to_path_buf(),
            reason: format!("cannot decode: {e}"),
        })?;
    let rgb = img.to_rgb8();
    if rgb.width() == 0 || rgb.height() == 0 {
        return Err(LlavaError::Image {
            path: path.to_path_buf(),
            reason: "the image has no pixels".into(),
        });
    }
    Ok(rgb)
}

/// The CLIP mean colour as LLaVA computes it: `int(mean * 255)` per channel.
pub fn mean_colour() -> Rgb<u8> {
    Rgb(CLIP_MEAN.map(|m| (m as f64 * 255.0) as u8))
}

/// Pads `img` to a square with `fill`, centred as LLaVA's `expand2square`.
pub fn expand_to_square(img: &RgbImage, fill: Rgb<u8>) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == h {
        return img.clone();
    }
    let side = w.max(h);
    let mut out = RgbImage::from_pixel(side, side, fill);
    let (dx, dy) = if w > h {
        (0, (w - h) / 2)
    } else {
        ((h - w) / 2, 0)
    };
    image::imageops::replace(&mut out, img, dx as i64, dy as i64);
    out
}

/// The shortest-edge resize target of HF's `get_resize_output_image_size`.
pub fn shortest_edge_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (size as f64 * long as f64 / short as f64) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// CLIP preprocessing of an RGB image to `[3, S, S]` floats (channel-major).
pub fn clip_preprocess(img: &RgbImage, size: u32) -> Vec<f32> {
    let (w, h) = shortest_edge_size(img.width(), img.height(), size);
    let resized = if (w, h) == img.dimensions() {
        img.clone()
    } else {
        resize(img, w, h, Filter::Bicubic)
    };
    // Centre crop (the resized image is at least S on both sides).
    let top = (h.saturating_sub(size)) / 2;
    let left = (w.saturating_sub(size)) / 2;
    let s = size as usize;
    let mut out = vec![0.0f32; 3 * s * s];
    for y in 0..s {
        for x in 0..s {
            let px = resized.get_pixel(left + x as u32, top + y as u32);
            for c in 0..3 {
                // numpy: (u8 as float64 * (1/255)) -> float32, then (v - mean) / std in float32.
                let v = (px[c] as f64 * (1.0 / 255.0)) as f32;
                out[c * s * s + y * s + x] = (v - CLIP_MEAN[c]) / CLIP_STD[c];
            }
        }
    }
    out
}

/// The RoI crop of SD-RPN's second pass: `image.crop(box).resize((size,
/// size), Image.BILINEAR)` in Pillow terms (aspect not kept), then the CLIP
/// preprocessing (a no-op resize at that size).
pub fn crop_and_resize(
    img: &RgbImage,
    region: PixelBox,
    width: u32,
    height: u32,
) -> Result<RgbImage> {
    if region.x1 > img.width()
        || region.y1 > img.height()
        || region.width() == 0
        || region.height() == 0
    {
        return Err(LlavaError::invalid(
            "crop box",
            format!(
                "{region:?} is empty or outside the {}x{} image",
                img.width(),
                img.height()
            ),
        ));
    }
    let cropped =
        image::imageops::crop_imm(img, region.x0, region.y0, region.width(), region.height())
            .to_image();
    Ok(resize(&cropped, width, height, Filter::Bilinear))
}

/// Preprocesses an image for a vision tower of input side `size`.
pub fn preprocess(img: &RgbImage, mode: ImageMode, size: u32) -> Vec<f32> {
    match mode {
        ImageMode::Pad => clip_preprocess(&expand_to_square(img, mean_colour()), size),
        ImageMode::Crop => clip_preprocess(img, size),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_colour_is_llavas() {
        assert_eq!(mean_colour(), Rgb([122, 116, 104]));
    }

    #[test]
    fn padding_centres_with_floor_offset() {
        let img = RgbImage::from_pixel(5, 2, Rgb([1, 2, 3]));
        let sq = expand_to_square(&img, Rgb([9, 9, 9]));
        assert_eq!(sq.dimensions(), (5, 5));
        // (5 - 2) / 2 = 1: rows 1 and 2 hold the image.
        assert_eq!(sq.get_pixel(0, 0), &Rgb([9, 9, 9]));
        assert_eq!(sq.get_pixel(0, 1), &Rgb([1, 2, 3]));
        assert_eq!(sq.get_pixel(4, 2), &Rgb([1, 2, 3]));
        assert_eq!(sq.get_pixel(4, 3), &Rgb([9, 9, 9]));
    }

    #[test]
    fn shortest_edge_truncates_the_long_side() {
        assert_eq!(shortest_edge_size(97, 61, 84), (133, 84));
        assert_eq!(shortest_edge_size(50, 83, 84), (84, 139));
        assert_eq!(shortest_edge_size(400, 300, 336), (448, 336));
    }

    #[test]
    fn normalisation_matches_the_clip_constants() {
        // OpenAI CLIP's mean (0.48145466, 0.4578275, 0.40821073) and std
        // (0.26862954, 0.26130258, 0.27577711) after rescaling by 1/255,
        // worked out by hand: (1 - 0.48145466) / 0.26862954 = 1.9303363,
        // (0 - 0.4578275) / 0.26130258 = -1.7520971,
        // (122/255 - 0.40821073) / 0.27577711 = 0.2546282.
        let img = RgbImage::from_pixel(4, 4, Rgb([255, 0, 122]));
        let v = clip_preprocess(&img, 4);
        assert_eq!(v.len(), 3 * 16, "channel-first [3, 4, 4]");
        for (plane, want) in [1.930_336_3f32, -1.752_097_1, 0.254_628_2]
            .into_iter()
            .enumerate()
        {
            for (i, got) in v[plane * 16..(plane + 1) * 16].iter().enumerate() {
                assert!(
                    (got - want).abs() < 1e-5,
                    "channel {plane} pixel {i}: {got}"
                );
            }
        }
    }
}
