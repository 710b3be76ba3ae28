//! Two-pass inference on the tiny fixture model: every crop mode, the crop
//! geometry in pixels, prefix-cache reuse against full recomputation, and
//! the no-RoI path against plain generation.

#[path = "../../sdrpn-llava/tests/common/mod.rs"]
mod common;

use common::*;
use sdrpn_core::components::TokenBox;
use sdrpn_core::crop::PixelBox;
use sdrpn_core::roi::RoiMode;
use sdrpn_llava::preprocess::load_rgb;
use sdrpn_llava::session::{AnswerOptions, LlavaSession, PromptOptions};
use sdrpn_train::two_pass::{TwoPass, TwoPassOutput};

#[path = "two_pass_checks/mod.rs"]
mod two_pass_checks;
use two_pass_checks::{
    assert_batches_match, assert_same_answer, hot_map, max_difference, options, BATCH_QUESTIONS,
};

const QUESTION: &str = "What is in the picture?";

fn session() -> LlavaSession<B> {
    LlavaSession::<B>::load(
        &model_dir("tiny-llava"),
        &device(),
        PromptOptions::default(),
    )
    .unwrap()
}

/// A 6x6 map (the image's grid) with 1.0 on the given cells.
fn map(hot: &[(usize, usize)]) -> Vec<f32> {
    hot_map(6, 6, hot)
}

fn run(map: &[f32], reuse: bool) -> TwoPassOutput {
    let image = load_rgb(&fixtures().join("images/wide.png")).unwrap();
    session()
        .answer_with_map(&image, QUESTION, map, &options(reuse))
        .unwrap()
}

#[test]
fn no_roi_is_plain_generation_and_an_empty_map_changes_nothing() {
    let s = session();
    let image = load_rgb(&fixtures().join("images/wide.png")).unwrap();
    let answer = AnswerOptions {
        max_new_tokens: 6,
        stop_strings: Vec::new(),
    };
    let plain = s.answer(&image, QUESTION, &answer).unwrap();
    let baseline = s.answer_baseline(&image, QUESTION, &answer).unwrap();
    assert_eq!(baseline.answer, plain);
    let none = s
        .answer_with_map(&image, QUESTION, &map(&[]), &options(true))
        .unwrap();
    assert_eq!(none.mode, RoiMode::None);
    assert_eq!((none.crop, none.roi_tokens), (None, 0));
    assert_eq!(
        none.tokens, baseline.tokens,
        "mode none answers as the baseline"
    );
    assert_same_answer(&none, &baseline, "none vs baseline");
}

#[test]
fn one_block_crops_its_box_in_source_pixels() {
    // Hot 2x2 block in the centre: blurred above 0.15 on the block and its
    // four sides (corners 0.075 stay below), so one 12-cell component with
    // token box x 1..5, y 1..5.
    let out = run(&map(&[(2, 2), (2, 3), (3, 2), (3, 3)]), true);
    assert_eq!(out.mode, RoiMode::Bbox);
    assert_eq!(
        out.boxes,
        vec![TokenBox {
            x0: 1,
            y0: 1,
            x1: 5,
            y1: 5
        }]
    );
    // wide.png is 97x61: r = 84/97, scaled height floor(52.8) = 52 -> pad_y = 16 px.
    // x: 14/r = 16.17 -> 16, 70/r = 80.8 -> 80; y: (14-16)/r < 0 -> 0, (70-16)/r = 62.4 -> clamped to 61.
    assert_eq!(
        out.crop,
        Some(PixelBox {
            x0: 16,
            y0: 0,
            x1: 80,
            y1: 61
        })
    );
    assert_eq!(out.roi_tokens, 36, "bbox mode appends every crop token");
}

#[test]
fn two_blocks_use_the_union_mask() {
    let hot = map(&[
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (4, 4),
        (4, 5),
        (5, 4),
        (5, 5),
    ]);
    let out = run(&hot, true);
    // Worked by hand. The blur is separable with kernel [a, b, a] =
    // [0.274, 0.452, 0.274] and reflect padding, so a 2-cell run [1, 1, 0,
    // 0, 0, 0] becomes [1, 0.726, 0.274, 0, 0, 0] (the mirror image for the
    // far block) and each block's map is the outer product of two of those.
    // Above 0.15: rows/columns 0..3 of the first block except (2, 2)
    // (0.274^2 = 0.075) and (1, 2)/(2, 1) stay (0.726 * 0.274 = 0.199);
    // the mirror for the second. Two components -> mask mode; their union
    // is the whole 6x6 grid, so resizing the mask to the grid is the
    // identity and pass 2 keeps exactly the 16 thresholded cells.
    assert_eq!(out.mode, RoiMode::Mask);
    assert_eq!(
        out.boxes,
        vec![
            TokenBox {
                x0: 0,
                y0: 0,
                x1: 3,
                y1: 3
            },
            TokenBox {
                x0: 3,
                y0: 3,
                x1: 6,
                y1: 6
            }
        ]
    );
    // The union is the whole grid: the whole 97x61 image (the padding rows
    // clamp away).
    assert_eq!(
        out.crop,
        Some(PixelBox {
            x0: 0,
            y0: 0,
            x1: 97,
            y1: 61
        })
    );
    assert_eq!(
        out.kept,
        vec![0, 1, 2, 6, 7, 8, 12, 13, 22, 23, 27, 28, 29, 33, 34, 35]
    );
    assert_eq!(out.roi_tokens, 16);
}

#[test]
fn reusing_the_prefix_cache_matches_full_recomputation() {
    for (what, hot) in [
        ("bbox", map(&[(2, 2), (2, 3), (3, 2), (3, 3)])),
        (
            "mask",
            map(&[
                (0, 0),
                (0, 1),
                (1, 0),
                (1, 1),
                (4, 4),
                (4, 5),
                (5, 4),
                (5, 5),
            ]),
        ),
    ] {
        let reused = run(&hot, true);
        let full = run(&hot, false);
        assert_ne!(reused.mode, RoiMode::None);
        assert_same_answer(&reused, &full, what);
    }
}

#[test]
fn stop_strings_end_the_answer_and_are_cut_from_it() {
    let s = session();
    let image = load_rgb(&fixtures().join("images/wide.png")).unwrap();
    let free = AnswerOptions {
        max_new_tokens: 8,
        stop_strings: Vec::new(),
    };
    let full = s.answer_baseline(&image, QUESTION, &free).unwrap();
    // Stop at the last character of the first three tokens' text.
    let prefix = s.tokenizer.decode(&full.tokens[..3]).unwrap();
    let stop = prefix.trim().chars().last().unwrap().to_string();
    let stopped = s
        .answer_baseline(
            &image,
            QUESTION,
            &AnswerOptions {
                max_new_tokens: 8,
                stop_strings: vec![stop.clone()],
            },
        )
        .unwrap();
    assert!(
        (1..=3).contains(&stopped.tokens.len()),
        "generation stops once {stop:?} appears, after at least one token: {:?}",
        stopped.tokens
    );
    assert_eq!(stopped.tokens[..], full.tokens[..stopped.tokens.len()]);
    // The answer is the free answer's text cut just before the stop string.
    let full_text = s.tokenizer.decode(&full.tokens).unwrap();
    let cut = full_text
        .find(&stop)
        .expect("the stop string is in the free answer");
    assert_eq!(stopped.answer, full_text[..cut].trim());
}

/// Four questions of different lengths about three images, in one padded
/// batch: every answer, RoI map and crop equals its batch-1 one.
#[test]
fn a_padded_batch_answers_as_each_question_does_alone() {
    use sdrpn_core::host::RpnHost;
    let s = session();
    let mut rpn = s.init_rpn(2, 1).unwrap();
    // Sharper scores than the copied layer gives, so that one threshold
    // below mixes samples with and without a crop in one batch (pass 2
    // sequences of different lengths).
    let q = rpn.head.q_proj.weight.val() * 40.0;
    rpn.head.q_proj.weight = burn::module::Param::from_tensor(q);
    let images: Vec<_> = BATCH_QUESTIONS
        .iter()
        .map(|(n, _)| load_rgb(&fixtures().join(format!("images/{n}.png"))).unwrap())
        .collect();
    let questions: Vec<_> = images.iter().zip(BATCH_QUESTIONS.map(|(_, q)| q)).collect();
    let modes = assert_batches_match(&s, &rpn, &questions, &[0.2, 0.5, 0.8]);
    eprintln!("modes: {modes:?}");
    let last = &modes[8..];
    assert!(
        last.contains(&RoiMode::None) && last.contains(&RoiMode::Bbox),
        "threshold 0.8 should mix crops and none in one batch: {last:?}"
    );
}

/// ViCrop (rel-att): its maps are HF's attention rows (the last prompt
/// position over the image, head mean), the ratio to the generic
/// question's, its crop is `vicrop_box` of that ratio, and pass 2 answers
/// as a given region does (the same insertion as an SD-RPN box), with and
/// without prefix reuse.
#[test]
fn vicrop_maps_are_hf_attention_rows_and_its_crop_is_answered_like_a_given_region() {
    use sdrpn_core::host::{HostPrompt, RpnHost};
    use sdrpn_train::two_pass::ViCropRule;
    use sdrpn_train::vicrop::{attention_rows, relative_maps};

    let s = session();
    let reference = Reference::open("llava_pad_vicuna");
    let image = load_rgb(&fixtures().join("images").join(reference.meta("image"))).unwrap();
    let question = reference.meta("question");
    let prompt = s.prepare(&image, question).unwrap();
    assert_eq!(prompt.text(), reference.meta("prompt"));
    let layers = [0, 1, 2, 3];
    // The last layer too (ViCrop may read any layer).
    assert!(s
        .answer_with_vicrop(&image, question, 3, &ViCropRule::default(), &options(true))
        .is_ok());
    assert!(s
        .answer_with_vicrop(&image, question, 4, &ViCropRule::default(), &options(true))
        .is_err());
    let (_, rows) = attention_rows(&s, &prompt, &layers, None).unwrap();
    let (shape, hf) = reference.get("lm_attentions_last_rows");
    let (heads, kept, keys) = (shape[1], shape[2], shape[3]);
    let start: usize = reference.meta("image_token_start").parse().unwrap();
    assert_eq!(prompt.visual(), start..start + 36);
    for (l, row) in rows.iter().enumerate() {
        let expected: Vec<f64> = (0..36)
            .map(|p| {
                (0..heads)
                    .map(|h| hf[((l * heads + h) * kept + kept - 1) * keys + start + p])
                    .sum::<f64>()
                    / heads as f64
            })
            .collect();
        let err = max_abs_error(row, &expected);
        assert!(
            err < 1e-6,
            "layer {l}: head-mean row differs from HF by {err:e}"
        );
    }

    // 50x83 image: a cell spans 83/6 px; a 20-px base box is one cell.
    let rule = ViCropRule {
        base_box: 20.0,
        ..ViCropRule::default()
    };
    let (_, rel) = relative_maps(&s, &prompt, &image, question, &[2], &rule, None).unwrap();
    let generic = s.prepare(&image, &rule.generic_for(question)).unwrap();
    assert!(generic
        .text()
        .contains("Write a general description of the image."));
    let (_, generic_rows) = attention_rows(&s, &generic, &[2], None).unwrap();
    for ((r, q), g) in rel[0].iter().zip(&rows[2]).zip(&generic_rows[0]) {
        assert!((r - q / g).abs() <= 1e-6 * r.abs(), "{r} vs {q} / {g}");
    }

    assert_vicrop_answers(&s, &image, question, 2, &rule, &rel[0]);
    assert_eq!(s.num_layers(), 4);
}

/// ViCrop (grad-att): the attention gradient by Burn autodiff through the
/// frozen layers equals HF's `torch.autograd.grad` of the greedy token's
/// log-probability at every layer (fixture by
/// `scripts/make_vicrop_grad_fixture.py`), the map equals ViCrop's
/// `A * relu(dA)` head mean, its crop is `vicrop_box` of that map, and pass
/// 2 answers as that crop given, with and without prefix reuse.
#[test]
fn vicrop_gradient_maps_are_hf_autograd_and_its_crop_is_answered_like_a_given_region() {
    use sdrpn_core::host::{HostPrompt, RpnHost};
    use sdrpn_core::readback::floats;
    use sdrpn_train::two_pass::{ViCropMap, ViCropRule};
    use sdrpn_train::vicrop::gradient_map;

    let s = session();
    let reference = Reference::open("llava_pad_vicuna");
    let hf = Reference::open("vicrop_grad_att");
    let image = load_rgb(&fixtures().join("images").join(reference.meta("image"))).unwrap();
    let question = reference.meta("question");
    let prompt = s.prepare(&image, question).unwrap();
    assert_eq!(prompt.text(), reference.meta("prompt"));
    let positions = prompt.positions();
    let t = prompt.len();
    let (grad_shape, hf_grads) = hf.get("attention_grad_last_row");
    let (_, hf_maps) = hf.get("grad_att_map");
    let heads = grad_shape[1];
    assert_eq!(grad_shape, &vec![4, heads, t]);
    let mut maps = Vec::new();
    for layer in 0..4 {
        let before = s.run_layers(prompt.embeds(), 0, &positions, 0..layer, None);
        let (a, grad) = s.attention_gradient(before, &positions, layer).unwrap();
        assert_eq!(a.dims(), [1, heads, t, t]);
        let last = floats(grad.slice([0..1, 0..heads, t - 1..t, 0..t])).unwrap();
        let expected = &hf_grads[layer * heads * t..(layer + 1) * heads * t];
        let err = relative_error(&last, expected);
        eprintln!("layer {layer}: dA relative error {err:e}");
        assert!(
            err < 1e-4,
            "layer {layer}: dA differs from HF by {err:e} (relative)"
        );
        let (_, map) = gradient_map(&s, &prompt, layer, None).unwrap();
        let err = max_abs_error(&map, &hf_maps[layer * 36..(layer + 1) * 36]);
        assert!(
            err < 1e-6,
            "layer {layer}: grad-att map differs from HF by {err:e}"
        );
        assert!(
            map.iter().any(|&v| v > 0.0),
            "layer {layer}: an all-zero map"
        );
        maps.push(map);
    }
    assert!(gradient_map(&s, &prompt, 4, None).is_err());

    let rule = ViCropRule {
        map: ViCropMap::Gradient,
        base_box: 20.0,
        ..ViCropRule::default()
    };
    assert_vicrop_answers(&s, &image, question, 1, &rule, &maps[1]);
}

/// ViCrop at `layer` with `rule` on the 50x83 fixture image (a 20-px base
/// box is one cell of 83/6 px) returns `map`, crops `vicrop_box(map)` (a
/// real crop, all 36 of its tokens appended), and answers as that crop
/// given, with and without prefix reuse.
fn assert_vicrop_answers(
    s: &LlavaSession<B>,
    image: &image::RgbImage,
    question: &str,
    layer: usize,
    rule: &sdrpn_train::two_pass::ViCropRule,
    map: &[f32],
) {
    use sdrpn_core::host::HostPrompt;
    let with_reuse = s
        .answer_with_vicrop(image, question, layer, rule, &options(true))
        .unwrap();
    let grid = s.prepare(image, question).unwrap().grid();
    let crop = sdrpn_core::vicrop::vicrop_box(map, grid, 50, 83, rule.base_box).unwrap();
    assert_eq!(with_reuse.crop, Some(crop));
    assert!(
        crop.width() < 50 && crop.height() < 83,
        "a real crop: {crop:?}"
    );
    assert_eq!(with_reuse.mode, RoiMode::Bbox);
    assert_eq!(with_reuse.roi_tokens, 36);
    assert!(max_difference(&with_reuse.roi_map, map) <= 1e-6 * 36.0);
    let without = s
        .answer_with_vicrop(image, question, layer, rule, &options(false))
        .unwrap();
    assert_same_answer(&with_reuse, &without, "ViCrop reuse vs recompute");
    let region = s
        .answer_with_region(image, question, crop, &options(true))
        .unwrap();
    assert_same_answer(&with_reuse, &region, "ViCrop vs its crop given");
}
