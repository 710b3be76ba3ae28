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
    Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .arg("label")
        .arg("--model")
        .arg(fixtures().join("tiny-llava"))
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
    let other = Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .arg("label")
        .arg("--model")
        .arg(fixtures().join("tiny-llava-f16"))
        .arg("--questions")
        .arg(&q)
        .arg("--images")
        .arg(fixtures().join("images"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success(), "{stderr}");
    assert!(
        stderr.contains("holds labels made from other inputs")
            && stderr.contains("model: the weights differ")
            && stderr.contains("new --out folder"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
}

fn eval(benchmark: &str, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .args(["eval", "--benchmark", benchmark, "--data", "synthetic:3"])
        .arg("--model")
        .arg(fixtures().join("tiny-llava"))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn an_eval_folder_does_not_take_answers_to_another_benchmark() {
    let dir = scratch("eval-bench");
    let out = dir.join("eval");
    let first = eval("textvqa", &out);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let score = std::fs::read_to_string(out.join("score.json")).unwrap();
    let second = eval("pope", &out);
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
    assert!(eval("textvqa", &out).status.success());
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
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn training_refuses_labels_made_with_another_model() {
    let dir = scratch("train-labels");
    let q = questions(&dir, TWO);
    let labels = dir.join("labels");
    assert!(label(&q, &labels, &[]).status.success());
    let run = Command::new(env!("CARGO_BIN_EXE_sdrpn"))
        .args(["train", "--preset", "tiny", "--epochs", "1"])
        .arg("--model")
        .arg(fixtures().join("tiny-llava-f16"))
        .arg("--labels")
        .arg(&labels)
        .arg("--out")
        .arg(dir.join("run"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(
        stderr.contains("were made with another model (") && stderr.contains("the weights differ"),
        "{stderr}"
    );
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
    let train = || {
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
            .arg(fixtures().join("tiny-llava"))
            .arg("--labels")
            .arg(&labels)
            .arg("--out")
            .arg(dir.join("run"))
            .output()
            .unwrap()
    };
    let first = train();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let again = train();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "{stderr}");
    assert!(stderr.contains("add --resume to continue it"), "{stderr}");
    std::fs::remove_dir_all(dir).ok();
}
