//! Shared by the Qwen parity tests: runs a fixture case through the real
//! loading path (chat template, tokenizer, processor, checkpoint) on any
//! backend and checks every tensor the HF reference holds.
#![allow(dead_code)]

#[path = "../../../sdrpn-llava/tests/common/mod.rs"]
mod common;

use burn::tensor::backend::Backend;
pub use common::{max_abs_error, relative_error, Reference, B};
use sdrpn_core::backend::{run_on_unless_missing, BackendJob, DeviceSpec, Precision};
use sdrpn_llava::inspect::{HostValues, Inspection};
use sdrpn_llava::preprocess::load_rgb;
use sdrpn_qwen::QwenSession;
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Relative error of features, hidden states and logits: about ten times
/// the largest measured on the CPU backend (f32) on 2026-12-01 (1.2e-6 to
/// 3.9e-6; `cargo test --workspace --test parity -- --nocapture` prints
/// them), inside the 1e-4.
pub const RELATIVE_BOUND: f64 = 4e-5;
/// Attention probabilities, max abs error: the bound (measured
/// 9.5e-7 to 3.9e-6).
pub const ATTENTION_BOUND: f64 = 1e-5;

pub fn floats<'a>(out: &'a Inspection, name: &str) -> &'a [f32] {
    match out.get(name) {
        Some((_, HostValues::F32(v))) => v,
        other => panic!("{name}: {other:?}"),
    }
}

pub fn ints(out: &Inspection, name: &str) -> Vec<i64> {
    match out.get(name) {
        Some((_, HostValues::I64(v))) => v.clone(),
        other => panic!("{name}: {other:?}"),
    }
}

fn check_relative(case: &str, name: &str, ours: &[f32], reference: &[f64]) {
    let e = relative_error(ours, reference);
    eprintln!("{case}: {name} relative error {e:.2e}");
    assert!(e <= RELATIVE_BOUND, "{case}: {name} relative error {e:e}");
}

fn check_attention(case: &str, name: &str, ours: &[f32], reference: &[f64]) {
    let e = max_abs_error(ours, reference);
    eprintln!("{case}: {name} max abs error {e:.2e}");
    assert!(e <= ATTENTION_BOUND, "{case}: {name} max abs error {e:e}");
}

/// The last `rows` query rows of `[L, H, T, T]` attention.
fn last_rows(attn: &[f32], t: usize, rows: usize) -> Vec<f32> {
    attn.chunks_exact(t * t)
        .flat_map(|block| block[(t - rows) * t..].to_vec())
        .collect()
}

/// What a case computes: the inspection, the rendered prompt and the
/// resized image's bytes (channel-major).
pub struct CaseRun {
    pub out: Inspection,
    pub prompt: String,
    pub resized: Vec<f64>,
}

/// Runs fixture case `name` on the backend that runs the job.
pub struct RunCase(pub &'static str);

impl BackendJob for RunCase {
    type Output = CaseRun;
    fn run<B: Backend>(self, device: B::Device) -> CaseRun {
        let case = Reference::open_at(&fixtures(), self.0);
        let dir = fixtures().join(case.meta("model"));
        let session = QwenSession::<B>::load(&dir, &device).unwrap();
        let image = load_rgb(&fixtures().join("images").join(case.meta("image"))).unwrap();
        let n = case.get("gen_ids").1.len();
        let prepared = session.prepare(&image, case.meta("question")).unwrap();
        let resized = (0..3)
            .flat_map(|c| prepared.resized.pixels().map(move |p| p[c] as f64))
            .collect();
        let out = session.inspect(&image, case.meta("question"), n).unwrap();
        CaseRun {
            out,
            prompt: prepared.prompt,
            resized,
        }
    }
}

/// Runs case `name` on the CPU and checks it.
pub fn check_case(name: &'static str) {
    check_run(name, RunCase(name).run::<B>(Default::default()));
}

/// Runs case `name` on `spec` in f32 (skipped with a message when the
/// device is unusable, unless required) and checks it.
pub fn check_case_on(name: &'static str, spec: DeviceSpec) {
    let run = run_on_unless_missing(&spec, Precision::F32, RunCase(name))
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(run) = run {
        check_run(&format!("{name} on {spec}"), run);
    }
}

/// Checks every tensor the reference of case `name` holds.
fn check_run(label: &str, run: CaseRun) {
    let name = label.split(' ').next().unwrap_or(label);
    let case = Reference::open_at(&fixtures(), name);
    let out = &run.out;
    let name = label;
    assert_eq!(run.prompt, case.meta("prompt"), "{name}: rendered prompt");
    assert_eq!(
        run.resized,
        case.get("pixel_values_u8").1,
        "{name}: resized image"
    );
    let as_i64 = |v: &[f64]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    assert_eq!(
        ints(out, "input_ids"),
        as_i64(&case.get("input_ids").1),
        "{name}: input_ids"
    );
    assert_eq!(
        ints(out, "image_grid_thw"),
        as_i64(&case.get("image_grid_thw").1),
        "{name}: grid"
    );
    assert_eq!(
        ints(out, "position_ids"),
        as_i64(&case.get("position_ids").1),
        "{name}: position_ids"
    );
    assert_eq!(
        ints(out, "gen_ids"),
        as_i64(&case.get("gen_ids").1),
        "{name}: greedy tokens"
    );
    if let Some((_, px)) = case.tensors.get("pixel_values") {
        let e = max_abs_error(floats(out, "pixel_values"), px);
        eprintln!("{name}: pixel_values max abs error {e:.2e}");
        assert!(e <= 1e-6, "{name}: pixel values differ by {e:e}");
    }
    check_relative(
        name,
        "image_features_projected",
        floats(out, "image_features_projected"),
        &case.get("image_features_projected").1,
    );
    let hidden = floats(out, "lm_hidden_states");
    let logits = floats(out, "logits");
    let attn = floats(out, "lm_attentions");
    let t = case.get("input_ids").1.len();
    if case.tensors.contains_key("lm_hidden_states") {
        check_relative(
            name,
            "lm_hidden_states",
            hidden,
            &case.get("lm_hidden_states").1,
        );
        check_relative(name, "logits", logits, &case.get("logits").1);
        check_attention(name, "lm_attentions", attn, &case.get("lm_attentions").1);
    } else {
        let last_state = &hidden[hidden.len() - case.get("lm_hidden_last").1.len()..];
        check_relative(
            name,
            "lm_hidden_last",
            last_state,
            &case.get("lm_hidden_last").1,
        );
        let v = case.get("logits_last").1.len();
        check_relative(
            name,
            "logits_last",
            &logits[logits.len() - v..],
            &case.get("logits_last").1,
        );
        let rows = case.get("lm_attentions_last_rows").0[2];
        check_attention(
            name,
            "lm_attentions_last_rows",
            &last_rows(attn, t, rows),
            &case.get("lm_attentions_last_rows").1,
        );
    }
    check_attention(
        name,
        "decode_attentions",
        floats(out, "decode_attentions"),
        &case.get("decode_attentions").1,
    );
}
