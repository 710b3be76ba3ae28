//! Loading Qwen2.5-VL checkpoints: the in-memory key layout gives the Hub
//! layout's results bit for bit, and a checkpoint that does not fit the
//! model is refused with every missing, unexpected and misshaped tensor
//! named, as are configs this model cannot run.

use crate::support::{fixtures, floats, ints, B};
use sdrpn_llava::preprocess::load_rgb;
use sdrpn_llava::weights::{write_safetensors, Checkpoint};
use sdrpn_qwen::QwenSession;
use std::path::Path;

fn logits_and_ids(model: &str) -> (Vec<f32>, Vec<i64>) {
    let session = QwenSession::<B>::load(&fixtures().join(model), &Default::default()).unwrap();
    let image = load_rgb(&fixtures().join("images/wide.png")).unwrap();
    let out = session
        .inspect(&image, "What is in the picture?", 4)
        .unwrap();
    (floats(&out, "logits").to_vec(), ints(&out, "gen_ids"))
}

#[test]
fn the_newer_key_layout_in_bf16_gives_the_f32_hub_layout_results_bit_for_bit() {
    // The fixture weights are bf16-exact, so the upcast bf16 file holds the
    // f32 file's numbers.
    assert_eq!(
        logits_and_ids("tiny-qwen-newlayout"),
        logits_and_ids("tiny-qwen")
    );
}

/// A copy of `tiny-qwen` (config, tokenizer, processor) in a fresh folder.
fn copy_model_files(to: &Path) {
    let from = fixtures().join("tiny-qwen");
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "safetensors") {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sdrpn-qwen-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn a_checkpoint_that_does_not_fit_names_every_problem() {
    let dir = temp_dir("misfit");
    copy_model_files(&dir);
    let source = Checkpoint::open(&fixtures().join("tiny-qwen")).unwrap();
    let mut tensors = Vec::new();
    for name in source.names() {
        if name == "visual.blocks.0.attn.qkv.bias" {
            continue;
        }
        let shape = source.shape(name).unwrap().to_vec();
        let values = source.read_f32(name).unwrap();
        let shape = if name == "model.norm.weight" {
            vec![shape[0] / 2, 2]
        } else {
            shape
        };
        tensors.push((name.to_string(), shape, values));
    }
    tensors.push(("visual.extra.weight".into(), vec![2], vec![0.0, 1.0]));
    write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    let e = QwenSession::<B>::load(&dir, &Default::default())
        .err()
        .expect("a misfit checkpoint is refused")
        .to_string();
    for expected in [
        "visual.blocks.0.attn.qkv.bias",
        "visual.extra.weight",
        "model.norm.weight: expected [64], found [32, 2]",
    ] {
        assert!(e.contains(expected), "{expected} not named in: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn configs_and_tokenizers_this_model_cannot_run_are_refused_by_name() {
    let dir = temp_dir("config");
    copy_model_files(&dir);
    std::os::unix::fs::symlink(
        fixtures().join("tiny-qwen/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let load = || {
        QwenSession::<B>::load(&dir, &Default::default())
            .err()
            .expect("refused")
            .to_string()
    };
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"image_token_id\": 468", "\"image_token_id\": 467"),
    )
    .unwrap();
    let e = load();
    assert!(
        e.contains("image_token_id") && e.contains("<|image_pad|>"),
        "{e}"
    );
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"mrope_section\"", "\"other_section\""),
    )
    .unwrap();
    let e = load();
    assert!(
        e.contains("config.json") && e.contains("mrope_section"),
        "{e}"
    );
    std::fs::write(dir.join("config.json"), &config).unwrap();
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    let tokenizer_config = std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&tokenizer_config).unwrap();
    json.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(dir.join("tokenizer_config.json"), json.to_string()).unwrap();
    let e = load();
    assert!(e.contains("no chat template"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
