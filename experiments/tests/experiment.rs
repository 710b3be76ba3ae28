//! The experiment runner end to end on `experiments/configs/tiny.toml`:
//! synthetic Parquet data through the real loaders, labelling, training,
//! both methods evaluated, tables written; a rerun resumes everything.

use experiments::experiment::{run_experiment, ExperimentConfig};
use std::path::PathBuf;

type B = sdrpn_core::backend::CpuBackend;

#[test]
fn the_tiny_experiment_runs_end_to_end_and_resumes() {
    let config_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml");
    let config = ExperimentConfig::load(&config_path).unwrap();
    let out = std::env::temp_dir().join(format!("sdrpn-experiment-{}", std::process::id()));
    std::fs::remove_dir_all(&out).ok();
    let mut lines = Vec::new();
    let cells = run_experiment::<B>(&config, &out, &Default::default(), &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert_eq!(cells.len(), 6, "2 runs x 3 benchmarks");
    for c in &cells {
        assert_eq!(c.report.samples, 6, "{} {}", c.run, c.benchmark);
        assert!(
            (0.0..=100.0).contains(&c.report.score) || c.report.score.is_nan(),
            "{c:?}"
        );
        assert!(c.report.samples_per_s > 0.0);
        assert!(c.published.is_some());
    }
    let sdrpn: usize = cells
        .iter()
        .filter(|c| c.run == "+ SD-RPN")
        .map(|c| c.report.modes.values().sum::<usize>())
        .sum();
    assert_eq!(sdrpn, 18, "every SD-RPN prediction records its RoI mode");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains("| LLaVA-1.5 (baseline) |") && md.contains("| + SD-RPN |"),
        "{md}"
    );
    assert!(md.contains("(46.1)") && md.contains("1.00x"), "{md}");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");
    assert!(out.join("sd-rpn/rpn/rpn.safetensors").is_file());

    // A rerun finds everything done: same scores, no retraining.
    let mut again = Vec::new();
    let cells2 = run_experiment::<B>(&config, &out, &Default::default(), &mut |l| {
        again.push(l.to_string())
    })
    .unwrap();
    assert!(
        again.iter().any(|l| l.contains("already trained")),
        "{again:?}"
    );
    assert!(
        cells2.iter().all(|c| c.report.samples == 6),
        "a rerun appends no duplicate predictions"
    );
    let scores = |cs: &[experiments::experiment::Cell]| {
        cs.iter().map(|c| c.report.score).collect::<Vec<_>>()
    };
    assert_eq!(scores(&cells).len(), scores(&cells2).len());
    for (a, b) in scores(&cells).iter().zip(scores(&cells2)) {
        assert!(a == &b || (a.is_nan() && b.is_nan()));
    }
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn every_shipped_config_parses_and_is_consistent() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let c = ExperimentConfig::load(&path)
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            c.method().unwrap();
            count += 1;
        }
    }
    assert!(
        count >= 10,
        "expected the main tables, the ablations and the tiny config, found {count}"
    );
}
