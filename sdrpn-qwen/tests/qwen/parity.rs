//! Parity with HF transformers on the committed tiny Qwen2.5-VL fixtures
//! (`scripts/make_qwen_fixtures.py`) on the CPU: ids, prompt text, resized
//! image, patches, grid, M-RoPE positions, merged image features, hidden
//! states, attention, logits, greedy tokens and the attention rows of every
//! fed-back token.

use crate::support::check_case;

#[test]
fn wide_image_resized_by_smart_resize_matches_hf() {
    check_case("a_wide");
}

#[test]
fn big_image_scaled_down_across_several_windows_matches_hf() {
    check_case("b_big");
}

#[test]
fn tall_image_on_the_tied_sharded_bf16_model_matches_hf() {
    check_case("c_tall_tied");
}
