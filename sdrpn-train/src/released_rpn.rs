//! The authors' released RPN checkpoints imported into our run format, so
//! that `sdrpn infer` / `eval --rpn RUN` use them directly (`sdrpn
//! import-rpn`).
//!
//! A released checkpoint is a whole model with the twig layers inside
//! (layouts and citations: `docs/RELEASED_ARTIFACTS.md`; YuHengsss/SD-RPN
//! `00876ac`). Its `config.json` names `twig_K` and `twig_T`
//! (`train.py`:955-962), and the RPN reads (`llama_src.py`:1311-1356):
//!
//! | released key (after the prefix, `model.`) | our RPN parameter |
//! |---|---|
//! | `twig_layers.{i}.*`, i < T-1 (whole decoder layers) | `twig_layers.{i}.*` |
//! | `twig_norm.weight` (LLaVA, `roi_super_type` `v1`, the default) | `twig_norm.weight` |
//! | `twig_layers.{T-1}.input_layernorm.weight` | `head_norm.weight` |
//! | `twig_layers.{T-1}.self_attn.{q,k}_proj.{weight,bias}` | `head.{q,k}_proj.*` |
//!
//! Linear weights are stored `[out, in]` by PyTorch and `[in, out]` by Burn:
//! they are transposed. `twig_head` (a copy of `lm_head`), the last twig
//! layer's v/o projections and MLP are unused by the RPN and not read.
//! Qwen2.5-VL's RPN skips `twig_norm` (`modeling_qwen2_5_vl.py`:1302-1303)
//! and has q/k biases. The RPN is used with the base model it was trained
//! on (llava-hf/llava-1.5-7b-hf for the 7B release: the base layers are
//! frozen, so they equal it).

use crate::config::SdrpnConfig;
use crate::error::{write_atomic, Result, TrainError};
use sdrpn_llava::weights::{write_safetensors, Checkpoint, HostTensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file an imported run records its source in.
pub const SOURCE_FILE: &str = "imported.json";

/// The host family of a released checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleasedHost {
    /// LLaVA-1.5 (`model_type` `llava_llama` or `llava`): twig norm, no q/k bias.
    Llava,
    /// Qwen2.5-VL (`qwen2_5_vl`): no twig norm, q/k biases.
    Qwen,
}

/// What an imported run records of its source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RpnSource {
    /// The program that wrote it.
    pub program: String,
    /// The checkpoint folder, as given.
    pub checkpoint: PathBuf,
    /// Its host family.
    pub host: ReleasedHost,
    /// `twig_K` (the branch layer K).
    pub branch_layer: usize,
    /// `twig_T` (twig layers T).
    pub twig_layers: usize,
    /// The released keys read, with the parameter each became.
    pub tensors: Vec<(String, String)>,
}

/// What the checkpoint's `config.json` says of its RPN.
struct TwigConfig {
    host: ReleasedHost,
    branch: usize,
    twig: usize,
    layers: usize,
}

fn twig_config(dir: &Path) -> Result<TwigConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| TrainError::format(&path, e.to_string()))?;
    let text_config = json.get("text_config").unwrap_or(&json);
    let number = |key: &str| -> Option<usize> {
        json.get(key)
            .or_else(|| text_config.get(key))
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
    };
    let (Some(branch), Some(twig)) = (number("twig_K"), number("twig_T")) else {
        return Err(TrainError::format(
            &path,
            "names no twig_K / twig_T: not an SD-RPN checkpoint (its training writes both, train.py:955-962)",
        ));
    };
    if json.get("enable_twig").and_then(|v| v.as_bool()) == Some(false) {
        return Err(TrainError::format(
            &path,
            "says enable_twig = false: it holds no RPN",
        ));
    }
    let model_type = json
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let host = match model_type {
        "llava_llama" | "llava" => ReleasedHost::Llava,
        "qwen2_5_vl" => ReleasedHost::Qwen,
        other => {
            return Err(TrainError::format(
                &path,
                format!("model_type {other:?}: LLaVA (llava_llama) and Qwen2.5-VL (qwen2_5_vl) checkpoints are imported"),
            ))
        }
    };
    let super_type = json
        .get("roi_super_type")
        .and_then(|v| v.as_str())
        .unwrap_or("v1");
    if host == ReleasedHost::Llava && super_type != "v1" {
        return Err(TrainError::format(
            &path,
            format!("roi_super_type {super_type:?}: only v1 (the default, twig norm applied) is imported"),
        ));
    }
    let layers = number("num_hidden_layers")
        .ok_or_else(|| TrainError::format(&path, "names no num_hidden_layers"))?;
    if twig < 2 || branch + twig > layers {
        return Err(TrainError::format(
            &path,
            format!("twig_K {branch} and twig_T {twig} do not fit {layers} layers (T >= 2, K + T <= layers)"),
        ));
    }
    Ok(TwigConfig {
        host,
        branch,
        twig,
        layers,
    })
}

/// Imports the RPN of the released checkpoint in `checkpoint` into the run
/// folder `out` (`rpn.safetensors`, `config.toml`, `imported.json`). The
/// config is `preset` (default: the paper's preset for the host and depth)
/// with K and T from the checkpoint.
pub fn import_released_rpn(
    checkpoint: &Path,
    out: &Path,
    preset: Option<&str>,
) -> Result<RpnSource> {
    let twig = twig_config(checkpoint)?;
    let mut config = match preset {
        Some(name) => SdrpnConfig::preset(name)?,
        None => {
            let family = match twig.host {
                ReleasedHost::Llava => "llava",
                ReleasedHost::Qwen => "qwen2_5_vl",
            };
            SdrpnConfig::preset_for_model(family, twig.layers)?
        }
    };
    config.rpn.branch_layer = twig.branch;
    config.rpn.twig_layers = twig.twig;
    let store = Checkpoint::open_renamed(checkpoint, str::to_string)?;
    let suffix = "twig_layers.0.self_attn.q_proj.weight";
    let prefix = store
        .names()
        .find_map(|n| n.strip_suffix(suffix))
        .map(str::to_string)
        .ok_or_else(|| {
            TrainError::format(
                checkpoint,
                format!("holds no twig layers (no key ending in {suffix})"),
            )
        })?;
    let last = twig.twig - 1;
    let mut wanted: Vec<(String, String)> = Vec::new();
    for name in store.names() {
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let Some(layer_rest) = rest.strip_prefix("twig_layers.") else {
            continue;
        };
        let Some((index, param)) = layer_rest.split_once('.') else {
            continue;
        };
        let index: usize = index.parse().map_err(|_| {
            TrainError::format(
                checkpoint,
                format!("twig layer key {name} has no layer number"),
            )
        })?;
        let ours = if index < last {
            Some(format!("twig_layers.{index}.{param}"))
        } else if index == last {
            match param {
                "input_layernorm.weight" => Some("head_norm.weight".to_string()),
                p => ["q_proj", "k_proj"].iter().find_map(|proj| {
                    p.strip_prefix(&format!("self_attn.{proj}."))
                        .map(|w| format!("head.{proj}.{w}"))
                }),
            }
        } else {
            return Err(TrainError::format(
                checkpoint,
                format!(
                    "holds twig layer {index} but config.json says twig_T {}",
                    twig.twig
                ),
            ));
        };
        if let Some(ours) = ours {
            wanted.push((name.to_string(), ours));
        }
    }
    if twig.host == ReleasedHost::Llava {
        let norm = format!("{prefix}twig_norm.weight");
        if store.shape(&norm).is_none() {
            return Err(TrainError::format(checkpoint, format!("holds no {norm}")));
        }
        wanted.push((norm, "twig_norm.weight".into()));
    }
    wanted.sort_by(|a, b| a.1.cmp(&b.1));
    for required in [
        "head_norm.weight",
        "head.q_proj.weight",
        "head.k_proj.weight",
    ] {
        if !wanted.iter().any(|(_, ours)| ours == required) {
            return Err(TrainError::format(
                checkpoint,
                format!(
                    "lacks the last twig layer's part that becomes {required} (twig layer {last})"
                ),
            ));
        }
    }
    let mut tensors: Vec<HostTensor> = Vec::new();
    for (released, ours) in &wanted {
        let shape = store.shape(released).expect("listed above").to_vec();
        let values = store.read_f32(released)?;
        tensors.push(match shape[..] {
            [rows, cols] => (
                ours.clone(),
                vec![cols, rows],
                transpose(&values, rows, cols),
            ),
            _ => (ours.clone(), shape, values),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let _lock = crate::lock::FolderLock::acquire(out, None, "sdrpn import-rpn")?;
    if out.join("rpn.safetensors").exists() && !out.join(SOURCE_FILE).exists() {
        return Err(TrainError::config(
            "run folder",
            format!(
                "{} holds an RPN trained by `sdrpn train`: import into a new --out folder",
                out.display()
            ),
        ));
    }
    write_safetensors(&out.join("rpn.safetensors"), &tensors)?;
    config.save(&out.join("config.toml"))?;
    let source = RpnSource {
        program: crate::provenance::program(),
        checkpoint: checkpoint.to_path_buf(),
        host: twig.host,
        branch_layer: twig.branch,
        twig_layers: twig.twig,
        tensors: wanted,
    };
    let text = serde_json::to_string_pretty(&source).expect("serialises");
    write_atomic(&out.join(SOURCE_FILE), text.as_bytes())?;
    Ok(source)
}

/// A row-major `[rows, cols]` matrix as `[cols, rows]`.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}
