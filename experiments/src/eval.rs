//! Benchmark evaluation: answer every sample (baseline or SD-RPN), append
//! predictions to a jsonl file as they come (a rerun continues where the last
//! one stopped), then score them and measure throughput.

use crate::eval_provenance::{changes, reset, EvalProvenance};
use anyhow::Context;
use burn::tensor::backend::Backend;
use sdrpn_core::host::AnswerOptions;
use sdrpn_eval::benchmarks::{decode_image, Benchmark, Sample};
use sdrpn_eval::scorers::{aggregate, SampleRecord, Summary};
use sdrpn_llava::host::LlamaRpn;
use sdrpn_train::questions::ShardSpec;
use sdrpn_train::two_pass::TwoPass;
use sdrpn_train::two_pass::{TwoPassOptions, TwoPassOutput, ViCropMap, ViCropRule};
use sdrpn_train::two_pass_batch::{answer_baseline_batch, answer_batch_with_roi};
use sdrpn_train::SdrpnConfig;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How samples are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Plain LLaVA: one pass over the global image.
    Baseline,
    /// SD-RPN: RoI from the RPN, then the crop appended.
    Sdrpn,
    /// ViCrop (rel-att): RoI from the ratio of the question's and a generic
    /// question's attention to the image at one layer, ViCrop's square crop
    /// around its peak, the crop appended (no training).
    #[serde(rename = "vicrop-rel")]
    #[value(name = "vicrop-rel")]
    VicropRel,
    /// ViCrop (grad-att): RoI from the question's attention to the image at
    /// one layer weighted by the positive gradient of the first answer
    /// token's log-probability (Burn autodiff), then as vicrop-rel.
    #[serde(rename = "vicrop-grad")]
    #[value(name = "vicrop-grad")]
    VicropGrad,
}

impl Method {
    /// The name in configs, files and tables.
    pub fn name(self) -> &'static str {
        match self {
            Method::Baseline => "baseline",
            Method::Sdrpn => "sdrpn",
            Method::VicropRel => "vicrop-rel",
            Method::VicropGrad => "vicrop-grad",
        }
    }

    /// ViCrop's map, for the ViCrop methods.
    pub fn vicrop_map(self) -> Option<ViCropMap> {
        match self {
            Method::VicropRel => Some(ViCropMap::Relative),
            Method::VicropGrad => Some(ViCropMap::Gradient),
            Method::Baseline | Method::Sdrpn => None,
        }
    }
}

/// ViCrop's settings in an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ViCropSpec {
    /// The attention layer (0-based; default
    /// [`ViCropRule::default_layer`] of the model's depth).
    pub layer: Option<usize>,
    /// The crop rule (base box size, generic question).
    pub rule: ViCropRule,
}

impl ViCropSpec {
    /// The defaults for a host whose vision input is `side` pixels square
    /// (ViCrop's base box: 336 for LLaVA-1.5, 224 for Qwen2.5-VL).
    pub fn with_box(side: f64) -> Self {
        Self {
            layer: None,
            rule: ViCropRule {
                base_box: side,
                ..ViCropRule::default()
            },
        }
    }

    /// The settings for the checkpoint in `model`: `layer` and `base_box`
    /// when given, the host's defaults otherwise.
    pub fn for_model(
        model: &Path,
        layer: Option<usize>,
        base_box: Option<f64>,
    ) -> anyhow::Result<Self> {
        let mut spec = Self::with_box(crate::host::HostKind::vicrop_box(model)?);
        if let Some(b) = base_box {
            if !(b.is_finite() && b >= 1.0) {
                anyhow::bail!("ViCrop box side {b}: it must be at least 1 pixel");
            }
            spec.rule.base_box = b;
        }
        spec.layer = layer;
        Ok(spec)
    }

    /// ViCrop as `method` answers on a model of `num_layers` (none for the
    /// other methods): the layer (the given one, checked, or
    /// [`ViCropRule::default_layer`]), the rule with the method's map, and
    /// the two-pass options that answer with `answer` (pass 1 runs layers
    /// `0..=layer`; prefix reuse on).
    pub fn resolve(
        &self,
        method: Method,
        num_layers: usize,
        answer: &AnswerOptions,
    ) -> anyhow::Result<Option<ViCropRun>> {
        let Some(map) = method.vicrop_map() else {
            return Ok(None);
        };
        let layer = self.layer.unwrap_or(ViCropRule::default_layer(num_layers));
        if layer >= num_layers {
            anyhow::bail!(
                "--vicrop-layer {layer} (vicrop_layer in an experiment config) is not below the model's {num_layers} layers"
            );
        }
        Ok(Some(ViCropRun {
            layer,
            rule: ViCropRule {
                map,
                ..self.rule.clone()
            },
            options: TwoPassOptions {
                branch: layer + 1,
                roi: Default::default(),
                answer: answer.clone(),
                reuse_prefix_cache: true,
            },
        }))
    }
}

/// ViCrop resolved for one model ([`ViCropSpec::resolve`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ViCropRun {
    /// The attention layer read.
    pub layer: usize,
    /// The map, box and generic question.
    pub rule: ViCropRule,
    /// The answering pass's settings.
    pub options: TwoPassOptions,
}

impl ViCropRun {
    /// Answers `question` about `image` on `host` with ViCrop's two passes.
    pub fn answer<B: Backend, H: sdrpn_core::host::RpnHost<B>>(
        &self,
        host: &H,
        image: &image::RgbImage,
        question: &str,
    ) -> Result<TwoPassOutput, H::Error> {
        host.answer_with_vicrop(image, question, self.layer, &self.rule, &self.options)
    }
}

/// One answered sample, as stored in `predictions-<worker>.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Sample id.
    pub id: String,
    /// The model's answer.
    pub prediction: String,
    /// Reference answers (what the scorer compares against).
    pub answers: Vec<String>,
    /// Category, when the benchmark has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Subset (OCRBench), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// none / bbox / mask (SD-RPN), none for the baseline.
    pub mode: String,
    /// RoI tokens appended in pass 2.
    pub roi_tokens: usize,
    /// Generated tokens.
    pub tokens: usize,
    /// Wall-clock milliseconds for this sample (preprocessing to last token).
    pub ms: f64,
}

/// What to evaluate.
#[derive(Clone, Debug)]
pub struct EvalSpec {
    /// The benchmark (decides metric, token budget, default threshold).
    pub benchmark: Benchmark,
    /// Baseline or SD-RPN.
    pub method: Method,
    /// RoI threshold (default: the benchmark's, SPEC 4).
    pub threshold: Option<f64>,
    /// Most new tokens (default: the benchmark's).
    pub max_new_tokens: Option<usize>,
    /// Only the first N samples.
    pub limit: Option<usize>,
    /// This worker's share.
    pub shard: ShardSpec,
    /// Output folder.
    pub out: PathBuf,
    /// Hash of the RPN's weights file (SD-RPN), recorded in the folder's
    /// provenance (`sdrpn_train::trainer::rpn_fingerprint`).
    pub rpn_weights: Option<String>,
    /// When the folder holds answers made from other inputs: clear it and
    /// start over (the experiment runner, `sdrpn eval --force`) instead of
    /// refusing.
    pub redo_on_change: bool,
    /// Samples answered together in one padded batch (1: one at a time).
    /// A batch's samples each record the batch's time divided evenly.
    /// ViCrop answers one sample at a time whatever the batch.
    pub batch: usize,
    /// ViCrop's settings (used by the ViCrop methods).
    pub vicrop: ViCropSpec,
}

/// The score and speed of a finished evaluation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    /// Benchmark name.
    pub benchmark: String,
    /// Method.
    pub method: Method,
    /// Headline score (x100).
    pub score: f64,
    /// The scorer's one-line summary (with categories).
    pub summary: String,
    /// Samples scored.
    pub samples: usize,
    /// Samples per second of model time.
    pub samples_per_s: f64,
    /// Generated tokens per second of model time.
    pub tokens_per_s: f64,
    /// How often each RoI mode was used.
    pub modes: std::collections::BTreeMap<String, usize>,
}

fn predictions_file(out: &Path, shard: ShardSpec) -> PathBuf {
    out.join(format!("predictions-{}.jsonl", shard.tag()))
}

/// Reads a predictions file, dropping a torn last line (an interrupted
/// write) by rewriting the file without it.
fn read_predictions(path: &Path) -> anyhow::Result<Vec<Prediction>> {
    read_appended_jsonl(path)
}

/// Reads a JSON-lines file that a job appends to (absent: empty), dropping a
/// torn last line (an interrupted write) by rewriting the file without it,
/// so the next append starts on a fresh line.
pub fn read_appended_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let bytes = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    };
    let mut out = Vec::new();
    let mut good = String::new();
    // Split bytes, not text: a write cut inside a multi-byte character
    // leaves a last line that is not UTF-8, and it is torn like any other.
    let lines: Vec<&[u8]> = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    for (i, raw) in lines.iter().enumerate() {
        let line = std::str::from_utf8(raw).unwrap_or("");
        match serde_json::from_str::<T>(line) {
            Ok(p) => {
                good.push_str(line);
                good.push('\n');
                out.push(p);
            }
            Err(_) if i + 1 == lines.len() => {
                sdrpn_train::error::write_atomic(path, good.as_bytes())?;
            }
            Err(e) => anyhow::bail!("{} line {}: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// Every prediction of an output folder (all workers).
pub fn all_predictions(out: &Path) -> anyhow::Result<Vec<Prediction>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .with_context(|| out.display().to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("predictions-") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    let mut all = Vec::new();
    for f in files {
        all.extend(read_predictions(&f)?);
    }
    Ok(all)
}

/// Answers this worker's share of `samples`, appending to its predictions
/// file and skipping what an earlier run already answered.
/// `on_progress(done, total)` is called after every sample.
pub fn run_eval<B: Backend, H: sdrpn_train::trainer::TrainHost<B>>(
    session: &H,
    rpn: Option<(&LlamaRpn<B>, &SdrpnConfig)>,
    samples: &[Sample],
    spec: &EvalSpec,
    mut on_progress: impl FnMut(usize, usize, Option<(&str, &str)>),
) -> anyhow::Result<usize> {
    let _lock =
        sdrpn_train::lock::FolderLock::acquire(&spec.out, Some(&spec.shard.tag()), "sdrpn eval")?;
    let now = EvalProvenance::new(spec, session.fingerprint(), rpn.map(|(_, c)| c), samples);
    let changed = changes(&spec.out, &now)?;
    if !changed.is_empty() {
        if !spec.redo_on_change {
            anyhow::bail!(
                "{} holds answers made from other inputs ({}); adding to them would mix two evaluations: use a new --out folder, or add --force to discard them and answer afresh",
                spec.out.display(),
                changed.join("; ")
            );
        }
        eprintln!(
            "{}: inputs changed ({}); its answers are redone",
            spec.out.display(),
            changed.join("; ")
        );
        reset(&spec.out, &now)?;
    }
    let path = predictions_file(&spec.out, spec.shard);
    let done: HashSet<String> = read_predictions(&path)?.into_iter().map(|p| p.id).collect();
    let mine: Vec<&Sample> = samples
        .iter()
        .take(spec.limit.unwrap_or(usize::MAX))
        .enumerate()
        .filter(|(i, s)| spec.shard.owns(*i) && !done.contains(&s.id))
        .map(|(_, s)| s)
        .collect();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| path.display().to_string())?;
    let answer = AnswerOptions {
        max_new_tokens: spec
            .max_new_tokens
            .unwrap_or(spec.benchmark.max_new_tokens()),
        stop_strings: Vec::new(),
    };
    let options = match (spec.method, rpn) {
        (Method::Baseline, _) => None,
        (Method::Sdrpn, Some((rpn, config))) => {
            let mut roi = config.inference.roi.clone();
            roi.threshold = spec.threshold.unwrap_or(spec.benchmark.default_threshold());
            let options = TwoPassOptions {
                branch: config.rpn.branch_layer,
                roi,
                answer: answer.clone(),
                reuse_prefix_cache: config.inference.reuse_prefix_cache,
            };
            Some((rpn, options))
        }
        (Method::Sdrpn, None) => anyhow::bail!("--method sdrpn needs --rpn RUN"),
        (Method::VicropRel | Method::VicropGrad, _) => None,
    };
    let vicrop = spec
        .vicrop
        .resolve(spec.method, session.num_layers(), &answer)?;
    let total = mine.len();
    let mut handled = 0;
    for chunk in mine.chunks(spec.batch.max(1)) {
        let mut ready = Vec::with_capacity(chunk.len());
        for sample in chunk {
            match decode_image(&sample.image) {
                Ok(img) => ready.push((*sample, img)),
                Err(e) => {
                    handled += 1;
                    on_progress(handled, total, Some((&sample.id, &e.to_string())));
                }
            }
        }
        let questions: Vec<(&image::RgbImage, &str)> = ready
            .iter()
            .map(|(s, img)| (img, s.prompt.as_str()))
            .collect();
        let outs = match (&options, questions.as_slice()) {
            (_, []) => Vec::new(),
            _ if vicrop.is_some() => {
                let vicrop = vicrop.as_ref().expect("checked");
                questions
                    .iter()
                    .map(|(img, q)| vicrop.answer(session, img, q))
                    .collect::<Result<Vec<_>, _>>()?
            }
            (None, [(img, q)]) => vec![session.answer_baseline(img, q, &answer)?],
            (None, _) => answer_baseline_batch(session, &questions, &answer)?,
            (Some((rpn, o)), [(img, q)]) => vec![session.answer_with_roi(rpn, img, q, o)?],
            (Some((rpn, o)), _) => answer_batch_with_roi(session, rpn, &questions, o)?,
        };
        for ((sample, _), out) in ready.iter().zip(outs) {
            let line = Prediction {
                id: sample.id.clone(),
                prediction: out.answer,
                answers: sample.answers.clone(),
                category: sample.category.clone(),
                dataset: sample.dataset.clone(),
                mode: serde_json::to_value(out.mode)?
                    .as_str()
                    .unwrap_or("none")
                    .to_string(),
                roi_tokens: out.roi_tokens,
                tokens: out.tokens.len(),
                ms: out.timings.total_ms,
            };
            writeln!(file, "{}", serde_json::to_string(&line)?)
                .with_context(|| path.display().to_string())?;
            file.flush()?;
            handled += 1;
            on_progress(handled, total, None);
        }
    }
    Ok(total)
}

/// Scores every prediction in `out` and writes `score.json` there.
pub fn score_predictions(
    benchmark: Benchmark,
    method: Method,
    out: &Path,
) -> anyhow::Result<EvalReport> {
    let predictions = all_predictions(out)?;
    if predictions.is_empty() {
        anyhow::bail!("{} holds no predictions", out.display());
    }
    let records: Vec<SampleRecord> = predictions
        .iter()
        .map(|p| SampleRecord {
            prediction: p.prediction.clone(),
            answers: p.answers.clone(),
            dataset: p.dataset.clone(),
            category: p.category.clone(),
        })
        .collect();
    let summary: Summary = aggregate(benchmark.metric(), &records);
    let seconds: f64 = predictions.iter().map(|p| p.ms).sum::<f64>() / 1e3;
    let tokens: usize = predictions.iter().map(|p| p.tokens).sum();
    let mut modes = std::collections::BTreeMap::new();
    for p in &predictions {
        *modes.entry(p.mode.clone()).or_insert(0) += 1;
    }
    let report = EvalReport {
        benchmark: benchmark.to_string(),
        method,
        score: summary.headline,
        summary: summary.to_string(),
        samples: predictions.len(),
        samples_per_s: predictions.len() as f64 / seconds.max(1e-9),
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
        modes,
    };
    sdrpn_train::error::write_atomic(
        &out.join("score.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str) -> String {
        serde_json::to_string(&Prediction {
            id: id.into(),
            prediction: "yes".into(),
            answers: vec!["yes".into()],
            category: None,
            dataset: None,
            mode: "none".into(),
            roi_tokens: 0,
            tokens: 2,
            ms: 1.0,
        })
        .unwrap()
    }

    #[test]
    fn a_line_torn_inside_a_multi_byte_character_is_dropped_too() {
        let dir = std::env::temp_dir().join(format!("sdrpn-eval-utf8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("predictions-w0of1.jsonl");
        let mut bytes = format!("{}\n", line("a")).into_bytes();
        // "é" is two bytes; the write stopped after the first.
        bytes.extend_from_slice(&"{\"id\":\"b\",\"prediction\":\"é".as_bytes()[..25]);
        assert!(std::str::from_utf8(&bytes).is_err());
        std::fs::write(&path, &bytes).unwrap();
        let read = read_predictions(&path).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", line("a"))
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_earlier_lines_kept() {
        let dir = std::env::temp_dir().join(format!("sdrpn-eval-torn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("predictions-w0of1.jsonl");
        let torn = line("c");
        std::fs::write(
            &path,
            format!("{}\n{}\n{}", line("a"), line("b"), &torn[..torn.len() / 2]),
        )
        .unwrap();
        let read = read_predictions(&path).unwrap();
        assert_eq!(
            read.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().lines().count(),
            2,
            "the torn line is removed"
        );
        // A broken line in the middle is an error, not silently skipped.
        std::fs::write(&path, format!("{}\nnot json\n{}\n", line("a"), line("b"))).unwrap();
        assert!(read_predictions(&path).is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
