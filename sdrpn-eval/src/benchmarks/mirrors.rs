//! The lmms-eval Parquet mirrors: which columns each benchmark reads and how
//! a row becomes a [`Sample`] (prompt, answers, id, category), following the
//! task's `doc_to_text` / `doc_to_target` and the `default` entry of its
//! `lmms_eval_specific_kwargs` (the LLaVA prompts).
//!
//! | benchmark | mirror (split) | id | prompt (after `<image>\n`) | answers | category / dataset |
//! |---|---|---|---|---|---|
//! | TextVQA | `lmms-lab/textvqa` (validation) | `question_id` (int32) | `question.capitalize()` + [`SHORT_ANSWER`] (no OCR tokens) | `answers` (list, 10) | - |
//! | DocVQA | `lmms-lab/DocVQA`, `DocVQA` (validation) | `questionId` | `question` + [`SHORT_ANSWER`] | `answers` (list) | - |
//! | InfoVQA | `lmms-lab/DocVQA`, `InfographicVQA` (validation) | `questionId` | `question` + [`SHORT_ANSWER`] | `answers` (list) | - |
//! | ChartQA | `lmms-lab/ChartQA` (test) | row index | `question` + [`SINGLE_WORD`] | `[answer]` | `type` |
//! | OCRBench | `echo840/OCRBench` (test) | row index | `question.strip()` | `answer` (list) | `question_type` / `dataset` |
//! | V* | `lmms-lab/vstar-bench` (test) | `question_id` | see [`super::vstar`] | `[label.strip().upper()]` | `category` |
//! | POPE | `lmms-lab/POPE` (test) | `question_id` | `question.strip()` + [`SHORT_ANSWER`] | `[answer.lower().strip()]` | `category` |
//! | HR-Bench 4K/8K | `DreamMr/HR-Bench` (`hr_bench_4k.parquet`, `hr_bench_8k.parquet`) | `index` | [`hrbench_prompt`] | `[answer, A, B, C, D]` | `category` / `cycle_category` |
//!
//! Every mirror stores the image as the `datasets` `Image` struct in column
//! `image`, but HR-Bench: a base64 JPEG string, decoded to bytes at load
//! (an 8K sample holds ~2-3 MB of JPEG from then on, and ~100 MB of RGB
//! only while it is answered: decoded once, shared by both passes). Sources (lmms-eval `lmms_eval/tasks/...`): `textvqa/utils.py` +
//! `_default_template_textvqa_yaml`; `docvqa/utils.py` +
//! `_default_template_docvqa_yaml`; `infovqa/utils.py` +
//! `_default_template_infovqa_yaml`; `chartqa/utils.py` + `chartqa.yaml`;
//! `ocrbench/utils.py` + `ocrbench.yaml`; `vstar_bench/utils.py` +
//! `_default_template_yaml`; `pope/utils.py` + `pope.yaml`;
//! `hrbench/utils.py` + `hrbench4k.yaml` (lmms-eval 75571cf).
//!
//! Rows are skipped (never fatal) when a field is null or of the wrong type,
//! the answer list is empty, or a POPE answer is not yes/no (the reference
//! asserts on that).

use std::path::Path;

use super::{text, vstar, Benchmark, Sample};
use crate::benchmarks::table::Record;
use crate::scorers::hrbench::option_letters;

/// The short-answer post-prompt (TextVQA, DocVQA, InfoVQA, POPE).
pub const SHORT_ANSWER: &str = "\nAnswer the question using a single word or phrase.";

/// ChartQA's post-prompt.
pub const SINGLE_WORD: &str = "\nAnswer the question with a single word.";

/// The columns a benchmark needs (missing one is an error) and those it
/// uses when present.
pub fn columns(benchmark: Benchmark) -> (&'static [&'static str], &'static [&'static str]) {
    match benchmark {
        Benchmark::TextVqa => (&["image", "question", "answers", "question_id"], &[]),
        Benchmark::DocVqa | Benchmark::InfoVqa => {
            (&["image", "question", "answers", "questionId"], &[])
        }
        Benchmark::ChartQa => (&["image", "question", "answer"], &["type"]),
        Benchmark::OcrBench => (
            &["image", "question", "answer"],
            &["question_type", "dataset"],
        ),
        Benchmark::VStar => (&["image", "text", "label"], &["question_id", "category"]),
        Benchmark::Pope => (
            &["image", "question", "answer"],
            &["question_id", "category"],
        ),
        Benchmark::HrBench4k | Benchmark::HrBench8k => (
            &["image", "question", "answer", "A", "B"],
            &["index", "C", "D", "category", "cycle_category"],
        ),
    }
}

/// HR-Bench's prompt (`hrbench_doc_to_text`, utils.py:45-53): the stripped
/// question, one `"{letter}. {text}"` line per option, then
/// "Answer the option letter directly.".
pub fn hrbench_prompt(question: &str, options: &[String]) -> String {
    let mut prompt = format!("{}\n", text::strip(question));
    for (letter, option) in option_letters(options.len()).zip(options) {
        prompt += &format!("{letter}. {option}\n");
    }
    prompt + "Answer the option letter directly."
}

/// A non-empty answer list.
fn non_empty(answers: Vec<String>, name: &str) -> Result<Vec<String>, String> {
    if answers.is_empty() {
        Err(format!("`{name}` is empty"))
    } else {
        Ok(answers)
    }
}

/// The `name` id column, or the row index when the mirror has none.
fn id_or_index(rec: &Record, name: &str, index: usize) -> Result<String, String> {
    match rec.get(name) {
        Some(_) => rec.id(name),
        None => Ok(index.to_string()),
    }
}

/// Turn one row into a sample. `index` is the row's position over all
/// files read; `base` resolves image paths.
pub(crate) fn to_sample(
    benchmark: Benchmark,
    rec: &Record,
    index: usize,
    base: &Path,
) -> Result<Sample, String> {
    let image = rec.image("image", base)?;
    let mut category = None;
    let mut dataset = None;
    let (id, prompt, answers) = match benchmark {
        Benchmark::TextVqa => (
            rec.id("question_id")?,
            text::capitalize(&rec.string("question")?) + SHORT_ANSWER,
            non_empty(rec.strings("answers")?, "answers")?,
        ),
        Benchmark::DocVqa | Benchmark::InfoVqa => (
            rec.id("questionId")?,
            rec.string("question")? + SHORT_ANSWER,
            non_empty(rec.strings("answers")?, "answers")?,
        ),
        Benchmark::ChartQa => {
            category = rec.opt_string("type")?;
            (
                index.to_string(),
                rec.string("question")? + SINGLE_WORD,
                vec![rec.string("answer")?],
            )
        }
        Benchmark::OcrBench => {
            category = rec.opt_string("question_type")?;
            dataset = rec.opt_string("dataset")?;
            (
                index.to_string(),
                text::strip(&rec.string("question")?).to_owned(),
                non_empty(rec.strings("answer")?, "answer")?,
            )
        }
        Benchmark::VStar => {
            category = rec.opt_string("category")?;
            let label = text::upper(text::strip(&rec.string("label")?));
            if label.is_empty() {
                return Err("`label` is empty".into());
            }
            (
                id_or_index(rec, "question_id", index)?,
                vstar::vstar_prompt(&rec.string("text")?),
                vec![label],
            )
        }
        Benchmark::Pope => {
            category = rec.opt_string("category")?;
            let answer = text::strip(&text::lower(&rec.string("answer")?)).to_owned();
            if answer != "yes" && answer != "no" {
                return Err(format!("`answer` is {answer:?}, not yes/no"));
            }
            (
                id_or_index(rec, "question_id", index)?,
                text::strip(&rec.string("question")?).to_owned() + SHORT_ANSWER,
                vec![answer],
            )
        }
        Benchmark::HrBench4k | Benchmark::HrBench8k => {
            category = rec.opt_string("category")?;
            dataset = rec.opt_string("cycle_category")?;
            // Options A.. in order, a null one dropped (utils.py:40-42).
            let mut options = Vec::new();
            for letter in ["A", "B", "C", "D"] {
                if let Some(option) = rec.opt_string(letter)? {
                    options.push(option);
                }
            }
            let answer = rec.string("answer")?;
            if !option_letters(options.len()).any(|l| l == answer) {
                return Err(format!(
                    "`answer` is {answer:?}, not one of the {} option letters",
                    options.len()
                ));
            }
            (
                id_or_index(rec, "index", index)?,
                hrbench_prompt(&rec.string("question")?, &options),
                std::iter::once(answer).chain(options).collect(),
            )
        }
    };
    Ok(Sample {
        id,
        image,
        prompt,
        answers,
        category,
        dataset,
    })
}
