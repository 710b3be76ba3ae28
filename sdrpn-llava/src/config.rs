//! Model configuration: read from a llava-hf `config.json` (sizes from the
//! file, HF's class defaults for the keys a file leaves out), or presets.

use crate::error::{LlavaError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Activation of the CLIP MLP / the projector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (CLIP).
    QuickGelu,
    /// Exact erf GELU.
    Gelu,
}

impl Activation {
    fn parse(name: &str, what: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            other => Err(LlavaError::invalid(
                what,
                format!("activation {other:?} is not supported (quick_gelu, gelu)"),
            )),
        }
    }
}

/// CLIP ViT vision tower.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    /// Width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Input side in pixels (square).
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// MLP activation.
    pub hidden_act: Activation,
}

impl ClipVisionConfig {
    /// Patches per side.
    pub fn grid_side(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Patches per image.
    pub fn num_patches(&self) -> usize {
        self.grid_side() * self.grid_side()
    }
}

/// LLaMA (Vicuna) language model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width D.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers L.
    pub num_layers: usize,
    /// Attention heads H.
    pub num_heads: usize,
    /// Key/value heads (H unless grouped-query attention).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Longest supported sequence.
    pub max_position_embeddings: usize,
    /// Whether lm_head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether the q/k/v projections have biases (Qwen2: yes; LLaMA: no).
    #[serde(default)]
    pub attention_bias: bool,
    /// Qwen2.5-VL's multimodal RoPE sections (frequencies per position
    /// axis, summing to `head_dim / 2`); `None`: 1-D RoPE.
    #[serde(default)]
    pub mrope_section: Option<Vec<usize>>,
}

/// The whole LLaVA-1.5 model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlavaConfig {
    /// Vision tower.
    pub vision: ClipVisionConfig,
    /// Language model.
    pub text: LlamaConfig,
    /// Projector activation (exact GELU for LLaVA-1.5).
    pub projector_act: Activation,
    /// Whether the projector's linears have biases.
    pub projector_bias: bool,
    /// Which vision hidden state feeds the projector (HF numbering, -2).
    pub vision_feature_layer: i64,
    /// Whether the CLS token is dropped (`default`) or kept (`full`).
    pub drop_cls: bool,
    /// Token id of `<image>`.
    pub image_token_index: u32,
    /// Padding token id, if any.
    pub pad_token_id: Option<u32>,
}

impl LlavaConfig {
    /// LLaVA-1.5-7B (llava-hf/llava-1.5-7b-hf).
    pub fn llava_v1_5_7b() -> Self {
        Self::llava_v1_5(4096, 11008, 32, 32)
    }

    /// LLaVA-1.5-13B (llava-hf/llava-1.5-13b-hf).
    pub fn llava_v1_5_13b() -> Self {
        Self::llava_v1_5(5120, 13824, 40, 40)
    }

    fn llava_v1_5(hidden: usize, mlp: usize, layers: usize, heads: usize) -> Self {
        Self {
            vision: ClipVisionConfig {
                hidden_size: 1024,
                intermediate_size: 4096,
                num_layers: 24,
                num_heads: 16,
                image_size: 336,
                patch_size: 14,
                layer_norm_eps: 1e-5,
                hidden_act: Activation::QuickGelu,
            },
            text: LlamaConfig {
                vocab_size: 32064,
                hidden_size: hidden,
                intermediate_size: mlp,
                num_layers: layers,
                num_heads: heads,
                num_kv_heads: heads,
                head_dim: hidden / heads,
                rms_norm_eps: 1e-5,
                rope_theta: 10000.0,
                max_position_embeddings: 4096,
                tie_word_embeddings: false,
                attention_bias: false,
                mrope_section: None,
            },
            projector_act: Activation::Gelu,
            projector_bias: true,
            vision_feature_layer: -2,
            drop_cls: true,
            image_token_index: 32000,
            pad_token_id: Some(32001),
        }
    }

    /// Reads `config.json` of a llava-hf checkpoint folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| LlavaError::io(&path, e))?;
        Self::from_hf_json(&text).map_err(|e| match e {
            LlavaError::Invalid { name, reason } => LlavaError::Json {
                path: path.clone(),
                reason: format!("{name}: {reason}"),
            },
            other => other,
        })
    }

    /// Parses the text of a llava-hf `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let raw: HfLlava = serde_json::from_str(text)
            .map_err(|e| LlavaError::invalid("config.json", e.to_string()))?;
        if let Some(mt) = raw.model_type.as_deref() {
            if mt != "llava" {
                return Err(LlavaError::invalid(
                    "model_type",
                    format!("{mt:?} is not supported (expected \"llava\")"),
                ));
            }
        }
        let t = raw.text_config.unwrap_or_default();
        if let Some(mt) = t.model_type.as_deref() {
            if mt != "llama" {
                return Err(LlavaError::invalid(
                    "text_config.model_type",
                    format!("{mt:?} is not supported (expected \"llama\")"),
                ));
            }
        }
        // HF LlamaConfig defaults for keys the file leaves out.
        let hidden = t.hidden_size.unwrap_or(4096);
        let heads = t.num_attention_heads.unwrap_or(32);
        let text = LlamaConfig {
            vocab_size: t.vocab_size.or(raw.vocab_size).unwrap_or(32000),
            hidden_size: hidden,
            intermediate_size: t.intermediate_size.unwrap_or(11008),
            num_layers: t.num_hidden_layers.unwrap_or(32),
            num_heads: heads,
            num_kv_heads: t.num_key_value_heads.unwrap_or(heads),
            head_dim: t.head_dim.unwrap_or(hidden / heads.max(1)),
            rms_norm_eps: t.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: t.rope_theta.unwrap_or(10000.0),
            max_position_embeddings: t.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: t.tie_word_embeddings.unwrap_or(false),
            attention_bias: false,
            mrope_section: None,
        };
        if t.hidden_act.as_deref().is_some_and(|a| a != "silu") {
            return Err(LlavaError::invalid(
                "text_config.hidden_act",
                "only silu is supported",
            ));
        }
        if t.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(LlavaError::invalid(
                "text_config.rope_scaling",
                "RoPE scaling is not supported",
            ));
        }
        if t.attention_bias == Some(true) || t.mlp_bias == Some(true) {
            return Err(LlavaError::invalid(
                "text_config",
                "attention/MLP biases are not supported",
            ));
        }
        // LlavaConfig's vision defaults are CLIP ViT-L/14-336's.
        let v = raw.vision_config.unwrap_or_default();
        let vision = ClipVisionConfig {
            hidden_size: v.hidden_size.unwrap_or(1024),
            intermediate_size: v.intermediate_size.unwrap_or(4096),
            num_layers: v.num_hidden_layers.unwrap_or(24),
            num_heads: v.num_attention_heads.unwrap_or(16),
            image_size: v.image_size.unwrap_or(336),
            patch_size: v.patch_size.unwrap_or(14),
            layer_norm_eps: v.layer_norm_eps.unwrap_or(1e-5),
            hidden_act: Activation::parse(
                v.hidden_act.as_deref().unwrap_or("quick_gelu"),
                "vision_config.hidden_act",
            )?,
        };
        let feature_layer = match raw.vision_feature_layer {
            None => -2,
            Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or(-2),
            Some(other) => {
                return Err(LlavaError::invalid(
                    "vision_feature_layer",
                    format!("{other} is not supported (one layer index expected)"),
                ))
            }
        };
        let drop_cls = match raw
            .vision_feature_select_strategy
            .as_deref()
            .unwrap_or("default")
        {
            "default" => true,
            "full" => false,
            other => {
                return Err(LlavaError::invalid(
                    "vision_feature_select_strategy",
                    format!("{other:?}"),
                ))
            }
        };
        let cfg = Self {
            vision,
            text,
            projector_act: Activation::parse(
                raw.projector_hidden_act.as_deref().unwrap_or("gelu"),
                "projector_hidden_act",
            )?,
            projector_bias: raw.multimodal_projector_bias.unwrap_or(true),
            vision_feature_layer: feature_layer,
            drop_cls,
            image_token_index: raw
                .image_token_index
                .or(raw.image_token_id)
                .unwrap_or(32000),
            pad_token_id: raw.pad_token_id.or(t.pad_token_id),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configuration as a llava-hf `config.json` (read back by
    /// [`LlavaConfig::from_hf_json`] to the same value).
    pub fn to_hf_json(&self) -> String {
        let act = |a: Activation| match a {
            Activation::QuickGelu => "quick_gelu",
            Activation::Gelu => "gelu",
        };
        let (v, t) = (&self.vision, &self.text);
        let json = serde_json::json!({
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "image_token_index": self.image_token_index,
            "pad_token_id": self.pad_token_id,
            "projector_hidden_act": act(self.projector_act),
            "multimodal_projector_bias": self.projector_bias,
            "vision_feature_layer": self.vision_feature_layer,
            "vision_feature_select_strategy": if self.drop_cls { "default" } else { "full" },
            "tie_word_embeddings": t.tie_word_embeddings,
            "text_config": {
                "model_type": "llama",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_layers,
                "num_attention_heads": t.num_heads,
                "num_key_value_heads": t.num_kv_heads,
                "head_dim": t.head_dim,
                "rms_norm_eps": t.rms_norm_eps,
                "rope_theta": t.rope_theta,
                "max_position_embeddings": t.max_position_embeddings,
                "tie_word_embeddings": t.tie_word_embeddings,
                "hidden_act": "silu",
            },
            "vision_config": {
                "model_type": "clip_vision_model",
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_layers,
                "num_attention_heads": v.num_heads,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "layer_norm_eps": v.layer_norm_eps,
                "hidden_act": act(v.hidden_act),
            },
        });
        serde_json::to_string_pretty(&json).expect("a JSON value serialises")
    }

    /// Checks that the sizes fit together.
    pub fn validate(&self) -> Result<()> {
        let (v, t) = (&self.vision, &self.text);
        let check = |ok: bool, name: &str, why: String| {
            if ok {
                Ok(())
            } else {
                Err(LlavaError::invalid(name, why))
            }
        };
        check(
            v.patch_size > 0 && v.image_size % v.patch_size == 0,
            "vision image_size",
            format!(
                "{} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ),
        )?;
        check(
            v.num_heads > 0 && v.hidden_size % v.num_heads == 0,
            "vision hidden_size",
            format!(
                "{} is not divisible by {} heads",
                v.hidden_size, v.num_heads
            ),
        )?;
        check(
            t.num_heads > 0 && t.num_kv_heads > 0 && t.num_heads % t.num_kv_heads == 0,
            "text heads",
            format!(
                "{} heads are not a multiple of {} key/value heads",
                t.num_heads, t.num_kv_heads
            ),
        )?;
        check(
            t.head_dim % 2 == 0 && t.head_dim > 0,
            "text head_dim",
            format!("{} must be even for RoPE", t.head_dim),
        )?;
        check(
            (self.image_token_index as usize) < t.vocab_size,
            "image_token_index",
            format!(
                "{} is outside the vocabulary of {}",
                self.image_token_index, t.vocab_size
            ),
        )?;
        let states = v.num_layers as i64 + 1;
        check(
            (-states..states).contains(&self.vision_feature_layer),
            "vision_feature_layer",
            format!(
                "{} is outside the {} hidden states of the tower",
                self.vision_feature_layer, states
            ),
        )
    }

    /// The vision hidden state index (0 = embeddings after pre-LN, i = after
    /// encoder layer i) that feeds the projector.
    pub fn feature_state(&self) -> usize {
        let states = self.vision.num_layers as i64 + 1;
        self.vision_feature_layer.rem_euclid(states) as usize
    }

    /// Visual tokens per image.
    pub fn image_tokens(&self) -> usize {
        self.vision.num_patches() + usize::from(!self.drop_cls)
    }
}

#[derive(Debug, Default, Deserialize)]
struct HfLlava {
    model_type: Option<String>,
    text_config: Option<HfText>,
    vision_config: Option<HfVision>,
    image_token_index: Option<u32>,
    image_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    vocab_size: Option<usize>,
    projector_hidden_act: Option<String>,
    multimodal_projector_bias: Option<bool>,
    vision_feature_layer: Option<serde_json::Value>,
    vision_feature_select_strategy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct HfText {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    pad_token_id: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
struct HfVision {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    image_size: Option<usize>,
    patch_size: Option<usize>,
    layer_norm_eps: Option<f64>,
    hidden_act: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config.json of llava-hf/llava-1.5-7b-hf as published (HF leaves
    /// defaults out).
    const LLAVA_7B_HF: &str = r#"{
      "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100,
      "image_token_index": 32000, "model_type": "llava", "pad_token_id": 32001,
      "projector_hidden_act": "gelu",
      "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
        "torch_dtype": "float16", "vocab_size": 32064},
      "tie_word_embeddings": false, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
      "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
        "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
        "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
      "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064
    }"#;

    #[test]
    fn the_published_7b_config_equals_the_preset() {
        let cfg = LlavaConfig::from_hf_json(LLAVA_7B_HF).unwrap();
        assert_eq!(cfg, LlavaConfig::llava_v1_5_7b());
        assert_eq!(cfg.feature_state(), 23);
        assert_eq!(cfg.image_tokens(), 576);
    }

    #[test]
    fn hf_json_round_trips() {
        for cfg in [LlavaConfig::llava_v1_5_7b(), LlavaConfig::llava_v1_5_13b()] {
            assert_eq!(LlavaConfig::from_hf_json(&cfg.to_hf_json()).unwrap(), cfg);
        }
    }

    #[test]
    fn unsupported_settings_are_named() {
        let e = LlavaConfig::from_hf_json(
            r#"{"model_type": "llava", "text_config": {"model_type": "mistral"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("mistral"), "{e}");
        let e = LlavaConfig::from_hf_json(
            r#"{"vision_config": {"image_size": 100, "patch_size": 14}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("patch_size"), "{e}");
        assert!(LlavaConfig::from_hf_json("{").is_err());
    }
}
