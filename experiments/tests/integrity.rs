//! Output integrity through the command line: one writer per folder (a
//! second process is refused at once, naming the holder), and bad inputs
//! refused before any work.

use sdrpn_train::lock::FolderLock;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sdrpn-llava/tests/fixtures")
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sdrpn-integrity-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn questions(dir: &Path, lines: &str) -> PathBuf {
    let path = dir.join("questions.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

fn label(questions: &Path, out: &Path, extra: &[&str]) -> Output {
    label_with(&fixtures().join("tiny-llava"), questions, out, extra)
}

fn label_with(model: &Path, questions: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .arg("label")
        .arg("--model")
        .arg(model)
        .arg("--questions")
        .arg(questions)
        .arg("--images")
        .arg(fixtures().join("images"))
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

const TWO: &str = "{\"question_id\": 1, \"image\": \"wide.png\", \"text\": \"What is it?\"}\n{\"question_id\": 2, \"image\": \"tall.png\", \"text\": \"Where?\"}\n";

#[test]
fn a_second_writer_on_a_label_folder_is_refused_naming_the_holder() {
    let dir = scratch("lock");
    let q = questions(&dir, TWO);
    let out = dir.join("labels");
    // This process holds worker 0/1's lock, as a running `sdrpn label` would.
    let held = FolderLock::acquire(&out, Some("w0of1"), "sdrpn label").unwrap();
    let second = label(&q, &out, &[]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains("is being written by another process")
            && stderr.contains(&format!("pid {}", std::process::id())),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Another worker of the same job has its own lock: no contention.
    let other = label(&q, &out, &["--shard", "1/2"]);
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    // Once the holder is gone, the folder is free again.
    drop(held);
    let after = label(&q, &out, &[]);
    assert!(
        after.status.success(),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn repeated_question_ids_stop_labelling_before_any_work() {
    let dir = scratch("dup");
    let q = questions(
        &dir,
        &format!("{TWO}{{\"question_id\": \"1\", \"image\": \"big.png\", \"text\": \"Again?\"}}\n"),
    );
    let out = dir.join("labels");
    let run = label(&q, &out, &[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr.contains("question_id must be unique") && stderr.contains("\"1\" (2 times)"),
        "{stderr}"
    );
    assert!(
        !out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(),
        "nothing was written"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_label_folder_is_not_resumed_with_another_model() {
    let dir = scratch("labels-model");
    let q = questions(&dir, TWO);
    let out = dir.join("labels");
    let first = label(&q, &out, &["--limit", "1"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let f16 = fixtures().join("tiny-llava-f16");
    let other = label_with(&f16, &q, &out, &[]);
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success(), "{stderr}");
    assert!(
        stderr.contains("holds labels made from other inputs")
            && stderr.contains("model: the weights differ")
            && stderr.contains("new --out folder")
            && stderr.contains("add --force"),
        "{stderr}"
    );
    // --force in one worker of several is refused: the folder is shared.
    let shard = label_with(&f16, &q, &out, &["--force", "--shard", "0/2"]);
    let stderr = String::from_utf8_lossy(&shard.stderr);
    assert!(
        !shard.status.success() && stderr.contains("run it once without --shard"),
        "{stderr}"
    );
    // --force discards the first model's label and labels afresh.
    let forced = label_with(&f16, &q, &out, &["--force"]);
    let stderr = String::from_utf8_lossy(&forced.stderr);
    assert!(forced.status.success(), "{stderr}");
    assert!(stderr.contains("it is labelled afresh"), "{stderr}");
    let stdout = String::from_utf8_lossy(&forced.stdout);
    assert!(
        stdout.contains("2 labelled") && stdout.contains("0 done before"),
        "{stdout}"
    );
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("provenance.json")).unwrap())
            .unwrap();
    let f16_weights = sdrpn_llava::fingerprint::model_fingerprint(&f16, "6x6")
        .unwrap()
        .weights;
    assert_eq!(p["model"]["weights"], f16_weights.as_str());
    // ... and a resume with it now continues without --force.
    assert!(label_with(&f16, &q, &out, &[]).status.success());
    std::fs::remove_dir_all(dir).ok();
}

fn eval(benchmark: &str, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .args(["eval", "--benchmark", benchmark, "--data", "synthetic:3"])
        .arg("--model")
        .arg(fixtures().join("tiny-llava"))
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn an_eval_folder_does_not_take_answers_to_another_benchmark() {
    let dir = scratch("eval-bench");
    let out = dir.join("eval");
    let first = eval("textvqa", &out, &[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let score = std::fs::read_to_string(out.join("score.json")).unwrap();
    let second = eval("pope", &out, &[]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains("holds answers made from other inputs")
            && stderr.contains("benchmark textvqa vs pope"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("score.json")).unwrap(),
        score,
        "the textvqa score is left as it was"
    );
    // The same evaluation again resumes (nothing to do) and succeeds.
    assert!(eval("textvqa", &out, &[]).status.success());
    // --force discards the textvqa answers and evaluates POPE there.
    let forced = eval("pope", &out, &["--force"]);
    let stderr = String::from_utf8_lossy(&forced.stderr);
    assert!(forced.status.success(), "{stderr}");
    assert!(stderr.contains("its answers are redone"), "{stderr}");
    let score: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("score.json")).unwrap()).unwrap();
    assert_eq!(score["benchmark"], "pope", "{score}");
    assert_eq!(score["samples"], 3, "{score}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_experiment_rerun_with_other_training_settings_retrains_and_redoes_the_answers() {
    use experiments::experiment::{run_experiment, ExperimentConfig};
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml");
    let mut config = ExperimentConfig::load(&path).unwrap();
    config.benchmarks.retain(|name, _| name == "vstar");
    let out = scratch("experiment-rerun");
    type B = sdrpn_core::backend::CpuBackend;
    let run = |config: &ExperimentConfig| {
        let mut lines = Vec::new();
        run_experiment::<B>(config, &out, &Default::default(), &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap();
        lines
    };
    let rpn_of_answers = || {
        let p: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("sd-rpn/vstar/provenance.json")).unwrap(),
        )
        .unwrap();
        p["rpn"].as_str().unwrap().to_string()
    };
    run(&config);
    let before = rpn_of_answers();
    // The experiment folder records every cell's inputs next to the table.
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("provenance.json")).unwrap())
            .unwrap();
    assert_eq!(table["cells"]["+ SD-RPN / vstar"]["rpn"], before.as_str());
    assert_eq!(
        table["cells"]["LLaVA-1.5 (baseline) / vstar"]["method"],
        "baseline"
    );
    assert!(table["model"]["weights"].is_string(), "{table}");
    let same = run(&config);
    assert!(
        same.iter().any(|l| l.contains("already trained")),
        "{same:?}"
    );
    assert_eq!(rpn_of_answers(), before, "nothing changed, nothing redone");
    let sdrpn = config
        .runs
        .iter_mut()
        .find(|r| r.name == "+ SD-RPN")
        .unwrap();
    sdrpn.train.as_mut().unwrap().lr = Some(0.004);
    let changed = run(&config);
    assert!(
        changed.iter().any(|l| l.contains("changed since")),
        "{changed:?}"
    );
    assert_ne!(
        rpn_of_answers(),
        before,
        "the answers come from the new RPN"
    );
    let answers =
        std::fs::read_to_string(out.join("sd-rpn/vstar/predictions-w0of1.jsonl")).unwrap();
    assert_eq!(answers.lines().count(), 6, "the old RPN's answers are gone");
    // Fewer questions to label: the labels of the dropped ones are left
    // out of training (not mixed in), so the RPN is trained again.
    config.labels.as_mut().unwrap().limit = Some(8);
    let fewer = run(&config);
    assert!(
        fewer
            .iter()
            .any(|l| l.contains("4 labelled samples") && l.contains("left out")),
        "{fewer:?}"
    );
    assert!(
        fewer.iter().any(|l| l.contains("changed since")),
        "{fewer:?}"
    );
    std::fs::remove_dir_all(&out).ok();
}

/// `sdrpn train` of one tiny epoch with `model` on `labels` into `out`.
fn train_tiny(model: &Path, labels: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .args([
            "train",
            "--preset",
            "tiny",
            "--epochs",
            "1",
            "--holdout",
            "1",
        ])
        .arg("--model")
        .arg(model)
        .arg("--labels")
        .arg(labels)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn training_refuses_labels_made_with_another_model() {
    let dir = scratch("train-labels");
    let q = questions(&dir, TWO);
    let labels = dir.join("labels");
    assert!(label(&q, &labels, &[]).status.success());
    let train = |extra: &[&str]| {
        train_tiny(
            &fixtures().join("tiny-llava-f16"),
            &labels,
            &dir.join("run"),
            extra,
        )
    };
    let run = train(&[]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr.contains("were made with another model (") && stderr.contains("the weights differ"),
        "{stderr}"
    );
    assert!(!dir.join("run/rpn.safetensors").exists());
    // --force trains on them anyway (same grid), with a warning.
    let forced = train(&["--force"]);
    let stderr = String::from_utf8_lossy(&forced.stderr);
    assert!(forced.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: --force: using labels made with another model"),
        "{stderr}"
    );
    assert!(dir.join("run/rpn.safetensors").is_file());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn config_prints_a_preset_that_reads_back() {
    let out = Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .args(["config", "--preset", "tiny"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let read: sdrpn_train::SdrpnConfig = toml::from_str(&text).unwrap();
    assert_eq!(read, sdrpn_train::SdrpnConfig::tiny());
    let bad = Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .args(["config", "--preset", "llava-9b"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("available: llava-1.5-7b"),
        "{stderr}"
    );
}

#[test]
fn a_closed_pipe_ends_the_program_without_a_panic() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .args(["config", "--preset", "tiny"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // `| head -0`: the reader is gone
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn published_numbers_must_name_a_run_and_a_benchmark() {
    let dir = scratch("published");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[published.\"+ SD-RPN\"]", "[published.\"+ SD-RPN v2\"]");
    let copy = path
        .parent()
        .unwrap()
        .join(format!(".tmp-published-{}.toml", std::process::id()));
    std::fs::write(&copy, text).unwrap();
    let e = experiments::experiment::ExperimentConfig::load(&copy)
        .unwrap_err()
        .to_string();
    std::fs::remove_file(&copy).ok();
    assert!(
        e.contains("[published.\"+ SD-RPN v2\"] names no run"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn training_again_over_checkpoints_needs_resume() {
    let dir = scratch("train-again");
    let q = questions(&dir, TWO);
    let labels = dir.join("labels");
    assert!(label(&q, &labels, &[]).status.success());
    let train = |extra: &[&str]| {
        train_tiny(
            &fixtures().join("tiny-llava"),
            &labels,
            &dir.join("run"),
            extra,
        )
    };
    let first = train(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let again = train(&[]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "{stderr}");
    assert!(
        stderr.contains("add --resume to continue it")
            && stderr.contains("--force to start it over"),
        "{stderr}"
    );
    let forced = train(&["--force"]);
    let stderr = String::from_utf8_lossy(&forced.stderr);
    assert!(forced.status.success(), "{stderr}");
    assert!(
        stderr.contains("checkpoints (up to epoch 1) are discarded and the run starts over"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&forced.stdout).contains("epochs 1..1 of 1"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_unwritable_heatmap_path_is_refused_before_any_work() {
    let dir = scratch("heatmap");
    let infer = |heatmap: &Path| {
        Command::new(env!("CARGO_BIN_EXE_sdrpn"))
            .args(["infer", "--question", "What is it?"])
            .arg("--model")
            .arg(fixtures().join("tiny-llava"))
            // No run folder at all: the heatmap path is checked first.
            .arg("--rpn")
            .arg(dir.join("no-run"))
            .arg("--image")
            .arg(fixtures().join("images/wide.png"))
            .arg("--heatmap")
            .arg(heatmap)
            .output()
            .unwrap()
    };
    for (path, says) in [
        (dir.join("missing/roi.png"), "does not exist"),
        (dir.join("roi.txt"), "names no image format"),
        (dir.clone(), "is a folder"),
    ] {
        let out = infer(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("--heatmap") && stderr.contains(says),
            "{path:?}: {stderr}"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_killed_writer_blocks_no_one_and_its_finished_work_is_kept() {
    let dir = scratch("kill");
    let many: String = (0..5000)
        .map(|i| {
            format!(
                "{{\"question_id\": {i}, \"image\": \"wide.png\", \"text\": \"What is it?\"}}\n"
            )
        })
        .collect();
    let q = questions(&dir, &many);
    let out = dir.join("labels");
    let mut first = Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .arg("label")
        .arg("--model")
        .arg(fixtures().join("tiny-llava"))
        .arg("--questions")
        .arg(&q)
        .arg("--images")
        .arg(fixtures().join("images"))
        .arg("--out")
        .arg(&out)
        .args(["--shard-size", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it has stored two samples (one shard file each).
    let shards = || {
        std::fs::read_dir(&out).map_or(0, |d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
            })
            .count()
        })
    };
    let start = std::time::Instant::now();
    while shards() < 2 {
        assert!(
            start.elapsed().as_secs() < 120,
            "the first writer stored nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A second process on the folder is refused, naming the first.
    let second = label(&q, &out, &["--limit", "2"]);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {} command sdrpn label", first.id())),
        "{stderr}"
    );
    // kill -9: no clean release, the lock file still names the writer.
    first.kill().unwrap();
    first.wait().unwrap();
    let after = label(&q, &out, &["--limit", "2"]);
    let stderr = String::from_utf8_lossy(&after.stderr);
    assert!(after.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the previous writer (pid {} command sdrpn label",
            first.id()
        )) && stderr.contains("did not finish cleanly"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&after.stdout);
    assert!(
        stdout.contains("0 labelled") && stdout.contains("2 done before"),
        "the killed writer's stored samples are kept: {stdout}"
    );
    std::fs::remove_dir_all(dir).ok();
}

fn released(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sdrpn-train/tests/fixtures/released")
        .join(name)
}

fn sdrpn_ok(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// The authors' released artifacts in their layouts (fixtures of
/// `scripts/make_released_fixtures.py`): a label pickle imported and
/// trained on unchanged, a merged RPN checkpoint imported and answered with.
#[test]
fn released_labels_train_and_a_released_rpn_answers() {
    let dir = scratch("released");
    let labels = dir.join("labels");
    let pickle = released("labels-7b-style.pkl");
    let printed = sdrpn_ok(&[
        "import-labels".as_ref(),
        pickle.as_os_str(),
        "--out".as_ref(),
        labels.as_os_str(),
        "--preset".as_ref(),
        "tiny".as_ref(),
        "--images".as_ref(),
        fixtures().as_os_str(),
    ]);
    assert!(
        printed.contains("8 imported") && printed.contains("7 skipped"),
        "{printed}"
    );
    let trained = train_tiny(
        &fixtures().join("tiny-llava"),
        &labels,
        &dir.join("run"),
        &[],
    );
    assert!(
        trained.status.success(),
        "{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    // No preset and a file name that names no model: refused by name.
    let renamed = dir.join("labels.pkl");
    std::fs::copy(&pickle, &renamed).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .arg("import-labels")
        .arg(&renamed)
        .arg("--out")
        .arg(dir.join("l2"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--preset"),
        "{stderr}"
    );

    let run = dir.join("imported-rpn");
    let checkpoint = released("rpn-llava-7b-style");
    let printed = sdrpn_ok(&[
        "import-rpn".as_ref(),
        checkpoint.as_os_str(),
        "--out".as_ref(),
        run.as_os_str(),
    ]);
    assert!(
        printed.contains("Llava") && printed.contains("K 2, T 2"),
        "{printed}"
    );
    let printed = sdrpn_ok(&[
        "infer".as_ref(),
        "--model".as_ref(),
        fixtures().join("tiny-llava").as_os_str(),
        "--rpn".as_ref(),
        run.as_os_str(),
        "--image".as_ref(),
        fixtures().join("images/wide.png").as_os_str(),
        "--question".as_ref(),
        "What is in the picture?".as_ref(),
        "--json".as_ref(),
    ]);
    let json: serde_json::Value = serde_json::from_str(&printed).unwrap();
    let map = json["roi_map"].as_array().unwrap();
    assert_eq!((map.len(), map[0].as_array().unwrap().len()), (6, 6));
    assert!(json["answer"].is_string());
    std::fs::remove_dir_all(dir).ok();
}
