//! Model configuration from a Qwen2.5-VL `config.json`: the older flat
//! layout (text keys at the top level, as the released checkpoints have
//! it) and the nested one (`text_config`, as transformers 4.57 writes it),
//! with HF's class defaults for the keys a file leaves out.

use crate::error::{QwenError, Result};
use sdrpn_llava::config::LlamaConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// The window-attention ViT and its patch merger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QwenVisionConfig {
    /// Transformer blocks.
    pub depth: usize,
    /// Width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Side of the square of patches merged into one LLM token.
    pub spatial_merge_size: usize,
    /// Frames per patch (an image is its own second frame).
    pub temporal_patch_size: usize,
    /// Side of an attention window in pixels.
    pub window_size: usize,
    /// Blocks that attend over the whole image instead of windows.
    pub fullatt_block_indexes: Vec<usize>,
    /// Width of the merger's output (the language model's width).
    pub out_hidden_size: usize,
}

impl QwenVisionConfig {
    /// Pixels per LLM token side (`patch_size * spatial_merge_size`, 28).
    pub fn factor(&self) -> usize {
        self.patch_size * self.spatial_merge_size
    }

    /// Values in one flattened patch (`3 * temporal * patch * patch`).
    pub fn patch_values(&self) -> usize {
        3 * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Merged tokens per window side (`window_size / factor`).
    pub fn merged_window(&self) -> usize {
        self.window_size / self.factor()
    }
}

/// The whole Qwen2.5-VL model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QwenConfig {
    /// Vision tower.
    pub vision: QwenVisionConfig,
    /// The Qwen2 language model (q/k/v biases, M-RoPE sections).
    pub text: LlamaConfig,
    /// Token id of `<|image_pad|>`.
    pub image_token_id: u32,
    /// Token id of `<|vision_start|>`.
    pub vision_start_token_id: u32,
    /// Token id of `<|vision_end|>`.
    pub vision_end_token_id: u32,
}

/// A JSON object with typed getters that name the key at fault.
struct Section<'a> {
    name: &'a str,
    map: &'a Map<String, Value>,
}

impl Section<'_> {
    fn key(&self, k: &str) -> String {
        if self.name.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.name)
        }
    }

    fn usize_or(&self, k: &str, default: usize) -> Result<usize> {
        match self.map.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
                QwenError::invalid(self.key(k), format!("{v} is not a non-negative integer"))
            }),
        }
    }

    fn f64_or(&self, k: &str, default: f64) -> Result<f64> {
        match self.map.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| QwenError::invalid(self.key(k), format!("{v} is not a number"))),
        }
    }

    fn bool_or(&self, k: &str, default: bool) -> Result<bool> {
        match self.map.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| QwenError::invalid(self.key(k), format!("{v} is not a boolean"))),
        }
    }

    fn str_or<'b>(&'b self, k: &str, default: &'b str) -> Result<&'b str> {
        match self.map.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| QwenError::invalid(self.key(k), format!("{v} is not a string"))),
        }
    }

    fn usizes_or(&self, k: &str, default: &[usize]) -> Result<Vec<usize>> {
        match self.map.get(k) {
            None | Some(Value::Null) => Ok(default.to_vec()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64().map(|x| x as usize).ok_or_else(|| {
                        QwenError::invalid(
                            self.key(k),
                            format!("{v} is not a non-negative integer"),
                        )
                    })
                })
                .collect(),
            Some(v) => Err(QwenError::invalid(
                self.key(k),
                format!("{v} is not a list"),
            )),
        }
    }
}

impl QwenConfig {
    /// Reads `config.json` in `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| QwenError::Host(sdrpn_llava::LlavaError::io(&path, e)))?;
        Self::from_hf_json(&text).map_err(|e| match e {
            QwenError::Invalid { name, reason } => {
                QwenError::json(&path, format!("{name}: {reason}"))
            }
            other => other,
        })
    }

    /// Parses the text of a Qwen2.5-VL `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let raw: Value = serde_json::from_str(text)
            .map_err(|e| QwenError::invalid("config.json", e.to_string()))?;
        let top = raw
            .as_object()
            .ok_or_else(|| QwenError::invalid("config.json", "not a JSON object"))?;
        let top = Section { name: "", map: top };
        let model_type = top.str_or("model_type", "qwen2_5_vl")?;
        if model_type != "qwen2_5_vl" {
            return Err(QwenError::invalid(
                "model_type",
                format!("{model_type:?} is not supported (expected \"qwen2_5_vl\")"),
            ));
        }
        // HF: a `text_config` object holds every text key; without one the
        // text keys sit at the top level (the released checkpoints' layout).
        let text = match top.map.get("text_config") {
            Some(Value::Object(map)) => Section {
                name: "text_config",
                map,
            },
            None | Some(Value::Null) => Section {
                name: "",
                map: top.map,
            },
            Some(other) => {
                return Err(QwenError::invalid(
                    "text_config",
                    format!("{other} is not an object"),
                ))
            }
        };
        let empty = Map::new();
        let vision = match top.map.get("vision_config") {
            Some(Value::Object(map)) => Section {
                name: "vision_config",
                map,
            },
            None | Some(Value::Null) => Section {
                name: "vision_config",
                map: &empty,
            },
            Some(other) => {
                return Err(QwenError::invalid(
                    "vision_config",
                    format!("{other} is not an object"),
                ))
            }
        };
        let text_cfg = Self::text_config(&text)?;
        let vision_cfg = Self::vision_config(&vision, text_cfg.hidden_size)?;
        let cfg = Self {
            vision: vision_cfg,
            text: text_cfg,
            image_token_id: top.usize_or("image_token_id", 151655)? as u32,
            vision_start_token_id: top.usize_or("vision_start_token_id", 151652)? as u32,
            vision_end_token_id: top.usize_or("vision_end_token_id", 151653)? as u32,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn text_config(t: &Section) -> Result<LlamaConfig> {
        // Qwen2_5_VLTextConfig's defaults.
        let hidden = t.usize_or("hidden_size", 8192)?;
        let heads = t.usize_or("num_attention_heads", 64)?;
        let act = t.str_or("hidden_act", "silu")?;
        if act != "silu" {
            return Err(QwenError::invalid(
                t.key("hidden_act"),
                format!("{act:?} is not supported (silu)"),
            ));
        }
        if t.bool_or("use_sliding_window", false)? {
            return Err(QwenError::invalid(
                t.key("use_sliding_window"),
                "sliding-window attention is not supported",
            ));
        }
        Ok(LlamaConfig {
            vocab_size: t.usize_or("vocab_size", 152064)?,
            hidden_size: hidden,
            intermediate_size: t.usize_or("intermediate_size", 29568)?,
            num_layers: t.usize_or("num_hidden_layers", 80)?,
            num_heads: heads,
            num_kv_heads: t.usize_or("num_key_value_heads", 8)?,
            head_dim: hidden / heads.max(1),
            rms_norm_eps: t.f64_or("rms_norm_eps", 1e-5)?,
            rope_theta: t.f64_or("rope_theta", 1_000_000.0)?,
            max_position_embeddings: t.usize_or("max_position_embeddings", 32768)?,
            tie_word_embeddings: t.bool_or("tie_word_embeddings", false)?,
            attention_bias: true,
            mrope_section: Self::mrope_section(t)?,
        })
    }

    /// M-RoPE is recognised by `rope_scaling.mrope_section`, whatever the
    /// type says (`"mrope"` in the released files, `"default"` once
    /// transformers 4.57 has rewritten it); scaled RoPE types are refused.
    fn mrope_section(t: &Section) -> Result<Option<Vec<usize>>> {
        let scaling = match t.map.get("rope_scaling") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(map)) => Section {
                name: "rope_scaling",
                map,
            },
            Some(other) => {
                return Err(QwenError::invalid(
                    t.key("rope_scaling"),
                    format!("{other} is not an object"),
                ))
            }
        };
        for key in ["type", "rope_type"] {
            let kind = scaling.str_or(key, "default")?;
            if !matches!(kind, "default" | "mrope") {
                return Err(QwenError::invalid(
                    t.key(&format!("rope_scaling.{key}")),
                    format!("{kind:?} RoPE scaling is not supported (default or mrope)"),
                ));
            }
        }
        match scaling.map.get("mrope_section") {
            None | Some(Value::Null) => Ok(None),
            Some(_) => Ok(Some(scaling.usizes_or("mrope_section", &[])?)),
        }
    }

    fn vision_config(v: &Section, text_hidden: usize) -> Result<QwenVisionConfig> {
        let act = v.str_or("hidden_act", "silu")?;
        if act != "silu" {
            return Err(QwenError::invalid(
                v.key("hidden_act"),
                format!("{act:?} is not supported (silu)"),
            ));
        }
        let channels = v.usize_or("in_channels", v.usize_or("in_chans", 3)?)?;
        if channels != 3 {
            return Err(QwenError::invalid(
                v.key("in_channels"),
                format!("{channels} channels; only RGB (3) is supported"),
            ));
        }
        // Qwen2_5_VLVisionConfig's defaults.
        Ok(QwenVisionConfig {
            depth: v.usize_or("depth", 32)?,
            hidden_size: v.usize_or("hidden_size", 3584)?,
            intermediate_size: v.usize_or("intermediate_size", 3420)?,
            num_heads: v.usize_or("num_heads", 16)?,
            patch_size: v.usize_or("patch_size", 14)?,
            spatial_merge_size: v.usize_or("spatial_merge_size", 2)?,
            temporal_patch_size: v.usize_or("temporal_patch_size", 2)?,
            window_size: v.usize_or("window_size", 112)?,
            fullatt_block_indexes: v.usizes_or("fullatt_block_indexes", &[7, 15, 23, 31])?,
            out_hidden_size: v.usize_or("out_hidden_size", text_hidden)?,
        })
    }

    /// Checks the sizes fit together.
    pub fn validate(&self) -> Result<()> {
        let (v, t) = (&self.vision, &self.text);
        let positive = [
            ("vision_config.depth", v.depth),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.num_heads", v.num_heads),
            ("vision_config.patch_size", v.patch_size),
            ("vision_config.spatial_merge_size", v.spatial_merge_size),
            ("vision_config.temporal_patch_size", v.temporal_patch_size),
            ("hidden_size", t.hidden_size),
            ("num_hidden_layers", t.num_layers),
            ("num_attention_heads", t.num_heads),
            ("num_key_value_heads", t.num_kv_heads),
            ("vocab_size", t.vocab_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, x)| *x == 0) {
            return Err(QwenError::invalid(*name, "must be positive"));
        }
        if v.hidden_size % v.num_heads != 0 || (v.hidden_size / v.num_heads) % 4 != 0 {
            return Err(QwenError::invalid(
                "vision_config",
                format!(
                    "hidden_size {} over {} heads must give a head width divisible by 4 (2-D rotary)",
                    v.hidden_size, v.num_heads
                ),
            ));
        }
        if v.window_size % v.factor() != 0 || v.window_size == 0 {
            return Err(QwenError::invalid(
                "vision_config.window_size",
                format!(
                    "{} must be a positive multiple of patch_size * spatial_merge_size = {}",
                    v.window_size,
                    v.factor()
                ),
            ));
        }
        if let Some(&b) = v.fullatt_block_indexes.iter().find(|&&b| b >= v.depth) {
            return Err(QwenError::invalid(
                "vision_config.fullatt_block_indexes",
                format!("block {b} is past the {} blocks", v.depth),
            ));
        }
        if v.out_hidden_size != t.hidden_size {
            return Err(QwenError::invalid(
                "vision_config.out_hidden_size",
                format!(
                    "{} differs from the language model's width {}",
                    v.out_hidden_size, t.hidden_size
                ),
            ));
        }
        if t.hidden_size % t.num_heads != 0 || t.num_heads % t.num_kv_heads != 0 {
            return Err(QwenError::invalid(
                "num_attention_heads",
                format!(
                    "hidden_size {} / {} heads / {} key-value heads do not divide evenly",
                    t.hidden_size, t.num_heads, t.num_kv_heads
                ),
            ));
        }
        match &t.mrope_section {
            None => Err(QwenError::invalid(
                "rope_scaling.mrope_section",
                "missing: Qwen2.5-VL needs its multimodal RoPE sections",
            )),
            Some(s) if s.len() != 3 || s.iter().sum::<usize>() != t.head_dim / 2 => {
                Err(QwenError::invalid(
                    "rope_scaling.mrope_section",
                    format!(
                        "{s:?} must be three sections summing to head_dim / 2 = {}",
                        t.head_dim / 2
                    ),
                ))
            }
            Some(_) => Ok(()),
        }
    }

    /// Merged tokens of an image whose patch grid is `rows x cols`.
    pub fn image_tokens(&self, rows: usize, cols: usize) -> usize {
        let m = self.vision.spatial_merge_size;
        (rows / m) * (cols / m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAT: &str = r#"{
      "architectures": ["Qwen2_5_VLForConditionalGeneration"],
      "model_type": "qwen2_5_vl", "hidden_size": 3584, "intermediate_size": 18944,
      "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
      "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "max_position_embeddings": 128000,
      "tie_word_embeddings": false, "vocab_size": 152064, "use_sliding_window": false,
      "vision_start_token_id": 151652, "vision_end_token_id": 151653, "image_token_id": 151655,
      "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
        "intermediate_size": 3420, "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584,
        "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
      "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}
    }"#;

    #[test]
    fn the_released_7b_flat_layout_parses() {
        let c = QwenConfig::from_hf_json(FLAT).unwrap();
        assert_eq!(c.text.num_layers, 28);
        assert_eq!(c.text.num_kv_heads, 4);
        assert_eq!(c.text.head_dim, 128);
        assert_eq!(c.text.mrope_section, Some(vec![16, 24, 24]));
        assert!(c.text.attention_bias);
        assert_eq!(c.vision.hidden_size, 1280);
        assert_eq!(c.vision.merged_window(), 4);
        assert_eq!(c.image_token_id, 151655);
    }

    #[test]
    fn the_nested_layout_and_default_rope_type_parse_the_same() {
        let flat: Value = serde_json::from_str(FLAT).unwrap();
        let mut nested = serde_json::json!({
            "model_type": "qwen2_5_vl",
            "vision_config": flat["vision_config"].clone(),
            "image_token_id": 151655, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
        });
        let mut text = flat.as_object().unwrap().clone();
        text.remove("vision_config");
        text.insert(
            "rope_scaling".into(),
            serde_json::json!({"type": "default", "rope_type": "default", "mrope_section": [16, 24, 24]}),
        );
        nested["text_config"] = Value::Object(text);
        // Top-level text keys are ignored when text_config exists (HF's rule).
        nested["num_hidden_layers"] = 3.into();
        let a = QwenConfig::from_hf_json(FLAT).unwrap();
        let b = QwenConfig::from_hf_json(&nested.to_string()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn unsupported_settings_are_named() {
        let bad = FLAT.replace("\"mrope\"", "\"yarn\"");
        let e = QwenConfig::from_hf_json(&bad).unwrap_err().to_string();
        assert!(e.contains("rope_scaling.type") && e.contains("yarn"), "{e}");
        let bad = FLAT.replace("\"qwen2_5_vl\"", "\"llava\"");
        let e = QwenConfig::from_hf_json(&bad).unwrap_err().to_string();
        assert!(e.contains("model_type"), "{e}");
        let bad = FLAT.replace("[16, 24, 24]", "[16, 24]");
        let e = QwenConfig::from_hf_json(&bad).unwrap_err().to_string();
        assert!(e.contains("mrope_section"), "{e}");
        let bad = FLAT.replace("\"num_key_value_heads\": 4", "\"num_key_value_heads\": 5");
        assert!(QwenConfig::from_hf_json(&bad).is_err());
        let bad = FLAT.replace("\"window_size\": 112", "\"window_size\": 100");
        let e = QwenConfig::from_hf_json(&bad).unwrap_err().to_string();
        assert!(e.contains("window_size"), "{e}");
    }
}
