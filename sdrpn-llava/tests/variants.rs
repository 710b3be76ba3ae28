//! The same weights stored as bf16 (sharded), f16, and in the newer
//! transformers key layout load through the real path and give the f32
//! model's results.
//!
//! Tolerance: the fixture weights are "half-exact" (bf16-representable, and
//! f16-representable after zeroing tiny subnormals), so an upcast load holds
//! exactly the f32 model's numbers and must reproduce its outputs bit for
//! bit; against HF the f32 bound (1e-4 relative) applies unchanged.
//! (Rounding a real f32 checkpoint to bf16/f16 changes logits by about
//! 0.16/0.02 on this model, see the fixture README, which is why the test
//! relies on half-exact weights rather than a loose bound.)

mod common;

use common::*;
use sdrpn_llava::inspect::HostValues;
use sdrpn_llava::preprocess::{load_rgb, ImageMode};
use sdrpn_llava::prompt::Template;
use sdrpn_llava::session::{LlavaSession, PromptOptions};
use sdrpn_llava::tokenizer::Tokenization;

fn logits_and_ids(model: &str) -> (Vec<f32>, Vec<i64>) {
    let reference = Reference::open("hf_crop_raw");
    let options = PromptOptions {
        template: Template::Raw,
        tokenization: Tokenization::Hf,
        image_mode: ImageMode::Crop,
    };
    let session = LlavaSession::<B>::load(&model_dir(model), &device(), options).unwrap();
    let image = load_rgb(&fixtures().join("images/wide.png")).unwrap();
    let out = session
        .inspect(&image, reference.meta("prompt"), 8)
        .unwrap();
    let logits = match out.get("logits") {
        Some((_, HostValues::F32(v))) => v.clone(),
        _ => unreachable!(),
    };
    let ids = match out.get("gen_ids") {
        Some((_, HostValues::I64(v))) => v.clone(),
        _ => unreachable!(),
    };
    (logits, ids)
}

#[test]
fn half_precision_and_new_layout_checkpoints_match_the_f32_one() {
    let reference = Reference::open("hf_crop_raw");
    let (base_logits, base_ids) = logits_and_ids("tiny-llava");
    for variant in [
        "tiny-llava-bf16-sharded",
        "tiny-llava-f16",
        "tiny-llava-newlayout",
    ] {
        let (logits, ids) = logits_and_ids(variant);
        assert_eq!(ids, base_ids, "{variant}: generated ids");
        assert_eq!(
            logits, base_logits,
            "{variant}: logits differ from the f32 checkpoint's"
        );
        let e = relative_error(&logits, &reference.get("logits").1);
        assert!(e <= 1e-4, "{variant}: logits relative error vs HF {e:e}");
    }
}
