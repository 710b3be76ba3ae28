//! `sdrpn bench two-pass` runs every case on a small LLaVA and reports the
//! RoI mode each case is meant to measure; bad sizes are refused by name.
//! `sdrpn bench batch` reports every case at every batch size.

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

/// The tiny model's config with room for pass 2's 576 crop tokens after a
/// ~650-token prompt (written to a temporary folder named by `tag`).
fn roomy_config(tag: &str) -> PathBuf {
    let text = std::fs::read_to_string(tiny_llava().join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["text_config"]["max_position_embeddings"] = 2048.into();
    let dir = std::env::temp_dir().join(format!("sdrpn-bench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.json");
    std::fs::write(&config, json.to_string()).unwrap();
    config
}

/// `sdrpn bench COMMAND` on the tiny model's roomy config (written to a
/// temporary folder named by COMMAND, removed afterwards): RPN K = 2, T = 2,
/// one timed round, 2 new tokens, a 200x150 image, then `extra`; its stdout
/// once it succeeded.
fn bench_tiny(command: &str, extra: &[&str]) -> String {
    let (model, config) = (tiny_llava(), roomy_config(command));
    let mut args = vec![
        "bench",
        command,
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
    ];
    args.extend_from_slice(extra);
    let out = sdrpn(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(config.parent().unwrap()).unwrap();
    text
}

#[test]
fn two_pass_bench_measures_every_mode_against_the_baseline() {
    let text = bench_tiny("two-pass", &[]);
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

    let bad = sdrpn(&["bench", "two-pass", "--image", "640"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("WIDTHxHEIGHT"),
        "{err}"
    );
}

#[test]
fn batch_bench_reports_every_case_at_every_batch_size() {
    let text = bench_tiny("batch", &["--batch", "1,3"]);
    for case in ["baseline", "sdrpn (random RPN)", "label (taps, 2 layers)"] {
        for batch in ["1", "3"] {
            let cells: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix(case))
                .map(|rest| rest.split_whitespace().collect::<Vec<_>>())
                .find(|c| c.first() == Some(&batch))
                .unwrap_or_else(|| panic!("no row {case:?} at batch {batch} in\n{text}"));
            let rate: f64 = cells[2].parse().unwrap();
            assert!(rate > 0.0, "{case}, batch {batch}: {rate}");
        }
    }
    let bad = sdrpn(&["bench", "batch", "--batch", "0,2"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("at least 1"));
}

#[test]
fn model_bench_reports_phases_two_pass_ratio_and_a_table_row() {
    let text = bench_tiny("model", &["--answer-tokens", "2"]);
    for phase in ["vision+projector", "prefill", "decode", "two-pass"] {
        assert!(
            text.lines().any(|l| l.starts_with(phase)),
            "no {phase} line in\n{text}"
        );
    }
    // | model | device | dtype | params | vision ms | prefill tok/s | decode tok/s | ratio | peak MiB |
    let row: Vec<&str> = text
        .lines()
        .find_map(|l| l.strip_prefix("table: |"))
        .unwrap_or_else(|| panic!("no table row in\n{text}"))
        .split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(row.len(), 9, "{row:?}");
    assert_eq!(&row[..3], &["config", "cpu", "f32"]);
    let ratio: f64 = row[7].trim_end_matches('x').parse().unwrap();
    assert!(ratio > 0.0 && ratio.is_finite(), "{row:?}");
    for cell in [row[4], row[5], row[6], row[8]] {
        let v: f64 = cell.parse().unwrap();
        assert!(v > 0.0 && v.is_finite(), "{row:?}");
    }
}
