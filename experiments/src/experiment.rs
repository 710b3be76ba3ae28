//! Experiment configs (`experiments/configs/*.toml`) and their runner: label
//! (once), train each run's RPN, evaluate every run on every benchmark, and
//! write a results table (Markdown and CSV) beside the published numbers.
//! Every step is resumable: a rerun skips finished labels, trainings and
//! predictions.

use crate::data_source::load_samples;
use crate::eval::{run_eval, score_predictions, EvalReport, EvalSpec, Method};
use crate::host::{with_host_views, HostViews, HostViewsJob, QWEN_LABEL_SIDE};
use anyhow::Context;
use burn::tensor::backend::Backend;
use sdrpn_eval::benchmarks::Benchmark;
use sdrpn_train::config::{Overrides, SinkRule};
use sdrpn_train::label::{run_labelling, LabelJob};
use sdrpn_train::label_store::read_labels;
use sdrpn_train::questions::{read_questions, ShardSpec};
use sdrpn_train::render::SilentRenderer;
use sdrpn_train::trainer::{load_rpn, train_rpn, RunPaths, TrainHost, TrainRequest};
use sdrpn_train::SdrpnConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where stage A's labels come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSource {
    /// The label folder (created when `questions` is given; default:
    /// `labels` in the output folder).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Questions to label: a LLaVA jsonl file, `synthetic:N`, or
    /// `testbed:SPLIT:N[:seed=S][:family=F]`.
    #[serde(default)]
    pub questions: Option<String>,
    /// Image folder of the questions.
    #[serde(default)]
    pub images: Option<PathBuf>,
    /// Label only the first N questions.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Training settings of one run (unset values come from the method config).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Epochs.
    pub epochs: Option<usize>,
    /// Seeded training subset size.
    pub samples: Option<usize>,
    /// Micro-batch.
    pub batch: Option<usize>,
    /// Gradient accumulation.
    pub accum: Option<usize>,
    /// Peak learning rate.
    pub lr: Option<f64>,
    /// bce, focal or mse.
    pub loss: Option<String>,
    /// Held-back samples.
    pub holdout: Option<usize>,
    /// Sink denoising: "off" or "attention_proxy" (the config's tau).
    pub denoise: Option<bool>,
}

/// One row of the results table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Row name (also the key of published numbers).
    pub name: String,
    /// baseline, sdrpn, vicrop-rel or vicrop-grad.
    pub method: Method,
    /// ViCrop's attention layer (vicrop-rel, vicrop-grad; default from the model's depth).
    #[serde(default)]
    pub vicrop_layer: Option<usize>,
    /// ViCrop's base box side in source pixels (ViCrop runs; default: the
    /// host's, 336 for LLaVA-1.5, 224 for Qwen2.5-VL).
    #[serde(default)]
    pub vicrop_box: Option<f64>,
    /// An existing trained RPN run (else one is trained when `train` is set).
    #[serde(default)]
    pub rpn: Option<PathBuf>,
    /// Train this run's RPN from the experiment's labels.
    #[serde(default)]
    pub train: Option<TrainSpec>,
    /// Use the RPN of an earlier run (by name), e.g. for threshold sweeps.
    #[serde(default)]
    pub rpn_from: Option<String>,
    /// Method overrides (branch layer, twig layers, head sets).
    #[serde(default)]
    pub branch_layer: Option<usize>,
    /// Twig layers.
    #[serde(default)]
    pub twig_layers: Option<usize>,
    /// Grounding heads.
    #[serde(default)]
    pub grounding_heads: Option<String>,
    /// Sink heads.
    #[serde(default)]
    pub sink_heads: Option<String>,
    /// RoI threshold for every benchmark (default: each benchmark's own).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Ambiguity resolution of several boxes (default true).
    #[serde(default)]
    pub multi_box_mask: Option<bool>,
}

/// A benchmark's data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkData {
    /// Parquet file or folder, LLaVA jsonl, `synthetic:N`, or (textvqa)
    /// `testbed:SPLIT:N[:seed=S][:family=F]`.
    pub data: String,
    /// Image folder (LLaVA jsonl only).
    #[serde(default)]
    pub images: Option<PathBuf>,
}

/// An experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Name (used in the table title).
    pub name: String,
    /// What the experiment shows.
    #[serde(default)]
    pub description: String,
    /// Checkpoint folder (llava-hf LLaVA-1.5 or Qwen2.5-VL; the host comes
    /// from its `config.json`).
    pub model: PathBuf,
    /// Qwen2.5-VL: side in pixels of the square labels and training pad
    /// images to (default 672, the reference's; evaluation uses each
    /// image's own size). Ignored for LLaVA.
    #[serde(default)]
    pub qwen_square: Option<u32>,
    /// Method preset (default: chosen from the model's size).
    #[serde(default)]
    pub preset: Option<String>,
    /// Method config file (instead of a preset).
    #[serde(default)]
    pub method_config: Option<PathBuf>,
    /// Samples per benchmark (all when absent).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Labels for the runs that train.
    #[serde(default)]
    pub labels: Option<LabelSource>,
    /// Benchmarks by name.
    pub benchmarks: BTreeMap<String, BenchmarkData>,
    /// The rows.
    pub runs: Vec<RunSpec>,
    /// Published numbers: run name -> benchmark -> score.
    #[serde(default)]
    pub published: BTreeMap<String, BTreeMap<String, f64>>,
    /// Samples per padded batch in labelling and evaluation (default 1;
    /// results equal one-at-a-time results up to float rounding, so a
    /// change redoes nothing). `sdrpn experiment --batch` overrides it.
    #[serde(default = "one_sample")]
    pub batch: usize,
}

fn one_sample() -> usize {
    1
}

impl ExperimentConfig {
    /// Reads a config; relative paths are taken from the config's folder.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut c: Self = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid experiment config", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut c.model);
        if let Some(p) = c.method_config.as_mut() {
            fix(p);
        }
        if let Some(l) = c.labels.as_mut() {
            if let Some(p) = l.path.as_mut() {
                fix(p);
            }
            if let Some(i) = l.images.as_mut() {
                fix(i);
            }
            if let Some(q) = l.questions.as_mut() {
                if !is_generated(q) && Path::new(q).is_relative() {
                    *q = base.join(&*q).display().to_string();
                }
            }
        }
        for b in c.benchmarks.values_mut() {
            if !is_generated(&b.data) && Path::new(&b.data).is_relative() {
                b.data = base.join(&b.data).display().to_string();
            }
            if let Some(i) = b.images.as_mut() {
                fix(i);
            }
        }
        for r in c.runs.iter_mut() {
            if let Some(p) = r.rpn.as_mut() {
                fix(p);
            }
        }
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.runs.is_empty() || self.benchmarks.is_empty() {
            anyhow::bail!(
                "experiment {:?} needs at least one run and one benchmark",
                self.name
            );
        }
        for name in self.benchmarks.keys() {
            name.parse::<Benchmark>()
                .map_err(|e| anyhow::anyhow!("benchmark {name:?}: {e}"))?;
        }
        for (i, r) in self.runs.iter().enumerate() {
            let sources = usize::from(r.rpn.is_some())
                + usize::from(r.train.is_some())
                + usize::from(r.rpn_from.is_some());
            if r.method == Method::Sdrpn && sources != 1 {
                anyhow::bail!(
                    "run {:?} uses sdrpn: give exactly one of `rpn`, `train`, `rpn_from`",
                    r.name
                );
            }
            if r.method != Method::Sdrpn && sources != 0 {
                anyhow::bail!(
                    "run {:?} uses {}, which needs no RPN: remove `rpn`, `train` and `rpn_from`",
                    r.name,
                    r.method.name()
                );
            }
            if r.method.vicrop_map().is_none()
                && (r.vicrop_layer.is_some() || r.vicrop_box.is_some())
            {
                anyhow::bail!(
                    "run {:?}: `vicrop_layer` and `vicrop_box` belong to vicrop-rel and vicrop-grad runs",
                    r.name
                );
            }
            if let Some(from) = &r.rpn_from {
                if !self.runs[..i]
                    .iter()
                    .any(|o| &o.name == from && o.method == Method::Sdrpn)
                {
                    anyhow::bail!(
                        "run {:?}: rpn_from {from:?} names no earlier sdrpn run",
                        r.name
                    );
                }
            }
            if r.train.is_some() && self.labels.is_none() {
                anyhow::bail!("run {:?} trains but the experiment has no [labels]", r.name);
            }
        }
        for (run, scores) in &self.published {
            if !self.runs.iter().any(|r| &r.name == run) {
                let names: Vec<&str> = self.runs.iter().map(|r| r.name.as_str()).collect();
                anyhow::bail!(
                    "[published.{run:?}] names no run (runs: {})",
                    names.join(", ")
                );
            }
            for benchmark in scores.keys() {
                if !self.benchmarks.contains_key(benchmark) {
                    anyhow::bail!(
                        "[published.{run:?}] {benchmark} is not a benchmark of this experiment"
                    );
                }
            }
        }
        Ok(())
    }

    /// The method config of the experiment (before per-run overrides).
    pub fn method(&self) -> anyhow::Result<SdrpnConfig> {
        Ok(match (&self.method_config, &self.preset) {
            (Some(p), _) => SdrpnConfig::load(p)?,
            (None, Some(name)) => SdrpnConfig::preset(name)?,
            (None, None) => crate::host::HostKind::preset(&self.model)?,
        })
    }
}

/// Whether a data spec names generated data (`synthetic:`, `testbed:`)
/// rather than a path.
fn is_generated(spec: &str) -> bool {
    spec.starts_with("synthetic:") || spec.starts_with(crate::testbed::spec::PREFIX)
}

/// A file-system-safe name for a run.
pub fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// One cell of the results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cell {
    /// Run name.
    pub run: String,
    /// Benchmark name.
    pub benchmark: String,
    /// The evaluation.
    pub report: EvalReport,
    /// The published score, if any.
    pub published: Option<f64>,
}

/// Runs an experiment into `out`, reporting progress lines through `log`.
pub fn run_experiment<B: Backend>(
    config: &ExperimentConfig,
    out: &Path,
    device: &B::Device,
    log: &mut dyn FnMut(&str),
) -> anyhow::Result<Vec<Cell>> {
    let _lock = sdrpn_train::lock::FolderLock::acquire(out, None, "sdrpn experiment")?;
    sdrpn_train::error::write_atomic(
        &out.join("experiment.toml"),
        toml::to_string_pretty(config)?.as_bytes(),
    )?;
    let method = config.method()?;
    with_host_views::<B, _>(
        &config.model,
        device,
        method.prompt,
        config.qwen_square.unwrap_or(QWEN_LABEL_SIDE),
        Experiment {
            config,
            out,
            method: &method,
            log,
        },
    )
}

/// An experiment's work once its host is loaded.
struct Experiment<'a> {
    config: &'a ExperimentConfig,
    out: &'a Path,
    method: &'a SdrpnConfig,
    log: &'a mut dyn FnMut(&str),
}

impl<B: Backend> HostViewsJob<B> for Experiment<'_> {
    type Output = Vec<Cell>;
    fn run<H: TrainHost<B>>(self, views: HostViews<H>) -> anyhow::Result<Vec<Cell>> {
        run_on_host(self, &views)
    }
}

/// Labels with `views.train` (once), trains each run's RPN on it, evaluates
/// every run with `views.eval`, and writes the tables.
fn run_on_host<B: Backend, H: TrainHost<B>>(
    job: Experiment<'_>,
    views: &HostViews<H>,
) -> anyhow::Result<Vec<Cell>> {
    let Experiment {
        config,
        out,
        method,
        log,
    } = job;

    // Stage A once, shared by every run that trains. `label_ids`: the
    // questions labelled for this config (training leaves out labels of
    // questions an earlier config had and this one dropped).
    let mut label_ids: Option<BTreeSet<String>> = None;
    let label_dir = config
        .labels
        .as_ref()
        .map(|l| l.path.clone().unwrap_or_else(|| out.join("labels")));
    if let (Some(labels), Some(label_dir), true) = (
        &config.labels,
        &label_dir,
        config.runs.iter().any(|r| r.train.is_some()),
    ) {
        if let Some(questions) = &labels.questions {
            let testbed = questions
                .starts_with(crate::testbed::spec::PREFIX)
                .then(|| questions.parse::<crate::testbed::spec::TestbedData>())
                .transpose()?;
            let (questions, images) = match questions.strip_prefix("synthetic:") {
                _ if testbed.is_some() => {
                    let files = testbed
                        .as_ref()
                        .expect("checked")
                        .write(&out.join("testbed-data"))?;
                    (read_questions(&files.questions)?.0, files.images)
                }
                Some(n) => {
                    let dir = out.join("synthetic-questions");
                    let file = crate::synthetic::write_question_set(
                        &dir,
                        n.parse().context("synthetic:N")?,
                        11,
                    )?;
                    (read_questions(&file)?.0, dir.join("images"))
                }
                None => (
                    read_questions(Path::new(questions))?.0,
                    labels
                        .images
                        .clone()
                        .context("[labels] needs `images` with `questions`")?,
                ),
            };
            log(&format!(
                "labelling {} questions into {}",
                questions.len(),
                label_dir.display()
            ));
            std::fs::create_dir_all(label_dir)?;
            sdrpn_train::label_store::write_image_source(label_dir, &images)?;
            label_ids = Some(
                questions
                    .iter()
                    .take(labels.limit.unwrap_or(usize::MAX))
                    .map(|q| q.question_id.clone())
                    .collect(),
            );
            // A label folder made from another model or other labelling
            // settings is a changed input: it is labelled afresh.
            let job = LabelJob {
                questions,
                images,
                out: label_dir.clone(),
                shard: ShardSpec::default(),
                limit: labels.limit,
                shard_size: 64,
                force: true,
                batch: config.batch.max(1),
            };
            let p = run_labelling(views.train.as_ref(), method, &job, |_, _| {})?;
            log(&format!(
                "labels: {} new, {} skipped, {} done before",
                p.labelled, p.skipped, p.resumed
            ));
        }
    }

    let mut cells = Vec::new();
    let mut rpn_dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for run in &config.runs {
        let run_dir = out.join(slug(&run.name));
        let rpn_dir = match (&run.rpn, &run.train, &run.rpn_from, run.method) {
            (_, _, _, Method::Baseline | Method::VicropRel | Method::VicropGrad) => None,
            (Some(dir), _, _, _) => Some(dir.clone()),
            (_, Some(train), _, _) => {
                let labels = label_dir
                    .as_deref()
                    .expect("checked on load: training runs have [labels]");
                Some(train_run(
                    run,
                    train,
                    method,
                    &views.train,
                    (labels, label_ids.as_ref()),
                    &run_dir.join("rpn"),
                    log,
                )?)
            }
            (_, _, Some(from), _) => Some(
                rpn_dirs
                    .get(from)
                    .cloned()
                    .expect("checked on load: an earlier sdrpn run"),
            ),
            (None, None, None, _) => unreachable!("checked on load"),
        };
        if let Some(dir) = &rpn_dir {
            rpn_dirs.insert(run.name.clone(), dir.clone());
        }
        let rpn = match &rpn_dir {
            Some(dir) => {
                let (mut cfg, rpn) = load_rpn(views.eval.as_ref(), dir, false)?;
                if let Some(m) = run.multi_box_mask {
                    cfg.inference.roi.multi_box_mask = m;
                }
                Some((cfg, rpn))
            }
            None => None,
        };
        let vicrop =
            crate::eval::ViCropSpec::for_model(&config.model, run.vicrop_layer, run.vicrop_box)?;
        for (name, data) in &config.benchmarks {
            let benchmark: Benchmark = name.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            let loaded = load_samples(benchmark, &data.data, data.images.as_deref())?;
            for warning in loaded.warnings(&data.data) {
                log(&warning);
            }
            let spec = EvalSpec {
                benchmark,
                method: run.method,
                threshold: run.threshold,
                max_new_tokens: None,
                limit: config.limit,
                shard: ShardSpec::default(),
                out: run_dir.join(name),
                rpn_weights: rpn_dir
                    .as_deref()
                    .map(sdrpn_train::trainer::rpn_fingerprint)
                    .transpose()?,
                redo_on_change: true,
                batch: config.batch.max(1),
                vicrop: vicrop.clone(),
            };
            log(&format!(
                "{}: {} ({} samples)",
                run.name,
                name,
                loaded.samples.len().min(config.limit.unwrap_or(usize::MAX))
            ));
            run_eval(
                views.eval.as_ref(),
                rpn.as_ref().map(|(c, r)| (r, c)),
                &loaded.samples,
                &spec,
                |_, _, _| {},
            )?;
            let report = score_predictions(benchmark, run.method, &spec.out)?;
            let published = config
                .published
                .get(&run.name)
                .and_then(|m| m.get(name))
                .copied();
            cells.push(Cell {
                run: run.name.clone(),
                benchmark: name.clone(),
                report,
                published,
            });
        }
    }
    write_tables(config, &cells, out)?;
    write_provenance(config, &cells, views.eval.fingerprint(), out)?;
    Ok(cells)
}

/// Trains (or resumes, or reuses) one run's RPN on the label folder's
/// records (only those of `labels.1`'s questions, when given); returns its
/// run folder.
fn train_run<B: Backend, H: TrainHost<B>>(
    run: &RunSpec,
    train: &TrainSpec,
    base: &SdrpnConfig,
    session: &Arc<H>,
    labels: (&Path, Option<&BTreeSet<String>>),
    dir: &Path,
    log: &mut dyn FnMut(&str),
) -> anyhow::Result<PathBuf> {
    let mut method = base.clone();
    method.apply(&Overrides {
        branch_layer: run.branch_layer,
        twig_layers: run.twig_layers,
        grounding_heads: run.grounding_heads.clone(),
        sink_heads: run.sink_heads.clone(),
        threshold: None,
    })?;
    let t = &mut method.train;
    t.epochs = train.epochs.unwrap_or(t.epochs);
    t.samples = train.samples.or(t.samples);
    t.batch_size = train.batch.unwrap_or(t.batch_size);
    t.grad_accumulation = train.accum.unwrap_or(t.grad_accumulation);
    t.lr = train.lr.unwrap_or(t.lr);
    t.holdout = train.holdout.unwrap_or(t.holdout);
    if let Some(loss) = &train.loss {
        t.loss = loss.parse()?;
    }
    if train.denoise == Some(false) {
        method.labels.sink = SinkRule::Off;
    }
    train_or_reuse(
        session,
        &method,
        labels,
        || Ok(sdrpn_train::label_store::read_image_source(labels.0)?),
        dir,
        &run.name,
        log,
    )?;
    Ok(dir.to_path_buf())
}

/// Trains an RPN under `method` on the labels in `labels.0` (only the
/// records of the question ids `labels.1`, when given; their image folder
/// from `images`, asked only when training) into `dir`: reuses a run that
/// finished all its epochs, resumes one stopped under the same config and
/// inputs, else starts afresh. `what` names the run in the log lines.
pub fn train_or_reuse<B: Backend, H: TrainHost<B>>(
    session: &Arc<H>,
    method: &SdrpnConfig,
    (labels, only): (&Path, Option<&BTreeSet<String>>),
    images: impl FnOnce() -> anyhow::Result<PathBuf>,
    dir: &Path,
    what: &str,
    log: &mut dyn FnMut(&str),
) -> anyhow::Result<()> {
    let paths = RunPaths {
        dir: dir.to_path_buf(),
    };
    sdrpn_train::provenance::check_labels_model(labels, session.fingerprint(), false)?;
    let (_, mut records) = read_labels(labels)?;
    if let Some(ids) = only {
        let before = records.len();
        records.retain(|r| ids.contains(&r.question_id));
        if records.len() < before {
            log(&format!(
                "{what}: {} labelled samples in {} are of questions no longer labelled: left out",
                before - records.len(),
                labels.display()
            ));
        }
    }
    // The run's inputs (method config, model, labels) as its provenance
    // records them: a run made from other inputs is trained again.
    let same_inputs = SdrpnConfig::load(&paths.config()).ok().as_ref() == Some(method)
        && sdrpn_train::provenance::read::<sdrpn_train::provenance::RunProvenance>(dir)?
            .is_some_and(|p| {
                p.model == *session.fingerprint()
                    && p.labels == sdrpn_train::trainer::records_hash(&records)
            });
    let started = paths.rpn().is_file() || paths.last_checkpoint().is_some();
    if same_inputs && paths.rpn().is_file() && paths.last_checkpoint() == Some(method.train.epochs)
    {
        log(&format!("{what}: RPN already trained in {}", dir.display()));
        return Ok(());
    }
    if started && !same_inputs {
        log(&format!(
            "{what}: the method config, the model or the labels changed since {} was trained: training again",
            dir.display()
        ));
    }
    let images = images()?;
    log(&format!(
        "{what}: training the RPN on {} labelled samples",
        records.len()
    ));
    let resume = same_inputs && paths.last_checkpoint().is_some();
    train_rpn(
        TrainRequest {
            session: session.clone(),
            records,
            images: &images,
            config: method,
            run_dir: dir,
            resume,
            stop_after_epoch: None,
            replicas: Vec::new(),
        },
        SilentRenderer,
    )?;
    Ok(())
}

/// `results.md` and `results.csv`: a row per run, a column per benchmark,
/// published numbers in brackets, throughput relative to the first baseline.
/// Records what the results table was made from (`provenance.json` of the
/// experiment folder): the program, the model, the experiment config, and
/// each cell's eval provenance (its benchmark samples, method and RPN), so
/// a table can be traced to the exact inputs of every number in it.
fn write_provenance(
    config: &ExperimentConfig,
    cells: &[Cell],
    model: &sdrpn_llava::fingerprint::ModelFingerprint,
    out: &Path,
) -> anyhow::Result<()> {
    let mut each = serde_json::Map::new();
    for c in cells {
        let dir = out.join(slug(&c.run)).join(&c.benchmark);
        let made_from: serde_json::Value =
            sdrpn_train::provenance::read(&dir)?.unwrap_or(serde_json::Value::Null);
        each.insert(format!("{} / {}", c.run, c.benchmark), made_from);
    }
    let mut config_hash = sdrpn_llava::fingerprint::Fnv64::default();
    config_hash.update(toml::to_string_pretty(config)?.as_bytes());
    let provenance = serde_json::json!({
        "program": sdrpn_train::provenance::program(),
        "model": model,
        "experiment": config_hash.hex(),
        "cells": each,
    });
    sdrpn_train::provenance::write(out, &provenance)?;
    Ok(())
}

fn write_tables(config: &ExperimentConfig, cells: &[Cell], out: &Path) -> anyhow::Result<()> {
    let benchmarks: Vec<&String> = config.benchmarks.keys().collect();
    let baseline = config
        .runs
        .iter()
        .find(|r| r.method == Method::Baseline)
        .map(|r| r.name.clone());
    let rate = |run: &str, b: &str| {
        cells
            .iter()
            .find(|c| c.run == run && c.benchmark == b)
            .map(|c| c.report.samples_per_s)
    };
    let relative = |run: &str| -> Option<f64> {
        let base = baseline.as_deref()?;
        let ratios: Vec<f64> = benchmarks
            .iter()
            .filter_map(|b| Some(rate(run, b)? / rate(base, b)?))
            .collect();
        (!ratios.is_empty()).then(|| ratios.iter().sum::<f64>() / ratios.len() as f64)
    };
    let mut md = format!("# {}\n\n{}\n\n| run |", config.name, config.description);
    for b in &benchmarks {
        md.push_str(&format!(" {b} |"));
    }
    md.push_str(" throughput |\n|---|");
    md.push_str(&"---|".repeat(benchmarks.len() + 1));
    md.push('\n');
    let mut csv = String::from(
        "run,benchmark,score,published,samples,samples_per_s,tokens_per_s,relative_throughput\n",
    );
    for run in &config.runs {
        md.push_str(&format!("| {} |", run.name));
        for b in &benchmarks {
            match cells
                .iter()
                .find(|c| c.run == run.name && &&c.benchmark == b)
            {
                Some(c) => {
                    let published = c.published.map_or(String::new(), |p| format!(" ({p:.1})"));
                    md.push_str(&format!(" {:.1}{published} |", c.report.score));
                    csv.push_str(&format!(
                        "{},{},{:.4},{},{},{:.4},{:.4},{}\n",
                        run.name,
                        b,
                        c.report.score,
                        c.published.map_or(String::new(), |p| p.to_string()),
                        c.report.samples,
                        c.report.samples_per_s,
                        c.report.tokens_per_s,
                        relative(&run.name).map_or(String::new(), |r| format!("{r:.3}"))
                    ));
                }
                None => md.push_str(" - |"),
            }
        }
        md.push_str(&format!(
            " {} |\n",
            relative(&run.name).map_or("-".into(), |r| format!("{r:.2}x"))
        ));
    }
    md.push_str("\nScores x100 (ours), published in brackets; throughput in samples/s relative to the baseline row.\n");
    md.push_str(&format!(
        "Made by {} from `experiment.toml`; every cell's inputs (model, samples, method, RPN) are in `provenance.json`.\n",
        sdrpn_train::provenance::program()
    ));
    sdrpn_train::error::write_atomic(&out.join("results.md"), md.as_bytes())?;
    sdrpn_train::error::write_atomic(&out.join("results.csv"), csv.as_bytes())?;
    Ok(())
}
