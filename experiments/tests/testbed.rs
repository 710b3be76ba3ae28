//! The testbed end to end on the shipped model at smoke sizes (CI): splits,
//! head ranking, labels, RPN training, seven answerers on the test split,
//! localisation, results files and figures; then a rerun that must resume
//! (nothing answered twice) and reproduce the numbers.

use std::path::PathBuf;
use std::process::Command;

fn run(model: &str, out: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .args([
            "testbed", "run", "--smoke", "--seed", "3", "--model", model, "--out", out,
        ])
        .output()
        .expect("the sdrpn binary runs")
}

#[test]
fn the_smoke_run_writes_every_result_and_resumes_to_the_same_numbers() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("testbed/model");
    let out = std::env::temp_dir().join(format!("sdrpn-testbed-smoke-{}", std::process::id()));
    std::fs::remove_dir_all(&out).ok();
    let (model, out_s) = (model.to_str().unwrap(), out.to_str().unwrap());

    let first = run(model, out_s);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "testbed run failed: {stderr}");
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains("| reading |"),
        "the table is printed: {stdout}"
    );

    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["seed"], 3);
    assert!(results["seconds"].as_f64().unwrap() > 0.0);
    // Smoke sizes: 4 test questions per family, two families.
    assert_eq!(results["test_samples"], 8);
    for family in ["reading", "control", "overall"] {
        for who in [
            "baseline",
            "sdrpn",
            "vicrop",
            "vicrop_grad",
            "oracle",
            "random",
            "centre",
        ] {
            let v = results["accuracy"][family][who].as_f64();
            assert!(
                v.is_some_and(|v| (0.0..=100.0).contains(&v)),
                "accuracy.{family}.{who} = {v:?}"
            );
        }
    }
    for key in [
        "pseudo_label_precision",
        "pseudo_label_recall",
        "rpn_iou_median",
        "crop_hit_rate",
    ] {
        let v = results["localisation"][key].as_f64();
        assert!(v.is_some_and(|v| (0.0..=1.0).contains(&v)), "{key} = {v:?}");
    }
    assert!(results["throughput_ratio"].as_f64().unwrap() > 0.0);
    for vicrop in ["vicrop-rel", "vicrop-grad"] {
        let v = &results["vicrop"][vicrop];
        assert!(
            v["throughput_ratio"].as_f64().unwrap() > 0.0,
            "{vicrop}: {v}"
        );
        assert!(v["layer"].as_u64().unwrap() < 6, "{vicrop}: {v}");
        assert_eq!(
            v["layer_hits"].as_array().unwrap().len(),
            6,
            "{vicrop}: {v}"
        );
    }
    let heads: sdrpn_core::HeadSelection = results["grounding_heads"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(heads.resolve(6, 6).unwrap().pair_count(), 3);
    for png in ["figure-samples.png", "figure-accuracy.png"] {
        let bytes = std::fs::read(out.join(png)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{png}");
    }
    let answers = std::fs::read_to_string(out.join("answers.jsonl")).unwrap();
    assert_eq!(
        answers.lines().count(),
        8 * 7,
        "every question by every answerer"
    );

    // A rerun resumes: nothing is answered again, and the numbers hold.
    let second = run(model, out_s);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let again = std::fs::read_to_string(out.join("answers.jsonl")).unwrap();
    assert_eq!(again, answers, "the rerun answered nothing twice");
    let rerun: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(rerun["accuracy"], results["accuracy"]);
    assert_eq!(rerun["localisation"], results["localisation"]);

    // Other settings in the same folder are refused, not mixed.
    let mixed = Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .args([
            "testbed", "run", "--smoke", "--seed", "4", "--model", model, "--out", out_s,
        ])
        .output()
        .unwrap();
    assert!(!mixed.status.success());
    assert!(String::from_utf8_lossy(&mixed.stderr).contains("other settings"));
    std::fs::remove_dir_all(&out).ok();
}
