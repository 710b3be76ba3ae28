//! `sdrpn generate` and `sdrpn inspect` on a Qwen2.5-VL checkpoint pick the
//! host from `config.json` with no flag, and give HF's greedy answer and
//! tensors (the fixture of `sdrpn-qwen/tests`).

use safetensors::SafeTensors;
use sdrpn_qwen::chat::QwenTokenizer;
use std::path::PathBuf;
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sdrpn-qwen/tests/fixtures")
}

/// `name` of a safetensors file as i64 values (i64 or i32 stored).
fn ints(bytes: &[u8], name: &str) -> Vec<i64> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let view = st.tensor(name).unwrap_or_else(|_| panic!("no {name}"));
    match view.dtype() {
        safetensors::Dtype::I64 => view
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::I32 => view
            .data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
            .collect(),
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn generate_and_inspect_run_qwen_checkpoints_with_no_host_flag() {
    let model = fixtures().join("tiny-qwen");
    let image = fixtures().join("images/wide.png");
    let reference = std::fs::read(fixtures().join("reference/a_wide.safetensors")).unwrap();
    let gen_ids: Vec<u32> = ints(&reference, "gen_ids")
        .iter()
        .map(|&x| x as u32)
        .collect();
    let tokenizer = QwenTokenizer::from_dir(&model, 468).unwrap();
    let expected = tokenizer.decode(&gen_ids).unwrap().trim().to_string();

    let out = Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .args([
            "generate",
            "--max-new-tokens",
            "8",
            "--question",
            "What is in the picture?",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--image")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);

    let dir = std::env::temp_dir().join(format!("sdrpn-qwen-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("inspect.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .args(["inspect", "--prompt", "What is in the picture?"])
        .arg("--model")
        .arg(&model)
        .arg("--image")
        .arg(&image)
        .arg("--out")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = std::fs::read(&file).unwrap();
    for name in ["input_ids", "image_grid_thw", "position_ids", "gen_ids"] {
        assert_eq!(ints(&ours, name), ints(&reference, name), "{name}");
    }
    let (_, meta) = SafeTensors::read_metadata(&ours).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert!(meta["rendered_prompt"].starts_with("<|im_start|>system\nYou are a helpful assistant."));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unknown_model_type_is_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("sdrpn-unknown-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "idefics3"}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .args(["generate", "--question", "q"])
        .arg("--model")
        .arg(&dir)
        .arg("--image")
        .arg(fixtures().join("images/wide.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("idefics3") && err.contains("qwen2_5_vl"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn label_train_and_infer_run_on_a_qwen_checkpoint() {
    let model = fixtures().join("tiny-qwen");
    let images = fixtures().join("images");
    let dir = std::env::temp_dir().join(format!("sdrpn-qwen-pipeline-cli-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let names = ["wide.png", "tall.png", "big.png"];
    let lines: String = (0..6)
        .map(|i| {
            format!(
                "{{\"question_id\": {i}, \"image\": \"{}\", \"text\": \"What is in the picture?\"}}\n",
                names[i % 3]
            )
        })
        .collect();
    std::fs::write(dir.join("questions.jsonl"), lines).unwrap();
    let sdrpn = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sdrpn"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sdrpn {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (m, labels, run) = (
        path(&model),
        path(&dir.join("labels")),
        path(&dir.join("run")),
    );
    let printed = sdrpn(&[
        "label",
        "--model",
        &m,
        "--questions",
        &path(&dir.join("questions.jsonl")),
        "--images",
        &path(&images),
        "--out",
        &labels,
        "--preset",
        "tiny",
        "--qwen-square",
        "168",
    ]);
    assert!(printed.contains("6 labelled and 0 skipped"), "{printed}");
    let printed = sdrpn(&[
        "train",
        "--model",
        &m,
        "--labels",
        &labels,
        "--out",
        &run,
        "--epochs",
        "2",
        "--holdout",
        "2",
        "--batch",
        "2",
        "--qwen-square",
        "168",
    ]);
    assert!(printed.contains("epoch 2"), "{printed}");
    let printed = sdrpn(&[
        "infer",
        "--model",
        &m,
        "--rpn",
        &run,
        "--image",
        &path(&images.join("big.png")),
        "--question",
        "What is in the picture?",
        "--json",
        "--max-new-tokens",
        "3",
        "--heatmap",
        &path(&dir.join("roi.png")),
    ]);
    let json: serde_json::Value = serde_json::from_str(&printed).unwrap();
    let drawn = image::open(dir.join("roi.png")).unwrap();
    let source = image::open(images.join("big.png")).unwrap();
    assert_eq!(
        (drawn.width(), drawn.height()),
        (source.width(), source.height()),
        "the heatmap is drawn over the whole source image"
    );
    let map = json["roi_map"].as_array().unwrap();
    assert_eq!(
        (map.len(), map[0].as_array().unwrap().len()),
        (5, 9),
        "the image's own grid"
    );
    assert!(json["answer"].is_string());
    // Evaluation, baseline and SD-RPN, on synthetic benchmark samples, one
    // at a time and in one padded batch.
    let eval = |method: &str, out: &str, batch: &str| {
        sdrpn(&[
            "eval",
            "--benchmark",
            "textvqa",
            "--data",
            "synthetic:3",
            "--model",
            &m,
            "--out",
            out,
            "--method",
            method,
            "--rpn",
            &run,
            "--max-new-tokens",
            "3",
            "--batch",
            batch,
        ])
    };
    for method in ["baseline", "sdrpn"] {
        let out = path(&dir.join(format!("eval-{method}")));
        let printed = eval(method, &out, "1");
        assert!(printed.contains("3 samples"), "{method}: {printed}");
        // The same samples in one padded batch give the same predictions.
        let batched = path(&dir.join(format!("eval-{method}-batch")));
        eval(method, &batched, "3");
        let key = |folder: &str| {
            let mut p = experiments::eval::all_predictions(std::path::Path::new(folder)).unwrap();
            p.sort_by(|a, b| a.id.cmp(&b.id));
            p.into_iter()
                .map(|p| (p.id, p.prediction, p.mode, p.roi_tokens, p.tokens))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&out), key(&batched), "{method}: batch 3 vs batch 1");
        assert_eq!(key(&batched).len(), 3);
    }
    // Several questions about one image in one batch: one answer each, the
    // first as when asked alone.
    let infer = |questions: &[&str], batch: &str| {
        let mut args = vec![
            "infer".to_string(),
            "--model".into(),
            m.clone(),
            "--rpn".into(),
            run.clone(),
            "--image".into(),
            path(&images.join("wide.png")),
            "--json".into(),
            "--max-new-tokens".into(),
            "3".into(),
            "--batch".into(),
            batch.into(),
        ];
        for q in questions {
            args.extend(["--question".to_string(), q.to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        serde_json::from_str::<serde_json::Value>(&sdrpn(&refs)).unwrap()
    };
    let alone = infer(&["What is in the picture?"], "1");
    let both = infer(
        &[
            "What is in the picture?",
            "Which colour is the top left corner?",
        ],
        "2",
    );
    let both = both.as_array().expect("several questions give an array");
    assert_eq!(both.len(), 2);
    assert_eq!(both[0]["answer"], alone["answer"]);
    let flat = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect()
    };
    let (a, b) = (flat(&both[0]["roi_map"]), flat(&alone["roi_map"]));
    assert_eq!(a.len(), b.len());
    assert!(
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-5),
        "{a:?} vs {b:?}"
    );
    assert_eq!(both[1]["question"], "Which colour is the top left corner?");
    std::fs::remove_dir_all(&dir).ok();
}

/// `infer --method vicrop-rel` needs no RPN: it prints ViCrop's map over the
/// image's grid, a crop and the bbox mode (`vicrop-grad` too, another map);
/// a layer past the model is refused
/// by name, and so is `--method sdrpn` without `--rpn`.
#[test]
fn infer_answers_with_vicrop_without_an_rpn() {
    let model = fixtures().join("tiny-qwen");
    let image = fixtures().join("images/big.png");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sdrpn"))
            .args(["infer", "--model"])
            .arg(&model)
            .arg("--image")
            .arg(&image)
            .args([
                "--question",
                "What is in the picture?",
                "--json",
                "--max-new-tokens",
                "3",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--method", "vicrop-rel", "--vicrop-box", "60"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["mode"], "bbox");
    let map = json["roi_map"].as_array().unwrap();
    assert_eq!(
        (map.len(), map[0].as_array().unwrap().len()),
        (5, 9),
        "{json}"
    );
    let crop: Vec<u64> = json["crop"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(crop[2] - crop[0] < 320, "a real crop: {crop:?}");
    let out = run(&["--method", "vicrop-grad", "--vicrop-box", "60"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let grad: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(grad["mode"], "bbox");
    assert_ne!(grad["roi_map"], json["roi_map"], "grad-att is another map");
    let out = run(&["--method", "vicrop-rel", "--vicrop-layer", "99"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--vicrop-layer 99") && err.contains("layers"),
        "{err}"
    );
    let out = run(&["--method", "sdrpn"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --rpn"));
}

/// The authors' released Qwen2.5-VL RPN layout (a fixture of
/// `scripts/make_released_fixtures.py`: `model.twig_layers` with q/k/v
/// biases, an unused `twig_norm`) imported, then answered with on the base
/// model.
#[test]
fn a_released_qwen_rpn_imports_and_infer_answers_with_it() {
    let released = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sdrpn-train/tests/fixtures/released/rpn-qwen-style");
    let run = std::env::temp_dir().join(format!("sdrpn-qwen-import-rpn-{}", std::process::id()));
    std::fs::remove_dir_all(&run).ok();
    let sdrpn = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sdrpn"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let printed = sdrpn(&[
        "import-rpn".as_ref(),
        released.as_os_str(),
        "--out".as_ref(),
        run.as_os_str(),
    ]);
    assert!(
        printed.contains("Qwen") && printed.contains("K 2, T 2"),
        "{printed}"
    );
    let source: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("imported.json")).unwrap()).unwrap();
    let ours: Vec<&str> = source["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t[1].as_str().unwrap())
        .collect();
    // Qwen's RPN: q/k biases in the head, no twig norm.
    assert!(
        ours.contains(&"head.q_proj.bias") && ours.contains(&"head.k_proj.bias"),
        "{ours:?}"
    );
    assert!(!ours.iter().any(|t| t.starts_with("twig_norm")), "{ours:?}");
    let printed = sdrpn(&[
        "infer".as_ref(),
        "--model".as_ref(),
        fixtures().join("tiny-qwen").as_os_str(),
        "--rpn".as_ref(),
        run.as_os_str(),
        "--image".as_ref(),
        fixtures().join("images/big.png").as_os_str(),
        "--question".as_ref(),
        "What is in the picture?".as_ref(),
        "--json".as_ref(),
        "--max-new-tokens".as_ref(),
        "3".as_ref(),
    ]);
    let json: serde_json::Value = serde_json::from_str(&printed).unwrap();
    let map = json["roi_map"].as_array().unwrap();
    assert_eq!((map.len(), map[0].as_array().unwrap().len()), (5, 9));
    assert!(json["answer"].is_string());
    std::fs::remove_dir_all(run).ok();
}
