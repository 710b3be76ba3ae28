//! Qwen2.5-VL against HF transformers on the committed tiny fixtures
//! (`scripts/make_qwen_fixtures.py`), in one test binary (each binary
//! links all of Burn: fewer binaries keep CI short).

mod loading;
mod parity;
mod pipeline;
mod support;
mod two_pass;
mod wgpu;
