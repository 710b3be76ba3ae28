//! Label -> train -> two-pass inference on the tiny Qwen2.5-VL through the
//! same generic code as LLaVA: labels on a fixed square grid (as the
//! reference labels and trains), training with a falling loss, and the
//! trained RPN answering at each image's own resolution.

use crate::support::{fixtures, B};
use sdrpn_core::Grid;
use sdrpn_llava::preprocess::load_rgb;
use sdrpn_qwen::QwenSession;
use sdrpn_train::label::{run_labelling, LabelJob};
use sdrpn_train::label_store::read_labels;
use sdrpn_train::questions::{read_questions, ShardSpec};
use sdrpn_train::render::SilentRenderer;
use sdrpn_train::trainer::{load_rpn, train_rpn, TrainRequest};
use sdrpn_train::two_pass::{TwoPass, TwoPassOptions};
use sdrpn_train::SdrpnConfig;
use std::sync::Arc;

fn session() -> QwenSession<B> {
    QwenSession::<B>::load(&fixtures().join("tiny-qwen"), &Default::default()).unwrap()
}

#[test]
fn qwen_labels_trains_and_answers_through_the_generic_pipeline() {
    let dir = std::env::temp_dir().join(format!("sdrpn-qwen-pipeline-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let images = ["wide.png", "tall.png", "big.png"];
    let lines: String = (0..6)
        .map(|i| {
            format!(
                "{{\"question_id\": {i}, \"image\": \"{}\", \"text\": \"What is in the picture?\"}}\n",
                images[i % 3]
            )
        })
        .collect();
    std::fs::write(dir.join("questions.jsonl"), lines).unwrap();
    let (questions, _) = read_questions(&dir.join("questions.jsonl")).unwrap();
    let mut config = SdrpnConfig::tiny();
    config.train.epochs = 4;
    config.train.batch_size = 4;
    config.train.lr = 2e-3;
    config.train.warmup_ratio = 0.0;

    // Labels on a 168 px square: a 6x6 grid for every image.
    let square = Arc::new(session().with_square(168).unwrap());
    let job = LabelJob {
        questions,
        images: fixtures().join("images"),
        out: dir.join("labels"),
        shard: ShardSpec::default(),
        limit: None,
        shard_size: 4,
        force: false,
        batch: 4,
    };
    let progress = run_labelling(square.as_ref(), &config, &job, |_, _| {}).unwrap();
    assert_eq!((progress.labelled, progress.skipped), (6, 0));
    let (grid, mut records) = read_labels(&dir.join("labels")).unwrap();
    assert_eq!(grid, Grid::new(6, 6).unwrap());
    for r in &records {
        assert_eq!(r.grounding.len(), 36);
        assert!(r.fed_back >= 1);
        assert!(r.prompt.starts_with("<|im_start|>system\n"), "{}", r.prompt);
    }
    // Crafted maps (the random model's attention is diffuse): a hot block
    // whose place depends on the sample.
    for (i, r) in records.iter_mut().enumerate() {
        let (r0, c0) = (i % 3, (i * 2) % 4);
        let mut a = vec![0.001f32; 36];
        for (dr, dc) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            a[(r0 + dr) * 6 + c0 + dc] = 0.05;
        }
        r.grounding = a;
        r.sink = vec![0.0; 36];
    }
    let report = train_rpn(
        TrainRequest {
            session: square.clone(),
            records,
            images: &fixtures().join("images"),
            config: &config,
            run_dir: &dir.join("run"),
            resume: false,
            stop_after_epoch: None,
            replicas: Vec::new(),
        },
        SilentRenderer,
    )
    .unwrap();
    let losses: Vec<f64> = report
        .epochs
        .iter()
        .map(|e| e.train_loss.unwrap())
        .collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[3] < losses[0], "loss did not fall: {losses:?}");

    // The trained RPN at the image's own resolution (a 5x9 grid).
    let native = session();
    let (cfg, rpn) = load_rpn(&native, &dir.join("run"), false).unwrap();
    let options = TwoPassOptions {
        branch: cfg.rpn.branch_layer,
        roi: cfg.inference.roi.clone(),
        answer: sdrpn_core::host::AnswerOptions {
            max_new_tokens: 4,
            stop_strings: Vec::new(),
        },
        reuse_prefix_cache: true,
    };
    let image = load_rgb(&fixtures().join("images/big.png")).unwrap();
    let out = native
        .answer_with_roi(&rpn, &image, "What is in the picture?", &options)
        .unwrap();
    assert_eq!(out.roi_map.len(), 45);
    assert!(!out.tokens.is_empty());
    std::fs::remove_dir_all(&dir).ok();
}
