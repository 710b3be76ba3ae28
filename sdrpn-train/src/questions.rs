//! LLaVA-style question files: JSON lines `{"question_id", "image", "text"}`
//! (plus optional `"category"`), images under an image folder.

use crate::error::{Result, TrainError};
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::Path;

/// One question about one image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    /// The id, as text (files use numbers or strings).
    pub question_id: String,
    /// Image path relative to the image folder.
    pub image: String,
    /// The question.
    pub text: String,
    /// Optional category (benchmarks break scores down by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// A line that could not be read, with its 1-based number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    /// Line number.
    pub line: usize,
    /// Why.
    pub reason: String,
}

#[derive(Deserialize)]
struct RawQuestion {
    question_id: serde_json::Value,
    image: String,
    text: String,
    #[serde(default)]
    category: Option<String>,
}

/// Reads a question file; malformed lines are returned, not fatal.
pub fn read_questions(path: &Path) -> Result<(Vec<Question>, Vec<BadLine>)> {
    let file = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut questions = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| TrainError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<RawQuestion>(&line) {
            Ok(r) => {
                let question_id = match r.question_id {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Number(n) => n.to_string(),
                    other => {
                        bad.push(BadLine {
                            line: i + 1,
                            reason: format!("question_id {other} is neither a number nor a string"),
                        });
                        continue;
                    }
                };
                questions.push(Question {
                    question_id,
                    image: r.image,
                    text: r.text,
                    category: r.category,
                });
            }
            Err(e) => bad.push(BadLine {
                line: i + 1,
                reason: format!("expected {{\"question_id\", \"image\", \"text\"}}: {e}"),
            }),
        }
    }
    if questions.is_empty() && bad.is_empty() {
        return Err(TrainError::format(path, "holds no questions"));
    }
    check_unique_ids(path, &questions)?;
    Ok((questions, bad))
}

/// Refuses question ids that occur more than once (labels, answers and
/// resumes are keyed by them; `1` and `"1"` are the same id), listing them.
fn check_unique_ids(path: &Path, questions: &[Question]) -> Result<()> {
    let mut seen: std::collections::BTreeMap<&str, usize> = Default::default();
    for q in questions {
        *seen.entry(&q.question_id).or_default() += 1;
    }
    let repeated: Vec<String> = seen
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(id, n)| format!("{id:?} ({n} times)"))
        .collect();
    if repeated.is_empty() {
        return Ok(());
    }
    Err(TrainError::format(
        path,
        format!(
            "question_id must be unique, but {} repeat: {}",
            repeated.len(),
            repeated.join(", ")
        ),
    ))
}

/// A worker's part of the work: `i/N` takes every item whose index is `i` modulo `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    /// This worker, `0..count`.
    pub index: usize,
    /// Number of workers.
    pub count: usize,
}

impl Default for ShardSpec {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl std::str::FromStr for ShardSpec {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || TrainError::config("shard", format!("{s:?} is not i/N with 0 <= i < N"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl std::fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl ShardSpec {
    /// Whether item `i` belongs to this worker.
    pub fn owns(&self, i: usize) -> bool {
        i % self.count == self.index
    }

    /// A file-name tag, e.g. `w0of4`.
    pub fn tag(&self) -> String {
        format!("w{}of{}", self.index, self.count)
    }

    /// Refuses `--force` in a worker of several: it discards the whole
    /// folder's earlier work, which the other workers share.
    pub fn refuse_force(&self, force: bool) -> Result<()> {
        if force && self.count > 1 {
            return Err(TrainError::config(
                "--force",
                format!(
                    "--force discards the whole folder's earlier work, which the other workers of --shard {self} share: run it once without --shard, or use a new --out folder"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ids_of_both_kinds_and_reports_bad_lines() {
        let dir = std::env::temp_dir().join(format!("sdrpn-questions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("q.jsonl");
        std::fs::write(
            &path,
            "{\"question_id\": 7, \"image\": \"a.png\", \"text\": \"What?\"}\n\nnot json\n{\"question_id\": \"x1\", \"image\": \"b.png\", \"text\": \"Why?\", \"category\": \"c\"}\n{\"question_id\": [1], \"image\": \"b.png\", \"text\": \"Why?\"}\n",
        )
        .unwrap();
        let (q, bad) = read_questions(&path).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].question_id, "7");
        assert_eq!(q[1].category.as_deref(), Some("c"));
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![3, 5]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn repeated_question_ids_are_an_error_that_lists_them() {
        let dir = std::env::temp_dir().join(format!("sdrpn-dup-ids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("q.jsonl");
        // 1 and "1" are one id; "2" is unique.
        std::fs::write(
            &path,
            "{\"question_id\": 1, \"image\": \"a.png\", \"text\": \"A?\"}\n{\"question_id\": 1, \"image\": \"b.png\", \"text\": \"B?\"}\n{\"question_id\": \"1\", \"image\": \"c.png\", \"text\": \"C?\"}\n{\"question_id\": \"2\", \"image\": \"c.png\", \"text\": \"D?\"}\n",
        )
        .unwrap();
        let e = read_questions(&path).unwrap_err().to_string();
        assert!(
            e.contains("question_id must be unique") && e.contains("\"1\" (3 times)"),
            "{e}"
        );
        assert!(!e.contains("\"2\""), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn shard_specs_parse_and_partition() {
        let s: ShardSpec = "1/3".parse().unwrap();
        assert_eq!(
            (0..7).filter(|&i| s.owns(i)).collect::<Vec<_>>(),
            vec![1, 4]
        );
        for bad in ["3/3", "1", "a/2", "0/0"] {
            assert!(bad.parse::<ShardSpec>().is_err(), "{bad}");
        }
    }
}
