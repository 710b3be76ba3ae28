//! Writing a testbed split in the two formats the pipeline reads: LLaVA
//! question lines with an image folder (`label`, `train`) and the TextVQA
//! Parquet schema with the ground truth alongside (`eval`, through the real
//! loader and the VQA scorer).

use super::pretrain::prompt_text;
use super::task::Sample;
use crate::synthetic::png;
use anyhow::Context;
use sdrpn_eval::benchmarks::writer::{write_parquet, Cell, Kind};
use std::path::{Path, PathBuf};

/// Where a written split lives.
#[derive(Clone, Debug)]
pub struct SplitFiles {
    /// LLaVA question lines (`question_id`, `image`, `text`, plus `answer`,
    /// `family` and the target's `box` in source pixels).
    pub questions: PathBuf,
    /// Folder of the PNG images the question lines name.
    pub images: PathBuf,
    /// TextVQA-schema Parquet (`question_id`, `question`, `answers` x10,
    /// `image`) with `family` and `box` columns.
    pub parquet: PathBuf,
}

/// The target box as text, `x0,y0,x1,y1`.
pub fn box_text(s: &Sample) -> String {
    let b = s.target_box();
    format!("{},{},{},{}", b.x0, b.y0, b.x1, b.y1)
}

/// Writes `samples` under `dir` (created) in both formats; numeric question
/// ids follow the samples' order. Writes nothing when all files exist.
pub fn write_split(dir: &Path, samples: &[Sample]) -> anyhow::Result<SplitFiles> {
    let files = SplitFiles {
        questions: dir.join("questions.jsonl"),
        images: dir.join("images"),
        parquet: dir.join("textvqa.parquet"),
    };
    if files.questions.is_file() && files.parquet.is_file() {
        return Ok(files);
    }
    std::fs::create_dir_all(&files.images)
        .with_context(|| format!("cannot create {}", files.images.display()))?;
    let mut lines = String::new();
    let mut rows = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let bytes = png(&s.image());
        let name = format!("{}.png", s.id);
        let path = files.images.join(&name);
        std::fs::write(&path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let line = serde_json::json!({
            "question_id": i, "image": name, "text": prompt_text(&s.question),
            "answer": s.answer, "family": s.family.name(), "box": box_text(s), "id": s.id,
        });
        lines.push_str(&format!("{line}\n"));
        rows.push(vec![
            Cell::I32(i as i32),
            Cell::Str(s.question.clone()),
            Cell::List(vec![Some(s.answer.clone()); 10]),
            Cell::Image(Some(bytes), Some(name)),
            Cell::Str(s.family.name().to_string()),
            Cell::Str(box_text(s)),
        ]);
    }
    let columns = [
        ("question_id", Kind::I32),
        ("question", Kind::Str),
        ("answers", Kind::StrList),
        ("image", Kind::Image),
        ("family", Kind::Str),
        ("box", Kind::Str),
    ];
    let tmp = files.parquet.with_extension("parquet.tmp");
    write_parquet(&tmp, &columns, &rows, parquet::basic::Compression::SNAPPY)?;
    std::fs::rename(&tmp, &files.parquet)?;
    let tmp = files.questions.with_extension("jsonl.tmp");
    std::fs::write(&tmp, lines)?;
    std::fs::rename(&tmp, &files.questions)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::task::{Family, Split, TaskConfig};
    use sdrpn_eval::benchmarks::{loader::load, Benchmark};

    #[test]
    fn a_split_reads_back_through_the_textvqa_loader_with_the_eval_prompt() {
        let dir = std::env::temp_dir().join(format!("sdrpn-testbed-split-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let samples = Split::Test.samples(5, &Family::ALL, 2, &TaskConfig::default());
        let files = write_split(&dir, &samples).unwrap();
        let loaded = load(Benchmark::TextVqa, &files.parquet).unwrap();
        assert_eq!(loaded.samples.len(), 4);
        for (s, l) in samples.iter().zip(&loaded.samples) {
            assert_eq!(l.prompt, prompt_text(&s.question));
            assert_eq!(l.answers, vec![s.answer.clone(); 10]);
        }
        let first: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(&files.questions)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(first["text"], prompt_text(&samples[0].question));
        assert_eq!(first["box"], box_text(&samples[0]));
        assert!(files
            .images
            .join(first["image"].as_str().unwrap())
            .is_file());
        std::fs::remove_dir_all(&dir).ok();
    }
}
