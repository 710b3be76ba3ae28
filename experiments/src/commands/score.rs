//! `sdrpn score`: score a jsonl file of predictions with one metric.

use anyhow::{bail, Context};
use clap::Args;
use sdrpn_eval::scorers::{aggregate, Metric, SampleRecord};
use serde::Deserialize;
use std::io::BufRead;
use std::path::PathBuf;

/// Arguments of `sdrpn score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// vqa | anls | relaxed | ocrbench | vstar | pope
    #[arg(long)]
    metric: Metric,
    /// JSON lines `{"prediction": str, "answers": [str, ...]}` (optional
    /// `"dataset"` for OCRBench, `"category"` for a breakdown).
    #[arg(long)]
    input: PathBuf,
    /// Print each sample's score (one per line) before the mean.
    #[arg(long)]
    per_sample: bool,
}

#[derive(Debug, Deserialize)]
struct Line {
    prediction: String,
    answers: Vec<String>,
    #[serde(default)]
    dataset: Option<String>,
    #[serde(default)]
    category: Option<String>,
}

pub fn run(args: ScoreArgs) -> anyhow::Result<()> {
    let file = std::fs::File::open(&args.input)
        .with_context(|| format!("cannot open {}", args.input.display()))?;
    let mut records = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line =
            line.with_context(|| format!("{}: cannot read line {}", args.input.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line).with_context(|| {
            format!(
                "{} line {}: expected {{\"prediction\": str, \"answers\": [str, ...]}}",
                args.input.display(),
                i + 1
            )
        })?;
        records.push(SampleRecord {
            prediction: l.prediction,
            answers: l.answers,
            dataset: l.dataset,
            category: l.category,
        });
    }
    if records.is_empty() {
        bail!("{} holds no predictions", args.input.display());
    }
    if args.per_sample {
        for r in &records {
            println!("{}", r.score(args.metric));
        }
    }
    let summary = aggregate(args.metric, &records);
    println!("{summary}");
    println!("{:.2}", summary.headline);
    Ok(())
}
