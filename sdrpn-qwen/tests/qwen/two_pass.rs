//! SD-RPN's two passes on the tiny Qwen2.5-VL: no RoI answers as plain
//! generation; one box appends the crop (encoded on its own grid) between
//! `<|vision_start|>`/`<|vision_end|>` after the image; two boxes keep only
//! the crop tokens under the union mask; reusing pass 1's prefix cache
//! gives the answer of full recomputation (the reference's way); and the
//! RPN built from the model (GQA head with M-RoPE) drives a whole run.

use crate::support::{fixtures, B};
use sdrpn_core::host::{AnswerOptions, HostPrompt, RpnHost};
use sdrpn_core::roi::RoiMode;
use sdrpn_llava::preprocess::load_rgb;
use sdrpn_qwen::QwenSession;
use sdrpn_train::two_pass::{TwoPass, TwoPassOutput};

#[path = "../../../sdrpn-train/tests/two_pass_checks/mod.rs"]
mod two_pass_checks;
use two_pass_checks::{
    assert_batches_match, assert_same_answer, hot_map, max_difference, options, BATCH_QUESTIONS,
};

const QUESTION: &str = "What is in the picture?";

fn session() -> QwenSession<B> {
    QwenSession::<B>::load(&fixtures().join("tiny-qwen"), &Default::default()).unwrap()
}

fn image() -> image::RgbImage {
    // 320x180: a 5x9 grid of merged tokens.
    load_rgb(&fixtures().join("images/big.png")).unwrap()
}

/// A 5x9 map (the image's grid) with 1.0 on the given cells.
fn map(hot: &[(usize, usize)]) -> Vec<f32> {
    hot_map(5, 9, hot)
}

fn run(s: &QwenSession<B>, map: &[f32], reuse: bool) -> TwoPassOutput {
    s.answer_with_map(&image(), QUESTION, map, &options(reuse))
        .unwrap()
}

#[test]
fn qwen_two_pass_covers_every_crop_mode() {
    let s = session();
    let img = image();
    let answer = AnswerOptions {
        max_new_tokens: 6,
        stop_strings: Vec::new(),
    };
    assert_eq!(
        RpnHost::<B>::prepare(&s, &img, QUESTION)
            .unwrap()
            .grid()
            .to_string(),
        "5x9"
    );

    // No RoI: the baseline's tokens, which are plain generation's.
    let plain = s.answer(&img, QUESTION, &answer).unwrap();
    let baseline = s.answer_baseline(&img, QUESTION, &answer).unwrap();
    assert_eq!(baseline.answer, plain);
    let none = run(&s, &map(&[]), true);
    assert_eq!(
        (none.mode, none.crop, none.roi_tokens),
        (RoiMode::None, None, 0)
    );
    assert_same_answer(&none, &baseline, "none vs baseline");

    // One block: its box in source pixels, every crop token appended.
    let block = map(&[(2, 3), (2, 4), (3, 3), (3, 4)]);
    let one = run(&s, &block, true);
    assert_eq!(one.mode, RoiMode::Bbox);
    let b = one.boxes[0];
    let crop = one.crop.expect("a crop");
    // 320x180 on a 5x9 grid: x = token * 28 * 320 / 252, y = token * 28 * 180 / 140.
    let px = |t: usize, size: f32, cells: f32| (t as f32 * 28.0 * (size / (cells * 28.0))) as u32;
    assert_eq!(
        (crop.x0, crop.y0, crop.x1, crop.y1),
        (
            px(b.x0, 320.0, 9.0),
            px(b.y0, 180.0, 5.0),
            px(b.x1, 320.0, 9.0),
            px(b.y1, 180.0, 5.0)
        )
    );
    let crop_grid = s.image_grid(crop.width(), crop.height()).unwrap();
    assert_eq!(
        one.roi_tokens,
        crop_grid.len(),
        "bbox mode appends every crop token"
    );
    assert_same_answer(
        &one,
        &run(&s, &block, false),
        "bbox: reused prefix vs recomputed",
    );

    // Two blocks far apart: the union box, only the tokens under its mask.
    let two = map(&[
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (3, 7),
        (3, 8),
        (4, 7),
        (4, 8),
    ]);
    let masked = run(&s, &two, true);
    assert_eq!(masked.mode, RoiMode::Mask);
    let crop = masked.crop.expect("a crop");
    let crop_grid = s.image_grid(crop.width(), crop.height()).unwrap();
    assert_eq!(masked.roi_tokens, masked.kept.len());
    assert!(
        masked.roi_tokens > 0 && masked.roi_tokens < crop_grid.len(),
        "{} of {} crop tokens kept",
        masked.roi_tokens,
        crop_grid.len()
    );
    assert_same_answer(
        &masked,
        &run(&s, &two, false),
        "mask: reused prefix vs recomputed",
    );
}

#[test]
fn the_rpn_built_from_qwen_scores_every_token_of_the_grid() {
    let s = session();
    let rpn = s.init_rpn(2, 2).unwrap();
    assert!(
        rpn.twig_norm.is_none(),
        "the reference head skips the twig norm"
    );
    assert_eq!((rpn.head.num_heads, rpn.head.num_kv_heads), (4, 2));
    let out = s
        .answer_with_roi(&rpn, &image(), QUESTION, &options(true))
        .unwrap();
    assert_eq!(out.roi_map.len(), 45);
    assert!(out
        .roi_map
        .iter()
        .all(|p| (0.0..=1.0).contains(p) && p.is_finite()));
    assert!(!out.tokens.is_empty());
}

/// Questions of different lengths about images of different grids (so
/// prompts of different lengths and visual token counts) in one padded
/// batch: every answer, RoI map and crop equals its batch-1 one.
#[test]
fn a_padded_batch_of_different_grids_answers_as_each_question_does_alone() {
    let s = session();
    let rpn = s.init_rpn(2, 2).unwrap();
    let images: Vec<_> = BATCH_QUESTIONS
        .iter()
        .map(|(n, _)| load_rgb(&fixtures().join(format!("images/{n}.png"))).unwrap())
        .collect();
    let questions: Vec<_> = images.iter().zip(BATCH_QUESTIONS.map(|(_, q)| q)).collect();
    let modes = assert_batches_match(&s, &rpn, &questions, &[0.3, 0.5, 0.7]);
    eprintln!("modes: {modes:?}");
}

/// ViCrop (rel-att and grad-att) through the Qwen host: the crop is
/// ViCrop's rule on the returned map over the image's own 5x9 grid, and
/// pass 2 answers as that region given, with and without prefix reuse;
/// grad-att's map is `gradient_map`'s (autodiff through Qwen's M-RoPE
/// layers), non-negative and not all zero.
#[test]
fn vicrop_on_qwen_crops_by_its_rule_and_answers_like_the_region_given() {
    use sdrpn_train::two_pass::{ViCropMap, ViCropRule};
    let s = session();
    let img = image();
    let layer = s.num_layers() - 1;
    for map in [ViCropMap::Relative, ViCropMap::Gradient] {
        let rule = ViCropRule {
            map,
            base_box: 60.0,
            ..ViCropRule::default()
        };
        let with_reuse = s
            .answer_with_vicrop(&img, QUESTION, layer, &rule, &options(true))
            .unwrap();
        assert_eq!(with_reuse.roi_map.len(), 45);
        let prompt = s.prepare(&img, QUESTION).unwrap();
        if map == ViCropMap::Gradient {
            let (_, expected) =
                sdrpn_train::vicrop::gradient_map(&s, &prompt, layer, None).unwrap();
            assert!(max_difference(&with_reuse.roi_map, &expected) <= 1e-6);
            assert!(expected.iter().all(|&v| v >= 0.0) && expected.iter().any(|&v| v > 0.0));
        }
        let crop =
            sdrpn_core::vicrop::vicrop_box(&with_reuse.roi_map, prompt.grid(), 320, 180, 60.0)
                .unwrap();
        assert_eq!(with_reuse.crop, Some(crop));
        assert!(crop.width() < 320, "{map:?}: a real crop: {crop:?}");
        assert_eq!(with_reuse.mode, RoiMode::Bbox);
        let without = s
            .answer_with_vicrop(&img, QUESTION, layer, &rule, &options(false))
            .unwrap();
        assert_same_answer(&with_reuse, &without, "Qwen ViCrop reuse vs recompute");
        let region = s
            .answer_with_region(&img, QUESTION, crop, &options(true))
            .unwrap();
        assert_same_answer(&with_reuse, &region, "Qwen ViCrop vs its crop given");
    }
    assert!(s.num_layers() > layer);
}
