//! LLaVA on CUDA GPU 0 computing in f16, against the HF f32 reference
//! (bounds in `common::check_half_precision_on`). Built only with
//! `--features cuda`; skipped with a message when no GPU is usable, unless
//! `SDRPN_REQUIRE_CUDA=1`. Its own test binary because a device's float
//! dtype is fixed once per process.
#![cfg(feature = "cuda")]

mod common;

use sdrpn_core::backend::{DeviceSpec, Precision};

#[test]
fn llava_on_cuda_in_f16_stays_close_to_hf() {
    common::check_half_precision_on(DeviceSpec::Cuda(0), Precision::F16);
}
