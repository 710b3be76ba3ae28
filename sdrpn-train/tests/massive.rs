//! The massive-activation sink rule on the real host: labelling stores, per
//! visual token, `max_d |rms_norm(h)[d]|` of the chosen hidden state, and
//! that map equals the same formula applied to HF transformers' own hidden
//! states (the committed parity reference of `scripts/make_fixtures.py`).

use safetensors::SafeTensors;
use sdrpn_llava::preprocess::ImageMode;
use sdrpn_llava::prompt::Template;
use sdrpn_llava::session::{LlavaSession, PromptOptions};
use sdrpn_llava::tokenizer::Tokenization;
use sdrpn_train::config::SinkRule;
use sdrpn_train::label::{run_labelling, LabelJob};
use sdrpn_train::label_store::read_labels;
use sdrpn_train::questions::{read_questions, ShardSpec};
use sdrpn_train::SdrpnConfig;
use std::path::PathBuf;

type B = sdrpn_core::backend::CpuBackend;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sdrpn-llava/tests/fixtures")
}

/// HF's `hidden_states[index]` of the reference case, `[T, D]` row-major.
fn hf_hidden_state(bytes: &[u8], index: usize) -> (Vec<f32>, usize) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let view = st.tensor("lm_hidden_states").unwrap();
    let &[_, t, d] = view.shape() else {
        panic!("lm_hidden_states is [L+1, T, D]")
    };
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (values[index * t * d..(index + 1) * t * d].to_vec(), d)
}

#[test]
fn massive_activation_map_matches_the_formula_on_hf_hidden_states() {
    let dir = std::env::temp_dir().join(format!("sdrpn-massive-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();

    // Case `hf_crop_raw` of the parity fixtures: wide.png, HF tokenisation,
    // centre crop, the prompt given raw; 36 image tokens from position 3.
    let prompt = "USER: <image>\nWhat is in the picture? ASSISTANT:";
    let (first_visual, visual) = (3, 36);
    let questions = dir.join("q.jsonl");
    std::fs::write(
        &questions,
        format!("{{\"question_id\": \"a\", \"image\": \"wide.png\", \"text\": {prompt:?}}}\n"),
    )
    .unwrap();
    let options = PromptOptions {
        template: Template::Raw,
        tokenization: Tokenization::Hf,
        image_mode: ImageMode::Crop,
    };
    let session =
        LlavaSession::<B>::load(&fixtures().join("tiny-llava"), &Default::default(), options)
            .unwrap();
    let dims = vec![5usize, 17, 40];
    let hidden_state = 2;
    let mut config = SdrpnConfig::tiny();
    config.prompt = options;
    config.labels.sink = SinkRule::MassiveActivation {
        dims: dims.clone(),
        threshold: 20.0,
        hidden_state,
    };
    let job = LabelJob {
        questions: read_questions(&questions).unwrap().0,
        images: fixtures().join("images"),
        out: dir.join("labels"),
        shard: ShardSpec::default(),
        limit: None,
        shard_size: 4,
    };
    let progress = run_labelling(&session, &config, &job, |_, _| {}).unwrap();
    assert_eq!(progress.labelled, 1);
    let (_, records) = read_labels(&dir.join("labels")).unwrap();
    let ours = records[0]
        .massive
        .as_ref()
        .expect("a massive map is stored");
    assert_eq!(ours.len(), visual);

    let bytes = std::fs::read(fixtures().join("reference/hf_crop_raw.safetensors")).unwrap();
    let (hidden, d) = hf_hidden_state(&bytes, hidden_state);
    let expected: Vec<f32> = (first_visual..first_visual + visual)
        .map(|t| {
            let row = &hidden[t * d..(t + 1) * d];
            let rms = (row.iter().map(|x| x * x).sum::<f32>() / d as f32 + 1e-6).sqrt();
            dims.iter()
                .map(|&i| (row[i] / rms).abs())
                .fold(0.0, f32::max)
        })
        .collect();
    for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "visual token {i}: ours {a}, from HF's hidden state {b}"
        );
    }
    // Not a constant map: the test would not notice a wrong token range otherwise.
    let spread = expected.iter().cloned().fold(f32::MIN, f32::max)
        - expected.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread > 0.1, "reference map too flat: {expected:?}");
    std::fs::remove_dir_all(dir).ok();
}
