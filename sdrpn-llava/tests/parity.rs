//! Parity with HF transformers on the committed tiny fixtures
//! (`scripts/make_fixtures.py`): ids, pixels, image features, hidden states,
//! attention, logits and greedy tokens of the real loading path.

mod common;

use common::*;
use sdrpn_llava::inspect::Inspection;
use sdrpn_llava::preprocess::load_rgb;
use sdrpn_llava::session::{LlavaSession, PromptOptions};

fn options_of(reference: &Reference) -> PromptOptions {
    PromptOptions {
        template: reference.meta("template").parse().unwrap(),
        tokenization: reference.meta("tokenization").parse().unwrap(),
        image_mode: reference.meta("image_mode").parse().unwrap(),
    }
}

/// Runs `inspect` on the case's model, image and question.
fn inspect_case(model: &str, case: &Reference) -> Inspection {
    let session = LlavaSession::<B>::load(&model_dir(model), &device(), options_of(case)).unwrap();
    let image = load_rgb(&fixtures().join("images").join(case.meta("image"))).unwrap();
    let text = match case.meta("template") {
        "raw" => case.meta("prompt"),
        _ => case.meta("question"),
    };
    let n = case.get("gen_ids").1.len();
    session.inspect(&image, text, n).unwrap()
}

/// The last `rows` query rows of `[L, H, T, T]` attention, as `[L, H, rows, T]`.
fn last_rows(attn: &[f32], l: usize, h: usize, t: usize, rows: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(l * h * rows * t);
    for block in attn.chunks_exact(t * t).take(l * h) {
        out.extend_from_slice(&block[(t - rows) * t..]);
    }
    out
}

/// Bounds, about ten times the errors measured on the CPU backend (f32)
/// on 2026-11-30 (`cargo test --workspace --test parity -- --nocapture`
/// prints each case's errors): relative errors of features, hidden states
/// and logits measured 5.3e-7 to 9.4e-7; attention probabilities max-abs
/// 3.9e-7 to 1.5e-6.
const RELATIVE_BOUND: f64 = 1e-5;
/// Attention probabilities, max abs error (see [`RELATIVE_BOUND`]).
const ATTENTION_BOUND: f64 = 1.5e-5;

/// Asserts `ours` against reference tensor `name` by relative error.
fn check_relative(case: &str, name: &str, ours: &[f32], reference: &[f64]) {
    let e = relative_error(ours, reference);
    eprintln!("{case}: {name} relative error {e:.2e}");
    assert!(
        e <= RELATIVE_BOUND,
        "{case}: {name} relative error {e:e} > {RELATIVE_BOUND:e}"
    );
}

/// Asserts attention probabilities against reference tensor `name`.
fn check_attention(case: &str, name: &str, ours: &[f32], reference: &[f64]) {
    let e = max_abs_error(ours, reference);
    eprintln!("{case}: {name} max abs error {e:.2e}");
    assert!(
        e <= ATTENTION_BOUND,
        "{case}: {name} max abs error {e:e} > {ATTENTION_BOUND:e}"
    );
}

/// Pixels are bit-exact: the same resampling and normalisation in f32.
fn check_pixels(case: &str, ours: &[f32], reference: &[f64]) {
    assert_eq!(ours.len(), reference.len(), "{case}: pixel count");
    let differing = ours
        .iter()
        .zip(reference)
        .filter(|(a, b)| **a as f64 != **b)
        .count();
    assert_eq!(
        differing,
        0,
        "{case}: {differing} pixel values differ (max abs {:e})",
        max_abs_error(ours, reference)
    );
}

fn check_common(out: &Inspection, reference: &Reference, case: &str) {
    assert_eq!(
        ids(out, "input_ids"),
        reference.ids("input_ids"),
        "{case}: input_ids"
    );
    assert_eq!(
        ids(out, "gen_ids"),
        reference.ids("gen_ids"),
        "{case}: gen_ids"
    );
    check_relative(
        case,
        "image_features_projected",
        floats(out, "image_features_projected"),
        &reference.get("image_features_projected").1,
    );
    let decode = &reference.get("decode_attentions");
    let ours = floats(out, "decode_attentions");
    check_attention(
        case,
        "decode_attentions",
        &ours[..decode.1.len()],
        &decode.1,
    );
}

#[test]
fn case_a_hf_tokenization_crop_raw_template_matches_everything() {
    let reference = Reference::open("hf_crop_raw");
    let out = inspect_case("tiny-llava", &reference);
    check_common(&out, &reference, "a");
    check_pixels(
        "a",
        floats(&out, "pixel_values"),
        &reference.get("pixel_values").1,
    );
    for name in ["image_features_selected", "lm_hidden_states", "logits"] {
        check_relative("a", name, floats(&out, name), &reference.get(name).1);
    }
    check_attention(
        "a",
        "lm_attentions",
        floats(&out, "lm_attentions"),
        &reference.get("lm_attentions").1,
    );
}

/// Checks a case whose fixture stores reduced tensors (last rows, last
/// state) to stay small. Every tensor in `required` must be in the fixture
/// and is compared; a fixture tensor no check knows is an error too, so
/// nothing is skipped silently.
fn check_reduced_case(name: &str, model: &str, required: &[&str]) {
    let reference = Reference::open(name);
    for tensor in required {
        assert!(
            reference.tensors.contains_key(*tensor),
            "{name}: the fixture lacks {tensor} (regenerate: python scripts/make_fixtures.py)"
        );
    }
    let always = [
        "input_ids",
        "gen_ids",
        "image_features_projected",
        "decode_attentions",
    ];
    for stored in reference.tensors.keys() {
        assert!(
            always.contains(&stored.as_str()) || required.contains(&stored.as_str()),
            "{name}: the fixture holds {stored}, which this case does not compare"
        );
    }
    let out = inspect_case(model, &reference);
    check_common(&out, &reference, name);
    let (shape, _) = out.get("lm_attentions").unwrap();
    let (l, h, t) = (shape[0], shape[1], shape[2]);
    for &tensor in required {
        let theirs = &reference.get(tensor).1;
        match tensor {
            "pixel_values" => check_pixels(name, floats(&out, "pixel_values"), theirs),
            "image_features_selected" => check_relative(name, tensor, floats(&out, tensor), theirs),
            "lm_hidden_last" => {
                let hidden = floats(&out, "lm_hidden_states");
                let per_state = hidden.len() / (l + 1);
                check_relative(name, tensor, &hidden[l * per_state..], theirs);
            }
            "logits_last" => {
                let logits = floats(&out, "logits");
                let v = logits.len() / t;
                check_relative(name, tensor, &logits[(t - 1) * v..], theirs);
            }
            "lm_attentions_last_rows" => {
                let ours = last_rows(floats(&out, "lm_attentions"), l, h, t, 4);
                check_attention(name, tensor, &ours, theirs);
            }
            other => panic!("{name}: no comparison for {other}"),
        }
    }
}

#[test]
fn case_b_llava_tokenization_pad_vicuna_tall_image() {
    check_reduced_case(
        "llava_pad_vicuna",
        "tiny-llava",
        &[
            "pixel_values",
            "image_features_selected",
            "lm_hidden_last",
            "logits_last",
            "lm_attentions_last_rows",
        ],
    );
}

#[test]
fn case_c_llava_tokenization_pad_vicuna_big_image() {
    check_reduced_case(
        "llava_pad_vicuna_big",
        "tiny-llava",
        &["pixel_values", "image_features_selected", "logits_last"],
    );
}

#[test]
fn case_d_336_pixel_model_with_576_visual_tokens() {
    let reference = Reference::open("336_llava_pad_vicuna");
    assert_eq!(reference.get("image_features_projected").0[0], 576);
    check_reduced_case(
        "336_llava_pad_vicuna",
        "tiny-llava-336",
        &["lm_hidden_last", "logits_last", "lm_attentions_last_rows"],
    );
}
