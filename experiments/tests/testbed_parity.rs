//! The shipped testbed model in HF transformers and in Burn: the same token
//! ids, pixels, logits (within the parity bounds of sdrpn-llava's tests)
//! and greedy answer. The reference is written by
//! `python scripts/make_fixtures.py --testbed` (pinned versions in
//! scripts/requirements-fixtures.txt) from `experiments/testbed/reference/`.

use safetensors::{Dtype, SafeTensors};
use sdrpn_core::backend::CpuBackend as B;
use sdrpn_core::readback::floats;
use sdrpn_llava::preprocess::load_rgb;
use sdrpn_llava::session::{AnswerOptions, LlavaSession, PromptOptions};
use sdrpn_llava::taps::Taps;
use std::collections::HashMap;
use std::path::PathBuf;

/// The reference tensors as f64, by name.
fn reference(path: &std::path::Path) -> HashMap<String, Vec<f64>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::I64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, values)
        })
        .collect()
}

/// ||a - b|| / ||b||.
fn relative_error(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn the_shipped_testbed_model_matches_hf_transformers() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testbed");
    let dir = root.join("reference");
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let reference = reference(&dir.join("logits.safetensors"));
    let device = Default::default();
    let session =
        LlavaSession::<B>::load(&root.join("model"), &device, PromptOptions::default()).unwrap();
    let image = load_rgb(&dir.join(case["image"].as_str().unwrap())).unwrap();
    let question = case["question"].as_str().unwrap();

    let prepared = session.prepare(&image, question).unwrap();
    let want_ids: Vec<u32> = reference["input_ids"].iter().map(|&v| v as u32).collect();
    assert_eq!(prepared.ids, want_ids, "token ids");

    let pixels = floats(session.pixels(&image)).unwrap();
    let worst = pixels
        .iter()
        .zip(&reference["pixel_values"])
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(worst <= 1e-4, "pixel values max abs error {worst:e}");

    let out = session
        .model
        .forward(prepared.embeds.clone(), 0, None, &Taps::none());
    let lm = &session.model.language;
    let logits = floats(lm.logits(out.hidden)).unwrap();
    let e = relative_error(&logits, &reference["logits"]);
    assert!(e <= 1e-4, "logits relative error {e:e}");

    let options = AnswerOptions {
        max_new_tokens: 8,
        stop_strings: Vec::new(),
    };
    let mut cache = sdrpn_llava::cache::KvCache::new(lm.num_layers());
    let tokens = session
        .answer_tokens(
            prepared.embeds,
            &mut cache,
            &options,
            &Taps::none(),
            |_, _| Ok(()),
        )
        .unwrap();
    let want: Vec<u32> = reference["gen_ids"].iter().map(|&v| v as u32).collect();
    // Both sequences end with EOS.
    assert_eq!(tokens, want, "greedy tokens");
}
