//! The whole LLaVA forward pass on WGPU (Mesa lavapipe on a CPU-only
//! machine, any Vulkan/Metal/DX12 GPU elsewhere) against the HF reference,
//! in f32 to the CPU bounds. (f16 is in `wgpu_f16.rs`: a device's float
//! dtype is fixed per process.) Skipped with a message when no adapter
//! exists, unless `SDRPN_REQUIRE_WGPU=1` (CI).

mod common;

use sdrpn_core::backend::DeviceSpec;

#[test]
fn llava_on_wgpu_matches_hf_in_f32() {
    common::check_f32_parity_on(DeviceSpec::Wgpu(None));
}
