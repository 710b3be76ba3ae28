//! # sdrpn-qwen: Qwen2.5-VL as an SD-RPN host, in Burn
//!
//! The window-attention ViT with 2-D rotary positions and its 2x2 patch
//! merger, the Qwen2 decoder (grouped-query attention with q/k/v biases,
//! multimodal RoPE), HF checkpoint loading (both key layouts, f32/f16/bf16,
//! sharded), `smart_resize` preprocessing bit-exact with HF's slow image
//! processor, the checkpoint's chat template, and greedy generation with
//! attention taps. The decoder, checkpoint reader, tokenizer reader and
//! Pillow resampler are `sdrpn-llava`'s (Qwen2 is LLaMA with biases and
//! M-RoPE). Numerically checked against HF transformers (see `tests/`).

pub mod chat;
pub mod config;
pub mod error;
pub mod host;
pub mod inspect;
pub mod model;
pub mod preprocess;
pub mod rope_index;
pub mod session;
pub mod vision;
pub mod window;

pub use config::QwenConfig;
pub use error::{QwenError, Result};
pub use model::QwenVl;
pub use session::{QwenPrepared, QwenSession};
