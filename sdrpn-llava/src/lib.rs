//! # sdrpn-llava: the LLaVA-1.5 host model in Burn
//!
//! CLIP ViT-L/14-336 + MLP projector + Vicuna (LLaMA), loading real llava-hf
//! checkpoints (safetensors, f32/f16/bf16, sharded), tokenising with the
//! real tokenizer, preprocessing images like LLaVA (bit-exact Pillow
//! resampling), greedy generation with a KV cache, and explicit taps on
//! attention rows and hidden states. Numerically checked against HF
//! transformers (see `tests/`).

/// The key/value cache (in `sdrpn-core`, shared by every host).
pub mod cache {
    pub use sdrpn_core::cache::{KvCache, LayerKv};
}
pub mod clip;
pub mod config;
pub mod error;
pub mod export;
pub mod fingerprint;
pub mod generate;
pub mod host;
pub mod inspect;
pub mod llama;
pub mod model;
pub mod nn;
pub mod preprocess;
pub mod projector;
pub mod prompt;
pub mod resample;
pub mod session;
pub mod taps;
pub mod tokenizer;
pub mod weights;

pub use config::LlavaConfig;
pub use error::{LlavaError, Result};
pub use model::Llava;
