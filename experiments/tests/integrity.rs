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
