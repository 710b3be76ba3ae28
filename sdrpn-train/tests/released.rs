//! The authors' released pseudo-label pickles imported into the label store,
//! on fixtures written by `scripts/make_released_fixtures.py` with numpy in
//! the released files' layout (7B: float16, protocol 4; 13B: float64 at
//! protocols 2, 4 and 5; a 2,100-record stream of three `APPENDS` batches).

use sdrpn_core::Grid;
use sdrpn_train::label_store::{read_labels, shard_files, LabelRecord};
use sdrpn_train::released_labels::{import_released_labels, ImportReport, LabelImport};
use sdrpn_train::SdrpnConfig;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/released")
        .join(name)
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sdrpn-import-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

fn import(
    pickle: &Path,
    out: &Path,
    grid: Option<Grid>,
    shard_size: usize,
) -> sdrpn_train::Result<ImportReport> {
    let config = SdrpnConfig::tiny();
    let job = LabelImport {
        pickle,
        out,
        grid,
        config: &config,
        shard_size,
    };
    let file = std::fs::File::open(pickle).unwrap();
    import_released_labels(&job, file)
}

/// The records of an `.expected.json` written by the fixture script.
fn expected(name: &str) -> (serde_json::Value, Vec<LabelRecord>) {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let records = json["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let question = r["question"].as_str().unwrap().to_string();
            LabelRecord {
                question_id: r["question_id"].as_str().unwrap().into(),
                image: r["image"].as_str().unwrap().into(),
                prompt: format!("<image>\n{question}"),
                question,
                answer: r["answer"].as_str().unwrap().into(),
                answer_tokens: 0,
                fed_back: 0,
                grounding: floats(&r["grounding"]),
                sink: floats(&r["sink"]),
                massive: None,
            }
        })
        .collect();
    (json, records)
}

#[test]
fn a_7b_style_pickle_imports_its_records_and_names_the_bad_ones() {
    let out = temp("7b");
    let pickle = fixture("labels-7b-style.pkl");
    let report = import(&pickle, &out, None, 3).unwrap();
    let (json, want) = expected("labels-7b-style.expected.json");
    assert_eq!(report.grid, Some(Grid::new(6, 6).unwrap()));
    assert_eq!(report.imported, want.len());
    assert_eq!(report.already, 0);
    // Two float16 maps of every imported record, and those of the bad
    // records read before the fault.
    assert!(
        report.dtypes.keys().all(|d| d == "f2"),
        "{:?}",
        report.dtypes
    );
    let (grid, got) = read_labels(&out).unwrap();
    assert_eq!(grid, Grid::new(6, 6).unwrap());
    assert_eq!(got, want, "maps and texts exactly as numpy widens float16");
    // The released 7B grounding maps are sink-masked already.
    for r in &got {
        for (g, s) in r.grounding.iter().zip(&r.sink) {
            assert!(*s < 1e-3 || *g == 0.0);
        }
    }
    assert_eq!(
        shard_files(&out, None).unwrap().len(),
        3,
        "8 records in shards of 3"
    );
    let skipped: Vec<(String, String)> = json["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_str().unwrap().into(), s[1].as_str().unwrap().into()))
        .collect();
    assert_eq!(report.skipped.len(), skipped.len(), "{:?}", report.skipped);
    for ((id, why), (want_id, want_why)) in report.skipped.iter().zip(&skipped) {
        assert_eq!(id, want_id);
        assert!(
            why.contains(want_why.as_str()),
            "{id}: {why:?} lacks {want_why:?}"
        );
    }
    let log = std::fs::read_to_string(out.join("skipped-imported.jsonl")).unwrap();
    assert_eq!(log.lines().count(), skipped.len());
    assert!(SdrpnConfig::load(&out.join("config.toml")).is_ok());
    let source: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("imported.json")).unwrap()).unwrap();
    assert_eq!(source["preset"], "tiny");
    assert_eq!(source["bytes"], std::fs::metadata(&pickle).unwrap().len());

    // A rerun finds everything done; another file into the folder is refused.
    let again = import(&pickle, &out, None, 3).unwrap();
    assert_eq!((again.imported, again.already), (0, want.len()));
    let err = import(&fixture("labels-13b-style.pkl"), &out, None, 3)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("labels-13b-style.pkl") && err.contains("new --out"),
        "{err}"
    );
    // A grid the maps do not have: every record is skipped, and the error says so.
    let other = temp("7b-grid");
    let err = import(&pickle, &other, Some(Grid::new(5, 5).unwrap()), 3)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("none of its 15 records") && err.contains("5x5"),
        "{err}"
    );
    std::fs::remove_dir_all(out).ok();
    std::fs::remove_dir_all(other).ok();
}

#[test]
fn a_13b_style_pickle_reads_the_same_at_protocols_2_4_and_5() {
    let (_, want) = expected("labels-13b-style.expected.json");
    for name in [
        "labels-13b-style.pkl",
        "labels-13b-style-protocol2.pkl",
        "labels-13b-style-protocol5.pkl",
    ] {
        let out = temp(name);
        let report = import(&fixture(name), &out, Some(Grid::new(6, 6).unwrap()), 100).unwrap();
        assert!(report.skipped.is_empty(), "{name}: {:?}", report.skipped);
        // float64 maps, and one 2-D float32 map stored column-major.
        assert_eq!(
            report.dtypes.get("f8"),
            Some(&7),
            "{name}: {:?}",
            report.dtypes
        );
        assert_eq!(
            report.dtypes.get("f4"),
            Some(&1),
            "{name}: {:?}",
            report.dtypes
        );
        let (_, got) = read_labels(&out).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.question_id, w.question_id, "{name}");
            assert_eq!(g.answer, w.answer, "{name}");
            // float64 narrowed to float32 by Rust and by numpy round alike.
            assert_eq!(g.grounding, w.grounding, "{name} {}", g.question_id);
            assert_eq!(g.sink, w.sink, "{name} {}", g.question_id);
        }
        assert_eq!(got.len(), want.len());
        std::fs::remove_dir_all(out).ok();
    }
}

/// The stream fixture's record `i`, as the script makes it.
fn stream_maps(i: usize) -> (Vec<f32>, Vec<f32>) {
    let base = (half::f16::from_f32((i % 97) as f32) / half::f16::from_f32(8.0)).to_f32();
    (
        vec![0.0, base, (i % 5) as f32, 2.0],
        vec![base, 0.0, 0.0, 1.0],
    )
}

#[test]
fn a_long_pickle_streams_through_appends_batches_and_resumes_after_a_cut() {
    let pickle = fixture("labels-stream.pkl");
    let bytes = std::fs::read(&pickle).unwrap();
    // Cut inside the third batch: the first two batches are imported, and
    // the error says the file ends early.
    let dir = temp("stream");
    std::fs::create_dir_all(&dir).unwrap();
    let cut = dir.join("labels-stream.pkl");
    std::fs::write(&cut, &bytes[..bytes.len() - 3000]).unwrap();
    let out = dir.join("labels");
    let err = import(&cut, &out, None, 700).unwrap_err().to_string();
    assert!(
        err.contains("labels-stream.pkl") && err.contains("cut short"),
        "{err}"
    );
    let (_, partial) = read_labels(&out).unwrap();
    assert_eq!(
        partial.len(),
        2000,
        "the two whole APPENDS batches are kept"
    );
    // The whole file (same name, another size) is refused into that folder...
    std::fs::write(&cut, &bytes).unwrap();
    let err = import(&cut, &out, None, 700).unwrap_err().to_string();
    assert!(err.contains("new --out"), "{err}");
    // ...and imports whole into a new one.
    let out = dir.join("labels-whole");
    let report = import(&cut, &out, None, 700).unwrap();
    assert_eq!((report.read, report.imported), (2100, 2100));
    let (grid, got) = read_labels(&out).unwrap();
    assert_eq!(grid, Grid::new(2, 2).unwrap());
    assert_eq!(got.len(), 2100);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.question_id, i.to_string());
        assert_eq!(r.question, format!("q{i}"));
        let (g, s) = stream_maps(i);
        assert_eq!((&r.grounding, &r.sink), (&g, &s), "record {i}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn files_that_are_no_label_pickle_are_refused_by_name() {
    let dir = temp("junk");
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.pkl");
    std::fs::write(&junk, b"\x80\x04not a pickle at all").unwrap();
    let err = import(&junk, &dir.join("out"), None, 10)
        .unwrap_err()
        .to_string();
    assert!(err.contains("junk.pkl") && err.contains("opcode"), "{err}");
    // A label folder of `sdrpn label` is not imported into.
    let labelled = dir.join("labelled");
    std::fs::create_dir_all(&labelled).unwrap();
    std::fs::write(labelled.join("provenance.json"), "{}").unwrap();
    let err = import(&fixture("labels-7b-style.pkl"), &labelled, None, 10)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sdrpn label"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

// ---- RPN checkpoints ----

#[path = "../../sdrpn-llava/tests/common/mod.rs"]
mod common;

use sdrpn_llava::session::{LlavaSession, PromptOptions};
use sdrpn_llava::weights::Checkpoint;
use sdrpn_train::released_rpn::import_released_rpn;

/// Our RPN parameter -> the released key it must equal (transposed when
/// 2-D), for the fixtures' K = 2, T = 2 LLaVA checkpoints.
fn llava_mapping() -> Vec<(String, String)> {
    let mut map: Vec<(String, String)> = [
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    ]
    .iter()
    .map(|p| {
        (
            format!("twig_layers.0.{p}"),
            format!("model.twig_layers.0.{p}"),
        )
    })
    .collect();
    for (ours, released) in [
        ("twig_norm.weight", "model.twig_norm.weight"),
        (
            "head_norm.weight",
            "model.twig_layers.1.input_layernorm.weight",
        ),
        (
            "head.q_proj.weight",
            "model.twig_layers.1.self_attn.q_proj.weight",
        ),
        (
            "head.k_proj.weight",
            "model.twig_layers.1.self_attn.k_proj.weight",
        ),
    ] {
        map.push((ours.into(), released.into()));
    }
    map
}

/// Checks every parameter of the imported `run` against the released
/// checkpoint by `mapping`, and that nothing else was written.
pub fn assert_imported_as(run: &Path, checkpoint: &Path, mapping: &[(String, String)]) {
    let released = Checkpoint::open_renamed(checkpoint, str::to_string).unwrap();
    let bytes = std::fs::read(run.join("rpn.safetensors")).unwrap();
    let ours = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = ours.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut want: Vec<String> = mapping.iter().map(|(o, _)| o.clone()).collect();
    want.sort();
    assert_eq!(names, want);
    for (ours_name, released_name) in mapping {
        let view = ours.tensor(ours_name).unwrap();
        let got: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let shape = released.shape(released_name).unwrap().to_vec();
        let values = released.read_f32(released_name).unwrap();
        match shape[..] {
            [out, inp] => {
                assert_eq!(view.shape(), [inp, out], "{ours_name}");
                for o in 0..out {
                    for i in 0..inp {
                        assert_eq!(
                            got[i * out + o],
                            values[o * inp + i],
                            "{ours_name} [{i},{o}]"
                        );
                    }
                }
            }
            _ => assert_eq!(got, values, "{ours_name}"),
        }
    }
}

#[test]
fn released_llava_rpns_import_key_by_key_and_load_on_the_base_model() {
    let session = LlavaSession::<common::B>::load(
        &common::model_dir("tiny-llava"),
        &common::device(),
        PromptOptions::default(),
    )
    .unwrap();
    for name in ["rpn-llava-7b-style", "rpn-llava-13b-style"] {
        let checkpoint = fixture(name);
        let run = temp(name);
        let source = import_released_rpn(&checkpoint, &run, None).unwrap();
        assert_eq!((source.branch_layer, source.twig_layers), (2, 2), "{name}");
        assert_imported_as(&run, &checkpoint, &llava_mapping());
        let (config, _rpn) = sdrpn_train::trainer::load_rpn(&session, &run, false).unwrap();
        assert_eq!(
            config.preset, "tiny",
            "{name}: the preset of a 4-layer LLaVA"
        );
        assert_eq!((config.rpn.branch_layer, config.rpn.twig_layers), (2, 2));
        // A run folder of `sdrpn train` is not overwritten.
        std::fs::remove_file(run.join("imported.json")).unwrap();
        let err = import_released_rpn(&checkpoint, &run, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sdrpn train"), "{err}");
        std::fs::remove_dir_all(run).ok();
    }
}

#[test]
fn checkpoints_without_an_rpn_are_refused_by_name() {
    // A plain llava-hf checkpoint: no twig_K in its config.
    let err = import_released_rpn(&common::model_dir("tiny-llava"), &temp("plain"), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("twig_K") && err.contains("config.json"),
        "{err}"
    );
    // twig_T larger than the twig layers held.
    let dir = temp("bad-t");
    std::fs::create_dir_all(&dir).unwrap();
    let source = fixture("rpn-llava-13b-style");
    std::fs::copy(
        source.join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(source.join("config.json"))
        .unwrap()
        .replace("\"twig_T\": 2", "\"twig_T\": 1");
    std::fs::write(dir.join("config.json"), config).unwrap();
    let err = import_released_rpn(&dir, &dir.join("run"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("twig_T 1"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}
