//! What the two-pass tests of every host share (included with `#[path]` by
//! `sdrpn-train/tests/two_pass.rs` and `sdrpn-qwen/tests/qwen/two_pass.rs`):
//! the options, hand-made RoI maps, and the same-answer check.

use sdrpn_core::host::AnswerOptions;
use sdrpn_core::roi::RoiConfig;
use sdrpn_train::two_pass::{TwoPassOptions, TwoPassOutput};

/// Branch layer 2, default RoI rule, six new tokens, with or without
/// reusing pass 1's prefix cache.
pub fn options(reuse: bool) -> TwoPassOptions {
    TwoPassOptions {
        branch: 2,
        roi: RoiConfig::default(),
        answer: AnswerOptions {
            max_new_tokens: 6,
            stop_strings: Vec::new(),
        },
        reuse_prefix_cache: reuse,
    }
}

/// A `rows x cols` map (row-major) with 1.0 on the `hot` cells.
pub fn hot_map(rows: usize, cols: usize, hot: &[(usize, usize)]) -> Vec<f32> {
    let mut m = vec![0.0f32; rows * cols];
    for &(r, c) in hot {
        m[r * cols + c] = 1.0;
    }
    m
}

/// Equal tokens and first-token logits within 1e-4.
pub fn assert_same_answer(a: &TwoPassOutput, b: &TwoPassOutput, what: &str) {
    assert_eq!(a.tokens, b.tokens, "{what}: tokens");
    let worst = a
        .first_logits
        .iter()
        .zip(&b.first_logits)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    eprintln!("{what}: max logit difference {worst:e}");
    assert!(
        worst <= 1e-4,
        "{what}: first-token logits differ by {worst:e}"
    );
}
