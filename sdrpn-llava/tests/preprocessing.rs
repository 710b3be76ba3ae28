//! Pillow-exact resizing and LLaVA's preprocessing against the references
//! made with Pillow (`reference/bicubic.safetensors`).

mod common;

use common::*;
use image::RgbImage;
use sdrpn_core::crop::PixelBox;
use sdrpn_llava::preprocess::{crop_and_resize, load_rgb};
use sdrpn_llava::resample::{resize, Filter};

fn image_of(shape: &[usize], values: &[f64]) -> RgbImage {
    let (h, w) = (shape[0] as u32, shape[1] as u32);
    RgbImage::from_raw(w, h, values.iter().map(|&v| v as u8).collect()).unwrap()
}

#[test]
fn bicubic_resize_is_bit_exact_with_pillow() {
    let reference = Reference::open("bicubic");
    let mut cases: Vec<&String> = reference
        .tensors
        .keys()
        .filter(|k| !k.ends_with("_src"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 6,
        "expected at least 6 resize cases, found {}",
        cases.len()
    );
    for case in cases {
        let (shape, want) = reference.get(case);
        let source = match reference.tensors.get(&format!("{case}_src")) {
            Some((s, v)) => image_of(s, v),
            None => load_rgb(&fixtures().join("images").join(reference.meta(case))).unwrap(),
        };
        let out = resize(&source, shape[1] as u32, shape[0] as u32, Filter::Bicubic);
        let worst = out
            .as_raw()
            .iter()
            .zip(want)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert_eq!(
            worst, 0.0,
            "{case}: differs from Pillow by up to {worst}/255"
        );
    }
}

#[test]
fn roi_crop_bilinear_resize_is_bit_exact_with_pillow() {
    let reference = Reference::open("bilinear");
    let bicubic = Reference::open("bicubic");
    let mut cases: Vec<&String> = reference.tensors.keys().collect();
    cases.sort();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let (shape, want) = reference.get(case);
        let (source, region) = reference.meta(case).split_once(';').unwrap();
        let image = if source == "tiny7x5" {
            let (s, v) = bicubic.get("tiny7x5_56x40_src");
            image_of(s, v)
        } else {
            load_rgb(&fixtures().join("images").join(source)).unwrap()
        };
        let b: Vec<u32> = region.split(',').map(|v| v.parse().unwrap()).collect();
        let region = PixelBox {
            x0: b[0],
            y0: b[1],
            x1: b[2],
            y1: b[3],
        };
        let out = crop_and_resize(&image, region, shape[1] as u32, shape[0] as u32).unwrap();
        let worst = out
            .as_raw()
            .iter()
            .zip(want)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert_eq!(
            worst, 0.0,
            "{case}: differs from Pillow by up to {worst}/255"
        );
    }
}

#[test]
fn crop_boxes_outside_the_image_are_errors() {
    let image = RgbImage::new(10, 8);
    let bad = PixelBox {
        x0: 2,
        y0: 2,
        x1: 11,
        y1: 5,
    };
    assert!(crop_and_resize(&image, bad, 4, 4).is_err());
    let empty = PixelBox {
        x0: 3,
        y0: 2,
        x1: 3,
        y1: 5,
    };
    assert!(crop_and_resize(&image, empty, 4, 4).is_err());
}
