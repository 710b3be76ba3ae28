//! The whole Qwen2.5-VL forward pass on WGPU (Mesa lavapipe on a CPU-only
//! machine) against the HF reference in f32, to the CPU bounds. Skipped
//! with a message when no adapter exists, unless `SDRPN_REQUIRE_WGPU=1` (CI).

use crate::support;
use sdrpn_core::backend::DeviceSpec;

#[test]
fn qwen_on_wgpu_matches_hf_in_f32() {
    for case in ["a_wide", "c_tall_tied"] {
        support::check_case_on(case, DeviceSpec::Wgpu(None));
    }
}
