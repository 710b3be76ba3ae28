//! LLaVA on WGPU computing in f16, against the HF f32 reference (bounds in
//! `common::check_half_precision_on`; measured on lavapipe: logits 2.1e-3
//! relative, attention 4.4e-3 max abs). Its own test binary because a
//! device's float dtype is fixed once per process.

mod common;

use sdrpn_core::backend::{DeviceSpec, Precision};

#[test]
fn llava_on_wgpu_in_f16_stays_close_to_hf() {
    common::check_half_precision_on(DeviceSpec::Wgpu(None), Precision::F16);
}
