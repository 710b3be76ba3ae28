//! LLaVA on WGPU computing in f16, against the HF f32 reference. Half
//! precision has a relative step of about 1e-3 and errors add up over the
//! layers: measured on lavapipe, logits are off by 2.1e-3 (relative) and
//! attention by 4.4e-3 (absolute), so the bound is 5e-3. Its own test binary
//! because a device's float dtype is fixed once per process.

mod common;

use common::*;
use sdrpn_core::backend::Precision;

#[test]
fn llava_on_wgpu_in_f16_stays_close_to_hf() {
    let Some(out) = inspect_case_a_on_wgpu(Precision::F16) else {
        return;
    };
    let reference = Reference::open("hf_crop_raw");
    let e = relative_error(floats(&out, "logits"), &reference.get("logits").1);
    let attn = max_abs_error(
        floats(&out, "lm_attentions"),
        &reference.get("lm_attentions").1,
    );
    eprintln!("f16 on WGPU: logits relative error {e:e}, attention max abs error {attn:e}");
    assert!(e <= 5e-3, "logits relative error {e:e} in f16");
    assert!(attn <= 5e-3, "attention max abs error {attn:e} in f16");
}
