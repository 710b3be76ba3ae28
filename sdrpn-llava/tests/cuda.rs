//! The whole LLaVA forward pass on CUDA GPU 0 against the HF reference, in
//! f32 to the CPU bounds. Built only with `--features cuda`; skipped with a
//! message when no driver or GPU is usable, unless `SDRPN_REQUIRE_CUDA=1`.
//! (f16 and bf16 are in `cuda_f16.rs` and `cuda_bf16.rs`: a device's float
//! dtype is fixed per process.)
#![cfg(feature = "cuda")]

mod common;

use sdrpn_core::backend::DeviceSpec;

#[test]
fn llava_on_cuda_matches_hf_in_f32() {
    common::check_f32_parity_on(DeviceSpec::Cuda(0));
}
