//! The maps labelling stores, against HF transformers' own tensors on case
//! `hf_crop_raw` of the parity fixtures (`scripts/make_fixtures.py`):
//! - grounding and sink maps: the mean of HF's decode-step attention rows
//!   (one per fed-back answer token) over the chosen heads, at the visual keys;
//! - the massive-activation map: `max_d |rms_norm(h)[d]|` of HF's hidden
//!   state at each visual token.

use safetensors::SafeTensors;
use sdrpn_llava::preprocess::ImageMode;
use sdrpn_llava::prompt::Template;
use sdrpn_llava::session::{LlavaSession, PromptOptions};
use sdrpn_llava::tokenizer::Tokenization;
use sdrpn_train::config::SinkRule;
use sdrpn_train::label::{run_labelling, LabelJob};
use sdrpn_train::label_store::{read_labels, LabelRecord};
use sdrpn_train::questions::{read_questions, ShardSpec};
use sdrpn_train::SdrpnConfig;
use std::path::PathBuf;

type B = sdrpn_core::backend::CpuBackend;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sdrpn-llava/tests/fixtures")
}

/// A reference tensor of case `hf_crop_raw`: its shape and f32 values.
fn hf_tensor(name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixtures().join("reference/hf_crop_raw.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(name).unwrap();
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (view.shape().to_vec(), values)
}

/// HF's `hidden_states[index]` of the reference case, `[T, D]` row-major.
fn hf_hidden_state(index: usize) -> (Vec<f32>, usize) {
    let (shape, values) = hf_tensor("lm_hidden_states");
    let &[_, t, d] = shape.as_slice() else {
        panic!("lm_hidden_states is [L+1, T, D]")
    };
    (values[index * t * d..(index + 1) * t * d].to_vec(), d)
}

/// Case `hf_crop_raw`: wide.png, HF tokenisation, centre crop, the prompt
/// given raw; 36 image tokens from position 3.
const PROMPT: &str = "USER: <image>\nWhat is in the picture? ASSISTANT:";
const FIRST_VISUAL: usize = 3;
const VISUAL: usize = 36;

/// Labels case `hf_crop_raw` with `config` (its prompt options set to the
/// case's) and returns the one record.
fn label_reference_case(config: SdrpnConfig, tag: &str) -> LabelRecord {
    label_questions(config, tag, &[("a", "wide.png", PROMPT)], 1).remove(0)
}

/// Labels `(question_id, image, prompt)` questions with `config` (its prompt
/// options set to the reference case's), `batch` at a time, and returns
/// their records in question order.
fn label_questions(
    mut config: SdrpnConfig,
    tag: &str,
    questions: &[(&str, &str, &str)],
    batch: usize,
) -> Vec<LabelRecord> {
    let dir = std::env::temp_dir().join(format!("sdrpn-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("q.jsonl");
    let lines: String = questions
        .iter()
        .map(|(id, image, text)| {
            format!("{{\"question_id\": {id:?}, \"image\": {image:?}, \"text\": {text:?}}}\n")
        })
        .collect();
    std::fs::write(&file, lines).unwrap();
    let options = PromptOptions {
        template: Template::Raw,
        tokenization: Tokenization::Hf,
        image_mode: ImageMode::Crop,
    };
    let session =
        LlavaSession::<B>::load(&fixtures().join("tiny-llava"), &Default::default(), options)
            .unwrap();
    config.prompt = options;
    let job = LabelJob {
        questions: read_questions(&file).unwrap().0,
        images: fixtures().join("images"),
        out: dir.join("labels"),
        shard: ShardSpec::default(),
        limit: None,
        shard_size: 4,
        force: false,
        batch,
    };
    let progress = run_labelling(&session, &config, &job, |_, _| {}).unwrap();
    assert_eq!(progress.labelled, questions.len());
    let (_, mut records) = read_labels(&dir.join("labels")).unwrap();
    std::fs::remove_dir_all(dir).ok();
    records.sort_by_key(|r| {
        questions
            .iter()
            .position(|q| q.0 == r.question_id)
            .expect("a labelled question")
    });
    records
}

/// The mean over HF's decode steps `0..steps` and `heads` of `layer` of the
/// attention rows at the visual keys.
fn hf_decode_map(layer: usize, heads: &[usize], steps: usize) -> Vec<f32> {
    let (shape, values) = hf_tensor("decode_attentions");
    let &[all_steps, layers, h, keys] = shape.as_slice() else {
        panic!("decode_attentions is [steps, L, H, keys]")
    };
    assert!(steps <= all_steps && layer < layers);
    let mut map = vec![0.0f32; VISUAL];
    for s in 0..steps {
        for &head in heads {
            let row = ((s * layers + layer) * h + head) * keys;
            for (v, m) in map.iter_mut().enumerate() {
                *m += values[row + FIRST_VISUAL + v];
            }
        }
    }
    let n = (steps * heads.len()) as f32;
    map.iter_mut().for_each(|m| *m /= n);
    map
}

fn assert_maps_close(ours: &[f32], hf: &[f32], what: &str) {
    assert_eq!(ours.len(), hf.len(), "{what}: map size");
    for (i, (a, b)) in ours.iter().zip(hf).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5,
            "{what}, visual token {i}: ours {a}, from HF's attention {b}"
        );
    }
    // Not a constant map: a wrong token range would go unnoticed otherwise.
    let spread =
        hf.iter().cloned().fold(f32::MIN, f32::max) - hf.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread > 1e-3, "{what}: reference map too flat: {hf:?}");
}

#[test]
fn grounding_and_sink_maps_are_hf_decode_attention_means() {
    // The tiny preset: grounding heads 1:0,1,2,3, sink heads 0:all (4 heads),
    // 8 new tokens, of which the first 7 are fed back (one attention row each).
    let record = label_reference_case(SdrpnConfig::tiny(), "label-maps");
    assert_eq!((record.answer_tokens, record.fed_back), (8, 7));
    assert_maps_close(
        &record.grounding,
        &hf_decode_map(1, &[0, 1, 2, 3], 7),
        "grounding map",
    );
    assert_maps_close(
        &record.sink,
        &hf_decode_map(0, &[0, 1, 2, 3], 7),
        "sink map",
    );
}

#[test]
fn massive_activation_map_matches_the_formula_on_hf_hidden_states() {
    let dims = vec![5usize, 17, 40];
    let hidden_state = 2;
    let mut config = SdrpnConfig::tiny();
    config.labels.sink = SinkRule::MassiveActivation {
        dims: dims.clone(),
        threshold: 20.0,
        hidden_state,
    };
    let record = label_reference_case(config, "massive");
    let ours = record.massive.as_ref().expect("a massive map is stored");
    assert_eq!(ours.len(), VISUAL);

    let (hidden, d) = hf_hidden_state(hidden_state);
    let expected: Vec<f32> = (FIRST_VISUAL..FIRST_VISUAL + VISUAL)
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
}

/// Four questions of different lengths about three images labelled in one
/// padded batch: every record equals its batch-1 record (answer, token
/// counts, maps within 1e-5), and the reference case's maps still equal
/// HF's decode attention.
#[test]
fn a_padded_batch_labels_as_each_question_does_alone() {
    let questions = [
        ("b", "tall.png", "USER: <image>\nWhich colour is the large square near the top left corner? ASSISTANT:"),
        ("a", "wide.png", PROMPT),
        ("c", "big.png", "USER: <image>\nCount. ASSISTANT:"),
        ("d", "wide.png", "USER: <image>\nIs there any text written anywhere in the image, and what does it say? ASSISTANT:"),
    ];
    let alone = label_questions(SdrpnConfig::tiny(), "label-batch-1", &questions, 1);
    let batched = label_questions(SdrpnConfig::tiny(), "label-batch-4", &questions, 4);
    for (one, b) in alone.iter().zip(&batched) {
        let what = format!("question {}", one.question_id);
        assert_eq!(
            (&one.answer, one.answer_tokens, one.fed_back, &one.prompt),
            (&b.answer, b.answer_tokens, b.fed_back, &b.prompt),
            "{what}"
        );
        for (name, x, y) in [
            ("grounding", &one.grounding, &b.grounding),
            ("sink", &one.sink, &b.sink),
        ] {
            assert_eq!(x.len(), y.len());
            let worst = x
                .iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max);
            eprintln!("{what}: {name} map differs by {worst:e}");
            assert!(worst <= 1e-5, "{what}: {name} maps differ by {worst:e}");
        }
    }
    let reference = &batched[1];
    assert_eq!((reference.answer_tokens, reference.fed_back), (8, 7));
    assert_maps_close(
        &reference.grounding,
        &hf_decode_map(1, &[0, 1, 2, 3], 7),
        "batched grounding map",
    );
    assert_maps_close(
        &reference.sink,
        &hf_decode_map(0, &[0, 1, 2, 3], 7),
        "batched sink map",
    );
}
