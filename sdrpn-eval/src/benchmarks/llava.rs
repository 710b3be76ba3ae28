//! LLaVA-style question files: JSON lines with images in a folder.
//!
//! Each line of the questions file is an object
//! `{"question_id", "image", "text", "category"?}` (as LLaVA's
//! `model_vqa_loader` reads, and `craigwu/vstar_bench`'s
//! `test_questions.jsonl`). `text` is used verbatim as the prompt: these
//! files already carry their post-prompt (and options). `image` is a path
//! relative to the images folder. An optional `dataset` string is kept (the
//! OCRBench subset).
//!
//! Answers come from the answers file when one is given (JSON lines with the
//! same `question_id` and an `answers` list or an `answer` string), else from
//! the question line itself when it has `answers`, `answer` or `label` (V*'s
//! letter), else they are empty (prediction-only runs).
//!
//! Malformed lines are skipped, never fatal: invalid JSON, a missing or
//! non-string field, a missing image file, no answer in the answers file.
//! The index of a skipped question is its position among the non-blank
//! lines of the questions file; a bad line of the answers file is reported
//! with its own line position, its reason naming the answers file.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::{BenchmarkError, ImageSource, Loaded, Sample};

/// The non-blank lines of `path` with their 1-based line numbers.
fn read_lines(path: &Path) -> Result<Vec<(usize, String)>, BenchmarkError> {
    let text = std::fs::read_to_string(path).map_err(|cause| BenchmarkError::Io {
        path: path.to_owned(),
        cause,
    })?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| (i + 1, line.to_owned()))
        .collect())
}

/// A JSON object line.
fn parse_object(line: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("not a JSON object".to_owned()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

/// `question_id` as a string (numbers printed as JSON prints them).
fn question_id(obj: &Map<String, Value>) -> Result<String, String> {
    match obj.get("question_id") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(_) => Err("`question_id` is neither a string nor a number".to_owned()),
        None => Err("missing `question_id`".to_owned()),
    }
}

/// A required string field.
fn string(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("`{key}` is not a string")),
        None => Err(format!("missing `{key}`")),
    }
}

/// An optional string field.
fn opt_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{key}` is not a string")),
    }
}

/// The first of `keys` present: a string or a list of strings.
fn answers_field(obj: &Map<String, Value>, keys: &[&str]) -> Option<Result<Vec<String>, String>> {
    let (key, value) = keys.iter().find_map(|k| obj.get(*k).map(|v| (*k, v)))?;
    Some(match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(format!("`{key}` holds a non-string")),
            })
            .collect(),
        _ => Err(format!("`{key}` is neither a string nor a list of strings")),
    })
}

/// Load a LLaVA-style benchmark (see the module docs).
pub fn load_llava_jsonl(
    questions: &Path,
    images: &Path,
    answers: Option<&Path>,
) -> Result<Loaded, BenchmarkError> {
    let mut loaded = Loaded {
        files: vec![questions.to_owned()],
        ..Loaded::default()
    };
    let mut truth: Option<HashMap<String, Result<Vec<String>, String>>> = None;
    if let Some(path) = answers {
        let mut map = HashMap::new();
        for (index, (line_no, line)) in read_lines(path)?.into_iter().enumerate() {
            let entry = parse_object(&line).and_then(|obj| {
                let answers = answers_field(&obj, &["answers", "answer"])
                    .unwrap_or_else(|| Err("no `answers` or `answer`".to_owned()));
                Ok((question_id(&obj)?, answers))
            });
            match entry {
                Ok((id, answers)) => {
                    map.insert(id, answers);
                }
                Err(reason) => loaded.skipped.push((
                    index,
                    format!("{} line {line_no}: {reason}", path.display()),
                )),
            }
        }
        loaded.files.push(path.to_owned());
        truth = Some(map);
    }
    for (index, (line_no, line)) in read_lines(questions)?.into_iter().enumerate() {
        let sample = parse_object(&line).and_then(|obj| {
            let id = question_id(&obj)?;
            let prompt = string(&obj, "text")?;
            let image = images.join(string(&obj, "image")?);
            if !image.is_file() {
                return Err(format!("image file {} not found", image.display()));
            }
            let answers = match (&truth, answers) {
                (Some(map), Some(path)) => match map.get(&id) {
                    Some(found) => found.clone()?,
                    None => {
                        return Err(format!(
                            "no answer for question_id {id} in {}",
                            path.display()
                        ))
                    }
                },
                _ => answers_field(&obj, &["answers", "answer", "label"])
                    .unwrap_or(Ok(Vec::new()))?,
            };
            Ok(Sample {
                id,
                image: ImageSource::File(image),
                prompt,
                answers,
                category: opt_string(&obj, "category")?,
                dataset: opt_string(&obj, "dataset")?,
            })
        });
        match sample {
            Ok(sample) => loaded.samples.push(sample),
            Err(reason) => loaded.skipped.push((
                index,
                format!("{} line {line_no}: {reason}", questions.display()),
            )),
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::benchmarks::decode_image;
    use crate::benchmarks::testutil::{png_bytes, TempDir};

    fn setup(dir: &TempDir, questions: &str) -> std::path::PathBuf {
        let images = dir.path().join("images");
        std::fs::create_dir_all(images.join("direct_attributes")).unwrap();
        std::fs::write(
            images.join("direct_attributes/sa_4690.jpg"),
            png_bytes(2, 2, [1, 2, 3]),
        )
        .unwrap();
        std::fs::write(images.join("a.png"), png_bytes(2, 2, [9, 9, 9])).unwrap();
        std::fs::write(dir.path().join("questions.jsonl"), questions).unwrap();
        images
    }

    #[test]
    fn vstar_style_file_with_inline_labels() {
        let dir = TempDir::new("llava");
        let questions = concat!(
            r#"{"image": "direct_attributes/sa_4690.jpg", "text": "What is the material of the glove?\n(A) rubber\n(B) cotton\nAnswer with the option's letter from the given choices directly.", "category": "direct_attributes", "question_id": 0, "label": "A"}"#,
            "\n\n",
            r#"{"image": "missing.jpg", "text": "Q", "question_id": 1, "label": "B"}"#,
            "\n",
            "not json\n",
            r#"{"image": "a.png", "question_id": "q3"}"#,
            "\n",
            r#"{"image": "a.png", "text": "Q?", "question_id": "q4"}"#,
            "\n",
        );
        let images = setup(&dir, questions);
        let loaded = load_llava_jsonl(&dir.path().join("questions.jsonl"), &images, None).unwrap();
        assert_eq!(loaded.samples.len(), 2);
        let first = &loaded.samples[0];
        assert_eq!(first.id, "0");
        assert_eq!(
            first.prompt,
            "What is the material of the glove?\n(A) rubber\n(B) cotton\nAnswer with the option's letter from the given choices directly."
        );
        assert_eq!(first.answers, ["A"]);
        assert_eq!(first.category.as_deref(), Some("direct_attributes"));
        assert_eq!(
            decode_image(&first.image).unwrap().get_pixel(0, 0).0,
            [1, 2, 3]
        );
        // No answer anywhere: empty, for prediction-only runs.
        assert_eq!(loaded.samples[1].id, "q4");
        assert!(loaded.samples[1].answers.is_empty());

        let skipped: Vec<(usize, &str)> = loaded
            .skipped
            .iter()
            .map(|(i, r)| (*i, r.as_str()))
            .collect();
        let want: &[(usize, &str)] = &[
            (1, "line 3: image file"),
            (2, "line 4: invalid JSON"),
            (3, "line 5: missing `text`"),
        ];
        assert_eq!(skipped.len(), want.len(), "{skipped:?}");
        for ((i, reason), (wi, fragment)) in skipped.iter().zip(want) {
            assert_eq!(i, wi, "{reason}");
            assert!(reason.contains(fragment), "{reason}");
            assert!(reason.contains("questions.jsonl"), "{reason}");
        }
    }

    #[test]
    fn answers_file_by_question_id() {
        let dir = TempDir::new("llava");
        let questions = concat!(
            r#"{"question_id": 34602, "image": "a.png", "text": "What is the brand?\nAnswer the question using a single word or phrase.", "category": "default"}"#,
            "\n",
            r#"{"question_id": 34603, "image": "a.png", "text": "Q2"}"#,
            "\n",
            r#"{"question_id": 34604, "image": "a.png", "text": "Q3"}"#,
            "\n",
            r#"{"question_id": 34605, "image": "a.png", "text": "Q4", "dataset": "HME100k"}"#,
            "\n",
        );
        let images = setup(&dir, questions);
        let answers = dir.path().join("answers.jsonl");
        std::fs::write(
            &answers,
            concat!(
                r#"{"question_id": 34602, "answers": ["nous", "nous", "dakota"]}"#,
                "\n",
                r#"{"question_id": 34604, "answers": [1]}"#,
                "\n",
                r#"{"question_id": 34605, "answer": "x^2"}"#,
                "\n",
                "{broken\n",
            ),
        )
        .unwrap();
        let loaded =
            load_llava_jsonl(&dir.path().join("questions.jsonl"), &images, Some(&answers)).unwrap();
        let ids: Vec<&str> = loaded.samples.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["34602", "34605"]);
        assert_eq!(loaded.samples[0].answers, ["nous", "nous", "dakota"]);
        assert_eq!(
            loaded.samples[0].prompt,
            "What is the brand?\nAnswer the question using a single word or phrase."
        );
        assert_eq!(loaded.samples[1].answers, ["x^2"]);
        assert_eq!(loaded.samples[1].dataset.as_deref(), Some("HME100k"));
        let reasons: Vec<&str> = loaded.skipped.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(
            reasons[0].contains("answers.jsonl line 4: invalid JSON"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].contains("no answer for question_id 34603"),
            "{reasons:?}"
        );
        assert!(
            reasons[2].contains("`answers` holds a non-string"),
            "{reasons:?}"
        );
        assert_eq!(loaded.files.len(), 2);
    }

    #[test]
    fn missing_questions_file_is_an_error() {
        let dir = TempDir::new("llava");
        let err = load_llava_jsonl(&dir.path().join("nope.jsonl"), dir.path(), None).unwrap_err();
        assert!(matches!(err, BenchmarkError::Io { .. }), "{err}");
        assert!(err.to_string().contains("nope.jsonl"), "{err}");
    }
}
