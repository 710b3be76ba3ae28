//! The whole LLaVA forward pass on WGPU (Mesa lavapipe on a CPU-only
//! machine, any Vulkan/Metal/DX12 GPU elsewhere) against the HF reference,
//! in f32 to the CPU bounds. (f16 is in `wgpu_f16.rs`: a device's float
//! dtype is fixed per process.) Skipped with a message when no adapter
//! exists, unless `SDRPN_REQUIRE_WGPU=1` (CI).

mod common;

use common::*;
use sdrpn_core::backend::Precision;
use sdrpn_llava::inspect::HostValues;

#[test]
fn llava_on_wgpu_matches_hf_in_f32() {
    let Some(out) = inspect_case_a_on_wgpu(Precision::F32) else {
        return;
    };
    let reference = Reference::open("hf_crop_raw");
    let ids = |name: &str| match out.get(name) {
        Some((_, HostValues::I64(v))) => v.iter().map(|&x| x as u32).collect::<Vec<_>>(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(ids("gen_ids"), reference.ids("gen_ids"));
    for name in ["image_features_projected", "lm_hidden_states", "logits"] {
        let e = relative_error(floats(&out, name), &reference.get(name).1);
        assert!(e <= 1e-4, "{name}: relative error {e:e} on WGPU");
    }
    let attn = max_abs_error(
        floats(&out, "lm_attentions"),
        &reference.get("lm_attentions").1,
    );
    assert!(attn <= 1e-5, "attention max abs error {attn:e} on WGPU");
}
