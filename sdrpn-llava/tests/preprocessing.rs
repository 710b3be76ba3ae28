//! Pillow-exact resizing and LLaVA's preprocessing against the references
//! made with Pillow (`reference/bicubic.safetensors`).

mod common;

use common::*;
use image::RgbImage;
use sdrpn_llava::preprocess::load_rgb;
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
