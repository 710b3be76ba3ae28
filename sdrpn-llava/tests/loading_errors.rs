//! Bad checkpoints, configs, images and prompts give errors that name the
//! problem, never a panic or a silently wrong model.

mod common;

use common::*;
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use sdrpn_llava::preprocess::load_rgb;
use sdrpn_llava::session::{LlavaSession, PromptOptions};
use sdrpn_llava::Llava;
use std::path::{Path, PathBuf};

/// Copies the f32 tiny model to a temp dir, rewriting its tensors with `edit`.
fn edited_model(tag: &str, edit: impl Fn(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) -> PathBuf {
    let src = model_dir("tiny-llava");
    let dir = std::env::temp_dir().join(format!("sdrpn-loading-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    Llava::<B>::load(dir, &device()).unwrap_err().to_string()
}

#[test]
fn missing_unexpected_and_misshaped_tensors_are_all_listed() {
    let dir = edited_model("problems", |t| {
        t.retain(|(n, _, _)| n != "language_model.model.layers.2.mlp.up_proj.weight");
        t.push(("extra.weight".into(), vec![2], vec![0; 8]));
        let norm = t
            .iter_mut()
            .find(|(n, _, _)| n == "language_model.model.norm.weight")
            .unwrap();
        norm.1 = vec![32];
        norm.2.truncate(32 * 4);
    });
    let e = load_err(&dir);
    assert!(
        e.contains("1 missing tensors")
            && e.contains("language_model.model.layers.2.mlp.up_proj.weight"),
        "{e}"
    );
    assert!(
        e.contains("1 unexpected tensors") && e.contains("extra.weight"),
        "{e}"
    );
    assert!(
        e.contains("language_model.model.norm.weight: expected [64], found [32]"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn non_finite_weights_are_refused_at_load_naming_the_tensor() {
    let dir = edited_model("nan", |t| {
        let norm = t
            .iter_mut()
            .find(|(n, _, _)| n == "language_model.model.norm.weight")
            .unwrap();
        norm.2[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        norm.2[8..12].copy_from_slice(&f32::INFINITY.to_le_bytes());
    });
    let e = load_err(&dir);
    assert!(
        e.contains("NaN or infinite values in language_model.model.norm.weight (2 of 64)"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = edited_model("dtype", |_| {});
    // Rewrite one tensor as I32 (same byte size as F32).
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let dtype = if n == "language_model.model.norm.weight" {
                safetensors::Dtype::I32
            } else {
                v.dtype()
            };
            (n, dtype, v.shape().to_vec(), v.data().to_vec())
        })
        .collect();
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("I32") && e.contains("language_model.model.norm.weight"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn truncated_or_absent_files_are_named() {
    let dir = edited_model("truncated", |_| {});
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors"), "{e}");
    std::fs::remove_file(&path).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("neither model.safetensors nor model.safetensors.index.json"),
        "{e}"
    );
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("config.json"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_images_and_prompts_are_clear_errors() {
    let e = load_rgb(Path::new("/nonexistent/cat.png"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/cat.png"), "{e}");
    let junk = std::env::temp_dir().join(format!("sdrpn-junk-{}.png", std::process::id()));
    std::fs::write(&junk, b"not an image").unwrap();
    let e = load_rgb(&junk).unwrap_err().to_string();
    assert!(
        e.contains("cannot decode") || e.contains("sdrpn-junk"),
        "{e}"
    );
    std::fs::remove_file(junk).ok();

    let options = PromptOptions {
        template: sdrpn_llava::prompt::Template::Raw,
        ..PromptOptions::default()
    };
    let session = LlavaSession::<B>::load(&model_dir("tiny-llava"), &device(), options).unwrap();
    let image = load_rgb(&fixtures().join("images/wide.png")).unwrap();
    let e = session
        .prepare(&image, "no placeholder here")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no <image> placeholder"), "{e}");
    let e = session
        .prepare(&image, "<image> and <image>")
        .unwrap_err()
        .to_string();
    assert!(e.contains("exactly one <image>"), "{e}");
    // An answer that cannot fit the model's context is refused up front.
    let e = session
        .answer(
            &image,
            "<image> What?",
            &sdrpn_llava::session::AnswerOptions {
                max_new_tokens: 1_000_000,
                stop_strings: Vec::new(),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("new tokens exceed the model's context of"),
        "{e}"
    );
}

#[test]
fn a_tokenizer_json_of_the_wrong_shape_is_told_from_broken_json() {
    use sdrpn_llava::tokenizer::LlavaTokenizer;
    let dir = edited_model("tokenizer", |_| {});
    let path = dir.join("tokenizer.json");
    let err = |text: &str| {
        std::fs::write(&path, text).unwrap();
        match LlavaTokenizer::from_dir(&dir, 32000) {
            Ok(_) => panic!("{text:?} is not a tokenizer"),
            Err(e) => e.to_string(),
        }
    };
    let e = err("{\"model\": ");
    assert!(e.contains("tokenizer.json: not valid JSON"), "{e}");
    // tokenizer_config.json saved under the wrong name: JSON, wrong shape.
    let e = err("{\"add_bos_token\": true, \"model_max_length\": 4096}");
    assert!(
        e.contains("valid JSON, but not a `tokenizers` tokenizer.json (lacks model, normalizer"),
        "{e}"
    );
    let e = err("[\"<s>\", \"</s>\"]");
    assert!(
        e.contains("valid JSON, but not a `tokenizers` tokenizer.json"),
        "{e}"
    );
    // The right shape with a broken model inside is the library's error.
    let e = err("{\"model\": {\"type\": \"Nonesuch\"}}");
    assert!(
        e.contains("not a tokenizer the `tokenizers` library can build"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).ok();
}
