//! What an eval folder's answers were made from (`provenance.json`): the
//! benchmark and its samples, the method and its settings, the model and
//! the RPN. `sdrpn eval` refuses to add answers to a folder made from other
//! inputs; the experiment runner clears such a folder and redoes it.

use crate::eval::{EvalSpec, Method};
use sdrpn_eval::benchmarks::Sample;
use sdrpn_llava::fingerprint::{Fnv64, ModelFingerprint};
use sdrpn_train::provenance;
use sdrpn_train::SdrpnConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The inputs of an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalProvenance {
    /// The program that wrote it.
    pub program: String,
    /// Benchmark name.
    pub benchmark: String,
    /// Baseline or SD-RPN.
    pub method: Method,
    /// RoI threshold override.
    pub threshold: Option<f64>,
    /// Answer length override.
    pub max_new_tokens: Option<usize>,
    /// The host model.
    pub model: ModelFingerprint,
    /// Hash of the RoI source: the RPN's weights and inference settings
    /// (SD-RPN), ViCrop's layer and crop rule (ViCrop); none for the
    /// baseline.
    pub rpn: Option<String>,
    /// Hash of the samples' ids, prompts and answers.
    pub data: String,
}

impl EvalProvenance {
    /// The provenance of evaluating `samples` by `spec` with `model` and,
    /// for SD-RPN, the RPN whose weights hash to `rpn_weights` used with
    /// `rpn_config`.
    pub fn new(
        spec: &EvalSpec,
        model: &ModelFingerprint,
        rpn_config: Option<&SdrpnConfig>,
        samples: &[Sample],
    ) -> Self {
        let hash = |first: &[u8], settings: String| {
            let mut h = Fnv64::default();
            h.update(first);
            h.update(settings.as_bytes());
            h.hex()
        };
        let rpn = match (spec.method, rpn_config) {
            (Method::VicropRel | Method::VicropGrad, _) => Some(hash(
                format!("{}\0", spec.method.name()).as_bytes(),
                serde_json::to_string(&spec.vicrop).unwrap_or_default(),
            )),
            (_, Some(c)) => Some(hash(
                spec.rpn_weights.as_deref().unwrap_or("").as_bytes(),
                serde_json::to_string(&c.inference).unwrap_or_default(),
            )),
            (_, None) => None,
        };
        let mut data = Fnv64::default();
        for s in samples {
            for part in [&s.id, &s.prompt] {
                data.update(part.as_bytes());
                data.update(&[0]);
            }
            for a in &s.answers {
                data.update(a.as_bytes());
                data.update(&[1]);
            }
        }
        Self {
            program: provenance::program(),
            benchmark: spec.benchmark.to_string(),
            method: spec.method,
            threshold: spec.threshold,
            max_new_tokens: spec.max_new_tokens,
            model: model.clone(),
            rpn,
            data: data.hex(),
        }
    }

    /// What differs from `other`, in words.
    pub fn differences(&self, other: &Self) -> Vec<String> {
        let mut out = Vec::new();
        if self.benchmark != other.benchmark {
            out.push(format!(
                "benchmark {} vs {}",
                self.benchmark, other.benchmark
            ));
        }
        if self.method != other.method {
            out.push(format!("method {:?} vs {:?}", self.method, other.method));
        }
        if self.threshold != other.threshold || self.max_new_tokens != other.max_new_tokens {
            out.push("threshold or answer length".into());
        }
        out.extend(provenance::model_changes(&self.model, &other.model));
        if self.rpn != other.rpn {
            out.push("the RPN or ViCrop settings".into());
        }
        if self.data != other.data {
            out.push("the benchmark's samples".into());
        }
        out
    }
}

/// What changed in `dir` relative to `now` (empty when nothing, or when
/// the folder is new: then `now` is recorded).
pub fn changes(dir: &Path, now: &EvalProvenance) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    match provenance::read::<EvalProvenance>(dir)? {
        Some(before) => Ok(before.differences(now)),
        None => {
            provenance::write(dir, now)?;
            Ok(Vec::new())
        }
    }
}

/// Removes an eval folder's answers and score and records `now` (the
/// experiment runner's redo of a folder whose inputs changed).
pub fn reset(dir: &Path, now: &EvalProvenance) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if (name.starts_with("predictions-") && name.ends_with(".jsonl")) || name == "score.json" {
            std::fs::remove_file(&path)?;
        }
    }
    provenance::write(dir, now)?;
    Ok(())
}
