//! `sdrpn bench two-pass` runs every case on a small LLaVA and reports the
//! RoI mode each case is meant to measure; bad sizes are refused by name.

use std::path::PathBuf;
use std::process::Command;

fn tiny_llava() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sdrpn-llava/tests/fixtures/tiny-llava-336")
}

fn sdrpn(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .args(args)
        .output()
        .expect("run sdrpn")
}

#[test]
fn two_pass_bench_measures_every_mode_against_the_baseline() {
    let model = tiny_llava();
    // Room for pass 2's 576 crop tokens after a ~650-token prompt.
    let text = std::fs::read_to_string(model.join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["text_config"]["max_position_embeddings"] = 2048.into();
    let dir = std::env::temp_dir().join(format!("sdrpn-bench-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.json");
    std::fs::write(&config, json.to_string()).unwrap();
    let out = sdrpn(&[
        "bench",
        "two-pass",
        "--config",
        config.to_str().unwrap(),
        "--tokenizer",
        model.to_str().unwrap(),
        "--branch",
        "2",
        "--twig",
        "2",
        "--iters",
        "1",
        "--new-tokens",
        "2",
        "--image",
        "200x150",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |case: &str| -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.starts_with(case))
            .unwrap_or_else(|| panic!("no row {case:?} in\n{text}"));
        line[case.len()..]
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    // Columns after the case name: ms, samples/s, ratio, mode, RoI tokens, answer tokens, stages.
    let baseline = row("baseline (one pass)");
    assert_eq!(
        (baseline[2].as_str(), baseline[3].as_str()),
        ("1.00x", "none")
    );
    for (case, mode) in [
        ("sdrpn, mode none, prefix reuse on", "none"),
        ("sdrpn, mode bbox, prefix reuse on", "bbox"),
        ("sdrpn, mode bbox, prefix reuse off", "bbox"),
        ("sdrpn, mode mask, prefix reuse on", "mask"),
        ("sdrpn, mode mask, prefix reuse off", "mask"),
    ] {
        let cells = row(case);
        assert_eq!(cells[3], mode, "{case}");
        let roi_tokens: usize = cells[4].parse().unwrap();
        assert_eq!(
            roi_tokens > 0,
            mode != "none",
            "{case}: {roi_tokens} RoI tokens"
        );
        let ms: f64 = cells[0].parse().unwrap();
        assert!(ms.is_finite() && ms > 0.0, "{case}: {ms} ms");
    }
    // All 576 crop tokens in bbox mode, a masked subset in mask mode.
    let bbox: usize = row("sdrpn, mode bbox, prefix reuse on")[4].parse().unwrap();
    let mask: usize = row("sdrpn, mode mask, prefix reuse on")[4].parse().unwrap();
    assert_eq!(bbox, 576);
    assert!(mask < bbox, "mask mode keeps {mask} of {bbox} tokens");
    assert!(text.contains("RPN alone"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();

    let bad = sdrpn(&["bench", "two-pass", "--image", "640"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("WIDTHxHEIGHT"),
        "{err}"
    );
}
