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
    let proj = relative_error(
        floats(out, "image_features_projected"),
        &reference.get("image_features_projected").1,
    );
    assert!(
        proj <= 1e-4,
        "{case}: projected features relative error {proj:e}"
    );
    let decode = &reference.get("decode_attentions");
    let ours = floats(out, "decode_attentions");
    let err = max_abs_error(&ours[..decode.1.len()], &decode.1);
    assert!(
        err <= 1e-5,
        "{case}: decode attention max abs error {err:e}"
    );
    eprintln!("{case}: projected rel {proj:.2e}, decode attention abs {err:.2e}");
}

#[test]
fn case_a_hf_tokenization_crop_raw_template_matches_everything() {
    let reference = Reference::open("hf_crop_raw");
    let out = inspect_case("tiny-llava", &reference);
    check_common(&out, &reference, "a");
    let pixels = max_abs_error(
        floats(&out, "pixel_values"),
        &reference.get("pixel_values").1,
    );
    assert!(pixels <= 1e-4, "pixel_values max abs error {pixels:e}");
    for (name, tol) in [
        ("image_features_selected", 1e-4),
        ("lm_hidden_states", 1e-4),
        ("logits", 1e-4),
    ] {
        let e = relative_error(floats(&out, name), &reference.get(name).1);
        assert!(e <= tol, "{name}: relative error {e:e} > {tol:e}");
        eprintln!("a: {name} rel {e:.2e}");
    }
    let attn = max_abs_error(
        floats(&out, "lm_attentions"),
        &reference.get("lm_attentions").1,
    );
    assert!(attn <= 1e-5, "attention max abs error {attn:e}");
    eprintln!("a: pixels abs {pixels:.2e}, attention abs {attn:.2e}");
}

fn check_reduced_case(name: &str, model: &str) {
    let reference = Reference::open(name);
    let out = inspect_case(model, &reference);
    check_common(&out, &reference, name);
    let (shape, _) = out.get("lm_attentions").unwrap();
    let (l, h, t) = (shape[0], shape[1], shape[2]);
    let hidden = floats(&out, "lm_hidden_states");
    let per_state = hidden.len() / (l + 1);
    let d = per_state / t;
    if let Some((_, last)) = reference.tensors.get("lm_hidden_last") {
        let e = relative_error(&hidden[l * per_state..], last);
        assert!(e <= 1e-4, "{name}: last hidden state relative error {e:e}");
    }
    if let Some((_, logits_last)) = reference.tensors.get("logits_last") {
        let logits = floats(&out, "logits");
        let v = logits.len() / t;
        let e = relative_error(&logits[(t - 1) * v..], logits_last);
        assert!(e <= 1e-4, "{name}: last logits relative error {e:e}");
    }
    if let Some((_, rows)) = reference.tensors.get("lm_attentions_last_rows") {
        let ours = last_rows(floats(&out, "lm_attentions"), l, h, t, 4);
        let e = max_abs_error(&ours, rows);
        assert!(e <= 1e-5, "{name}: attention rows max abs error {e:e}");
    }
    if let Some((_, pixels)) = reference.tensors.get("pixel_values") {
        let e = max_abs_error(floats(&out, "pixel_values"), pixels);
        assert!(e <= 1e-4, "{name}: pixel_values max abs error {e:e}");
    }
    assert!(d > 0);
}

#[test]
fn case_b_llava_tokenization_pad_vicuna_tall_image() {
    check_reduced_case("llava_pad_vicuna", "tiny-llava");
}

#[test]
fn case_c_llava_tokenization_pad_vicuna_big_image() {
    check_reduced_case("llava_pad_vicuna_big", "tiny-llava");
}

#[test]
fn case_d_336_pixel_model_with_576_visual_tokens() {
    let reference = Reference::open("336_llava_pad_vicuna");
    assert_eq!(reference.get("image_features_projected").0[0], 576);
    check_reduced_case("336_llava_pad_vicuna", "tiny-llava-336");
}
