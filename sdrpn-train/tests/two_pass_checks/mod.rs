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

/// The largest absolute difference of two equally long slices.
pub fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// Images (fixture file stems) and questions of different lengths for the
/// batch tests, sample by sample.
pub const BATCH_QUESTIONS: [(&str, &str); 4] = [
    ("wide", "What is in the picture?"),
    (
        "tall",
        "Which colour is the large square near the top left corner of this picture?",
    ),
    ("big", "Count them."),
    (
        "wide",
        "Is there any text written anywhere in the image, and if so what does it say?",
    ),
];

/// Equal tokens and first-token logits within 1e-4.
pub fn assert_same_answer(a: &TwoPassOutput, b: &TwoPassOutput, what: &str) {
    assert_eq!(a.tokens, b.tokens, "{what}: tokens");
    let worst = max_difference(&a.first_logits, &b.first_logits);
    eprintln!("{what}: max logit difference {worst:e}");
    assert!(
        worst <= 1e-4,
        "{what}: first-token logits differ by {worst:e}"
    );
}

/// Answers of `questions` in one padded batch equal their batch-1
/// answers: the baseline, and SD-RPN with `rpn` at each threshold (the
/// same RoI map within 1e-5, mode, crop, RoI tokens and answer tokens;
/// batch 1 with and without prefix reuse). Returns the modes seen.
pub fn assert_batches_match<B, H>(
    host: &H,
    rpn: &sdrpn_train::two_pass::HostRpn<B, H>,
    questions: &[(&image::RgbImage, &str)],
    thresholds: &[f64],
) -> Vec<sdrpn_core::roi::RoiMode>
where
    B: burn::tensor::backend::Backend,
    H: sdrpn_core::host::RpnHost<B>,
{
    use sdrpn_train::two_pass::TwoPass;
    use sdrpn_train::two_pass_batch::{answer_baseline_batch, answer_batch_with_roi};
    let answer = options(true).answer;
    let batched = answer_baseline_batch(host, questions, &answer).unwrap();
    for (i, ((image, q), b)) in questions.iter().zip(&batched).enumerate() {
        let one = host.answer_baseline(image, q, &answer).unwrap();
        assert_same_answer(&one, b, &format!("baseline, sample {i}"));
        assert_eq!(one.answer, b.answer);
    }
    let mut modes = Vec::new();
    for &threshold in thresholds {
        let mut opts = options(true);
        opts.roi.threshold = threshold;
        let alone: Vec<Vec<_>> = questions
            .iter()
            .map(|(image, q)| {
                [true, false]
                    .map(|reuse| {
                        let mut o = opts.clone();
                        o.reuse_prefix_cache = reuse;
                        host.answer_with_roi(rpn, image, q, &o).unwrap()
                    })
                    .to_vec()
            })
            .collect();
        for batch_reuse in [true, false] {
            opts.reuse_prefix_cache = batch_reuse;
            let batched = answer_batch_with_roi(host, rpn, questions, &opts).unwrap();
            for (i, b) in batched.iter().enumerate() {
                for (one, reuse) in alone[i].iter().zip([true, false]) {
                    let what = format!(
                    "threshold {threshold}, sample {i}, batch-1 reuse {reuse}, batch reuse {batch_reuse}"
                );
                    assert_eq!(one.roi_map.len(), b.roi_map.len(), "{what}: map size");
                    let worst = max_difference(&one.roi_map, &b.roi_map);
                    assert!(worst <= 1e-5, "{what}: RoI maps differ by {worst:e}");
                    assert_eq!(
                        (one.mode, one.crop, one.roi_tokens, &one.kept),
                        (b.mode, b.crop, b.roi_tokens, &b.kept),
                        "{what}: RoI"
                    );
                    assert_same_answer(one, b, &what);
                }
                if batch_reuse {
                    modes.push(b.mode);
                }
            }
        }
    }
    modes
}
