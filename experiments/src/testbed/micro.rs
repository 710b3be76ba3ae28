//! The micro-LLaVA the testbed pretrains: LLaVA-1.5's architecture (CLIP
//! ViT, 2-layer GELU projector, LLaMA decoder) at a few million parameters.

use super::vocab;
use sdrpn_llava::config::{Activation, ClipVisionConfig, LlamaConfig, LlavaConfig};

/// Model input side in pixels (12 x 12 patches of 14).
pub const IMAGE_SIDE: usize = 168;
/// Patch side.
pub const PATCH: usize = 14;

/// The testbed model's configuration.
pub fn micro_llava() -> LlavaConfig {
    let hidden = 128;
    let heads = 4;
    LlavaConfig {
        vision: ClipVisionConfig {
            hidden_size: 128,
            intermediate_size: 512,
            num_layers: 5,
            num_heads: 4,
            image_size: IMAGE_SIDE,
            patch_size: PATCH,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
        },
        text: LlamaConfig {
            vocab_size: vocab::vocab_size(),
            hidden_size: hidden,
            intermediate_size: 344,
            num_layers: 6,
            num_heads: heads,
            num_kv_heads: heads,
            head_dim: hidden / heads,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 512,
            tie_word_embeddings: false,
            attention_bias: false,
            mrope_section: None,
        },
        projector_act: Activation::Gelu,
        projector_bias: true,
        vision_feature_layer: -2,
        drop_cls: true,
        image_token_index: vocab::IMAGE_TOKEN,
        pad_token_id: Some(vocab::PAD_TOKEN),
    }
}
