//! The experiment runner end to end on `experiments/configs/tiny.toml`:
//! synthetic Parquet data through the real loaders, labelling, training,
//! both methods evaluated, tables written; a rerun resumes everything.

use experiments::experiment::{run_experiment, slug, ExperimentConfig};
use sdrpn_eval::scorers::pope::{parse, YesNo};
use sdrpn_eval::scorers::vqa::vqa_accuracy;
use sdrpn_eval::scorers::vstar::vstar_score;
use std::path::{Path, PathBuf};

type B = sdrpn_core::backend::CpuBackend;

/// The headline score (x100) of the predictions files in `folder`,
/// computed here from the per-sample rules alone (not the runner's
/// aggregation): mean VQA accuracy (TextVQA), mean option match (V*), F1 of
/// "yes" over exact yes/no predictions (POPE, EVAL.md).
fn rescore(benchmark: &str, folder: &Path) -> f64 {
    let mut pairs: Vec<(String, Vec<String>)> = Vec::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("predictions-") && name.ends_with(".jsonl")) {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let answers = v["answers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            pairs.push((v["prediction"].as_str().unwrap().to_string(), answers));
        }
    }
    assert!(!pairs.is_empty(), "{} has predictions", folder.display());
    let mean = |f: &dyn Fn(&str, &[String]) -> f64| {
        100.0 * pairs.iter().map(|(p, a)| f(p, a)).sum::<f64>() / pairs.len() as f64
    };
    match benchmark {
        "textvqa" => mean(&|p, a| vqa_accuracy(p, a)),
        "vstar" => mean(&|p, a| vstar_score(p, a)),
        "pope" => {
            let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
            for (p, a) in &pairs {
                match (parse(&a[0]), parse(p)) {
                    (YesNo::Yes, YesNo::Yes) => tp += 1.0,
                    (YesNo::No, YesNo::Yes) => fp += 1.0,
                    (YesNo::Yes, YesNo::No) => fn_ += 1.0,
                    _ => {}
                }
            }
            // F1 = 2 tp / (2 tp + fp + fn), 0 when nothing is right.
            if tp > 0.0 {
                100.0 * 2.0 * tp / (2.0 * tp + fp + fn_)
            } else {
                0.0
            }
        }
        other => panic!("no rescoring rule for {other}"),
    }
}

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
    assert_eq!(cells.len(), 12, "4 runs x 3 benchmarks");
    for c in &cells {
        assert_eq!(c.report.samples, 6, "{} {}", c.run, c.benchmark);
        let folder = out.join(slug(&c.run)).join(&c.benchmark);
        let rescored = rescore(&c.benchmark, &folder);
        assert!(
            (c.report.score - rescored).abs() < 1e-9,
            "{} {}: reported {} but its predictions score {rescored}",
            c.run,
            c.benchmark,
            c.report.score
        );
        assert!(c.report.samples_per_s > 0.0);
        let unpublished = (c.run == "+ ViCrop (rel-att)" && c.benchmark == "pope")
            || c.run == "+ ViCrop (grad-att)";
        assert_eq!(
            c.published.is_some(),
            !unpublished,
            "{} {}",
            c.run,
            c.benchmark
        );
    }
    // ViCrop always crops (ViCrop's rule takes the whole image when even its
    // smallest box covers it): every prediction is a bbox one.
    for c in cells.iter().filter(|c| c.run.starts_with("+ ViCrop")) {
        assert_eq!(
            c.report.modes.get("bbox"),
            Some(&6),
            "{}: {:?}",
            c.benchmark,
            c.report.modes
        );
    }
    let sdrpn: usize = cells
        .iter()
        .filter(|c| c.run == "+ SD-RPN")
        .map(|c| c.report.modes.values().sum::<usize>())
        .sum();
    assert_eq!(sdrpn, 18, "every SD-RPN prediction records its RoI mode");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains("| LLaVA-1.5 (baseline) |")
            && md.contains("| + ViCrop (rel-att) |")
            && md.contains("| + ViCrop (grad-att) |")
            && md.contains("| + SD-RPN |"),
        "{md}"
    );
    assert!(md.contains("(46.1)") && md.contains("1.00x"), "{md}");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 13, "{csv}");
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
        assert!(a.is_finite(), "no NaN score: {a}");
        assert_eq!(*a, b);
    }
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn the_tiny_qwen_experiment_runs_end_to_end_with_labels_on_a_square() {
    let config_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/tiny-qwen.toml");
    let config = ExperimentConfig::load(&config_path).unwrap();
    let out = std::env::temp_dir().join(format!("sdrpn-experiment-qwen-{}", std::process::id()));
    std::fs::remove_dir_all(&out).ok();
    let mut lines = Vec::new();
    let cells = run_experiment::<B>(&config, &out, &Default::default(), &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert_eq!(cells.len(), 2, "2 runs x 1 benchmark: {lines:?}");
    for c in &cells {
        assert_eq!(c.report.samples, 4, "{}", c.run);
        let rescored = rescore("textvqa", &out.join(slug(&c.run)).join("textvqa"));
        assert!((c.report.score - rescored).abs() < 1e-9, "{}", c.run);
    }
    let modes: usize = cells[1].report.modes.values().sum();
    assert_eq!(modes, 4, "every SD-RPN prediction records its RoI mode");
    // Labels were made on the 168 px square: 6x6 tokens, whatever the image.
    let (grid, records) = sdrpn_train::label_store::read_labels(&out.join("labels")).unwrap();
    assert_eq!((grid.rows, grid.cols), (6, 6));
    assert!(records.iter().all(|r| r.grounding.len() == 36));
    assert!(out.join("sd-rpn/rpn/rpn.safetensors").is_file());
    let provenance: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("provenance.json")).unwrap())
            .unwrap();
    assert_eq!(
        provenance["model"]["grid"], "per-image",
        "the table records the Qwen checkpoint's fingerprint"
    );
    std::fs::remove_dir_all(&out).ok();
}

/// What each shipped config varies across its SD-RPN rows (row order; "-"
/// for unset, i.e. the method config's value). Everything else about those
/// rows must be equal, a row that reuses another's RPN (`rpn_from`) counting
/// with that row's training. Configs with one SD-RPN row vary nothing.
const VARIES: &[(&str, &str, &[&str])] = &[
    ("ablation-ambiguity.toml", "multi_box_mask", &["-", "false"]),
    (
        "ablation-branch-layer.toml",
        "branch_layer",
        &["9", "12", "15", "18", "21"],
    ),
    ("ablation-denoise.toml", "train.denoise", &["-", "false"]),
    (
        "ablation-loss.toml",
        "train.loss",
        &["\"bce\"", "\"focal\"", "\"mse\""],
    ),
    (
        "ablation-threshold.toml",
        "threshold",
        &["-", "0.05", "0.1", "0.2", "0.3"],
    ),
    (
        "ablation-training-size.toml",
        "train.samples",
        &["1000", "5000", "10000", "-"],
    ),
    (
        "ablation-twig-layers.toml",
        "twig_layers",
        &["1", "2", "3", "4"],
    ),
    ("main-table-13b.toml", "", &[]),
    ("main-table-7b.toml", "", &[]),
    ("testbed-ambiguity.toml", "multi_box_mask", &["-", "false"]),
    (
        "testbed-branch-layer.toml",
        "branch_layer",
        &["1", "2", "3"],
    ),
    ("testbed-denoise.toml", "train.denoise", &["-", "false"]),
    (
        "testbed-threshold.toml",
        "threshold",
        &["0.15", "0.05", "0.1", "0.25", "0.35", "0.5"],
    ),
    (
        "testbed-training-size.toml",
        "train.samples",
        &["50", "150", "600"],
    ),
    ("testbed-twig-layers.toml", "twig_layers", &["1", "2", "3"]),
    ("tiny-qwen.toml", "", &[]),
    ("tiny.toml", "", &[]),
];

/// A run's settings as flat `key -> value` text (`train.x` for training),
/// with a reused RPN's training taken from the row it names.
fn effective_settings(
    run: &experiments::experiment::RunSpec,
    runs: &[experiments::experiment::RunSpec],
) -> std::collections::BTreeMap<String, String> {
    let mut v = serde_json::to_value(run).unwrap();
    let map = v.as_object_mut().unwrap();
    map.remove("name");
    if let Some(from) = map.remove("rpn_from").filter(|f| !f.is_null()) {
        let source = runs
            .iter()
            .find(|r| r.name == from.as_str().unwrap())
            .unwrap_or_else(|| panic!("rpn_from {from} names no row"));
        assert!(source.train.is_some(), "rpn_from {from}: that row trains");
        map.insert("train".into(), serde_json::to_value(&source.train).unwrap());
    }
    let mut flat = std::collections::BTreeMap::new();
    for (key, value) in map.iter() {
        match value.as_object() {
            Some(inner) if key == "train" => {
                for (k, x) in inner {
                    flat.insert(format!("train.{k}"), x.to_string());
                }
            }
            _ => {
                flat.insert(key.clone(), value.to_string());
            }
        }
    }
    for value in flat.values_mut() {
        if value == "null" {
            *value = "-".into();
        }
    }
    flat
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
            let file = path.file_name().unwrap().to_string_lossy().to_string();
            let &(_, key, values) = VARIES
                .iter()
                .find(|(f, _, _)| *f == file)
                .unwrap_or_else(|| panic!("{file}: add it to VARIES"));
            let rows: Vec<_> = c
                .runs
                .iter()
                .filter(|r| r.method == experiments::eval::Method::Sdrpn)
                .map(|r| effective_settings(r, &c.runs))
                .collect();
            if values.is_empty() {
                assert_eq!(rows.len(), 1, "{file}: one SD-RPN row");
                continue;
            }
            let varied: Vec<String> = rows
                .iter()
                .map(|r| r.get(key).cloned().unwrap_or_else(|| "-".into()))
                .collect();
            assert_eq!(varied, values, "{file}: {key} across the SD-RPN rows");
            let rest = |r: &std::collections::BTreeMap<String, String>| {
                let mut r = r.clone();
                r.remove(key);
                r
            };
            for r in &rows[1..] {
                assert_eq!(rest(r), rest(&rows[0]), "{file}: only {key} may differ");
            }
        }
    }
    assert!(
        count >= 10,
        "expected the main tables, the ablations and the tiny config, found {count}"
    );
}
