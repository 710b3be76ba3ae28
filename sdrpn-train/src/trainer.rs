//! Stage B: training the RPN with burn-train (SPEC 3).
//!
//! AdamW (beta2 0.98, no weight decay), linear warm-up then cosine decay,
//! gradient accumulation (the loss is divided by the accumulation so the
//! summed gradients are a mean), global gradient-norm clipping, a seeded
//! per-epoch data order, checkpoints every epoch, and `resume` continuing a
//! stopped run to the same result as an uninterrupted one. Only the RPN's
//! parameters train; only they are saved (`rpn.safetensors`), with the
//! resolved `config.toml` and per-epoch `metrics.jsonl`.

use crate::config::{SdrpnConfig, SinkRule};
use crate::dataset::{split_records, EpochLoader, RecordBatch};
use crate::error::{describe, write_atomic, Result, TrainError};
use crate::label_store::LabelRecord;
use crate::provenance::RunProvenance;
use crate::step::{batch_inputs, confusion, loss_tokens, run_step, PrefixSource, StepSettings};
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::backend::{AutodiffBackend, Backend, DeviceOps};
use burn::tensor::{Tensor, Transaction};
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::logger::{FileMetricLogger, MetricLogger};
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{
    Adaptor, ItemLazy, LearningRateMetric, Metric, MetricAttributes, MetricDefinition,
    MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry, SerializedEntry,
};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use burn::train::{
    ExecutionStrategy, InferenceStep, Interrupter, Learner, LearnerSummary, MultiDeviceOptim,
    SupervisedTraining, TrainOutput, TrainStep, TrainingStrategy,
};
use sdrpn_core::host::PrefixStates;
use sdrpn_core::host::RpnHost;
use sdrpn_core::Grid;
use sdrpn_llava::host::LlamaRpn;
use sdrpn_llava::llama::LlamaDecoderLayer;
use sdrpn_llava::nn::RmsNorm;
use sdrpn_llava::preprocess::load_rgb;
use serde::Serialize;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A host the trainer can train an RPN for: the method's trait with a
/// LLaMA-family decoder (the twig layers are trained on the autodiff
/// backend, which needs their concrete type; LLaVA and Qwen2.5-VL both
/// qualify), shared with the data loader's threads.
pub trait TrainHost<B: Backend>:
    RpnHost<B, Layer = LlamaDecoderLayer<B>, Norm = RmsNorm<B>> + Send + Sync + 'static
{
}

impl<B: Backend, H> TrainHost<B> for H where
    H: RpnHost<B, Layer = LlamaDecoderLayer<B>, Norm = RmsNorm<B>> + Send + Sync + 'static
{
}

/// The frozen prefix of labelled samples (images under `images`) on a host,
/// with a copy of the host on each further training device.
pub struct HostPrefix<B: Backend, H> {
    /// The host on the main device, then its replicas.
    sessions: Vec<Arc<H>>,
    images: PathBuf,
    branch: usize,
    grid: Grid,
    backend: std::marker::PhantomData<fn() -> B>,
}

impl<B: Backend, H> Clone for HostPrefix<B, H> {
    fn clone(&self) -> Self {
        Self {
            sessions: self.sessions.clone(),
            images: self.images.clone(),
            branch: self.branch,
            grid: self.grid,
            backend: std::marker::PhantomData,
        }
    }
}

impl<B: Backend, H> Debug for HostPrefix<B, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HostPrefix(K={}, grid={}, images={}, {} host copies)",
            self.branch,
            self.grid,
            self.images.display(),
            self.sessions.len()
        )
    }
}

impl<B: Backend, H: TrainHost<B>> HostPrefix<B, H> {
    /// The frozen prefix to layer `branch` of `session`, on its label grid.
    pub fn new(session: Arc<H>, images: PathBuf, branch: usize) -> Result<Self> {
        let grid = session.label_grid().map_err(|e| TrainError::host(&e))?;
        Ok(Self {
            sessions: vec![session],
            images,
            branch,
            grid,
            backend: std::marker::PhantomData,
        })
    }
}

impl<B: Backend, H: TrainHost<B>> HostPrefix<B, H> {
    /// Adds copies of the host on further devices: each device's share of a
    /// batch then runs through the copy on that device.
    pub fn with_replicas(mut self, replicas: Vec<Arc<H>>) -> Self {
        self.sessions.extend(replicas);
        self
    }
}

impl<B: Backend, H: TrainHost<B>> PrefixSource<B> for HostPrefix<B, H> {
    fn prefix(&self, record: &LabelRecord, device: &B::Device) -> PrefixStates<B> {
        // The copy on `device`, else the main one (its states then move).
        let session = self
            .sessions
            .iter()
            .find(|s| s.device() == *device)
            .unwrap_or(&self.sessions[0]);
        let run = || -> std::result::Result<PrefixStates<B>, String> {
            let image = load_rgb(&self.images.join(&record.image)).map_err(|e| describe(&e))?;
            let prepared = session
                .prepare(&image, &record.question)
                .map_err(|e| describe(&e))?;
            session
                .frozen_prefix(&prepared, self.branch)
                .map_err(|e| describe(&e))
        };
        let mut states = run().unwrap_or_else(|e| panic!("sample {}: {e}", record.question_id));
        states.hidden = states.hidden.to_device(device);
        states
    }

    fn grid(&self) -> Grid {
        self.grid
    }
}

/// The trainable RPN with the frozen prefix alongside (not a parameter).
#[derive(Module, Debug)]
pub struct RpnLearner<B: Backend, H: Clone + Debug + Send + Sync + 'static> {
    /// The RPN being trained.
    pub rpn: LlamaRpn<B>,
    #[module(skip)]
    source: H,
    #[module(skip)]
    settings: StepSettings,
}

/// What a step reports (kept on the inner backend, no graph).
pub struct StepOut<B: Backend> {
    loss: Tensor<B, 1>,
    counts: Tensor<B, 1>,
    samples: usize,
}

/// The synced numbers of a step.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StepStats {
    /// Mean loss over the batch's valid tokens.
    pub loss: f64,
    /// True positives.
    pub tp: f64,
    /// False positives.
    pub fp: f64,
    /// False negatives.
    pub fn_: f64,
    /// Samples in the batch.
    pub samples: usize,
}

impl<B: Backend> ItemLazy for StepOut<B> {
    type ItemSync = StepStats;
    fn sync(self) -> StepStats {
        let data = Transaction::default()
            .register(self.loss)
            .register(self.counts)
            .execute();
        let values: Vec<Vec<f64>> = data
            .into_iter()
            .map(|d| d.convert::<f64>().to_vec::<f64>().unwrap_or_default())
            .collect();
        StepStats {
            loss: values[0][0],
            tp: values[1][0],
            fp: values[1][1],
            fn_: values[1][2],
            samples: self.samples,
        }
    }
}

impl Adaptor<StepStats> for StepStats {
    fn adapt(&self) -> StepStats {
        self.clone()
    }
}

/// Stops training at the first non-finite training loss and remembers
/// where: `(epoch, iteration)`.
#[derive(Clone)]
pub struct DivergenceGuard {
    at: Arc<std::sync::Mutex<Option<(usize, usize)>>>,
    interrupter: Interrupter,
}

impl DivergenceGuard {
    /// A guard that stops training through `interrupter`.
    pub fn new(interrupter: Interrupter) -> Self {
        Self {
            at: Default::default(),
            interrupter,
        }
    }

    fn check(&self, loss: f64, metadata: &MetricMetadata) {
        if loss.is_finite() {
            return;
        }
        let mut at = self.at.lock().expect("guard lock");
        if at.is_none() {
            *at = Some((
                metadata.global_progress.items_processed,
                metadata.iteration.unwrap_or(0),
            ));
        }
        self.interrupter
            .stop(Some("the training loss is not finite"));
    }

    /// Where the loss first became non-finite, if it did.
    pub fn tripped(&self) -> Option<(usize, usize)> {
        *self.at.lock().expect("guard lock")
    }
}

/// A numeric metric read off [`StepStats`]: `(value, weight)`.
#[derive(Clone)]
pub struct StatMetric {
    name: MetricName,
    pick: fn(&StepStats) -> (f64, usize),
    higher_is_better: bool,
    state: NumericMetricState,
    guard: Option<DivergenceGuard>,
}

impl StatMetric {
    fn new(name: &str, pick: fn(&StepStats) -> (f64, usize), higher_is_better: bool) -> Self {
        Self {
            name: Arc::new(name.to_string()),
            pick,
            higher_is_better,
            state: NumericMetricState::new(),
            guard: None,
        }
    }

    /// This metric, also stopping training through `guard` when the loss
    /// is not finite.
    pub fn guarded(mut self, guard: DivergenceGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Loss, weighted by samples.
    pub fn loss() -> Self {
        Self::new("Loss", |s| (s.loss, s.samples), false)
    }
    /// tp / (tp + fp), weighted so the epoch value is the pooled ratio.
    pub fn precision() -> Self {
        Self::new("Precision", |s| ratio(s.tp, s.tp + s.fp), true)
    }
    /// tp / (tp + fn).
    pub fn recall() -> Self {
        Self::new("Recall", |s| ratio(s.tp, s.tp + s.fn_), true)
    }
    /// tp / (tp + fp + fn).
    pub fn iou() -> Self {
        Self::new("IoU", |s| ratio(s.tp, s.tp + s.fp + s.fn_), true)
    }
}

fn ratio(num: f64, den: f64) -> (f64, usize) {
    if den > 0.0 {
        (num / den, den as usize)
    } else {
        (0.0, 0)
    }
}

impl Metric for StatMetric {
    type Input = StepStats;
    fn name(&self) -> MetricName {
        self.name.clone()
    }
    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: self.higher_is_better,
        }
        .into()
    }
    fn update(&mut self, item: &StepStats, metadata: &MetricMetadata) -> SerializedEntry {
        if let Some(guard) = &self.guard {
            guard.check(item.loss, metadata);
        }
        let (value, weight) = (self.pick)(item);
        self.state.update(
            value,
            weight,
            FormatOptions::new(self.name.clone()).precision(5),
        )
    }
    fn clear(&mut self) {
        self.state.reset()
    }
}

impl Numeric for StatMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }
    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}

/// Marks every float parameter as trainable (parameters built on the inner
/// backend come over from it with `require_grad` off).
struct Trainable;

impl<B: AutodiffBackend> ModuleMapper<B> for Trainable {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.set_require_grad(true)
    }
}

/// Sums the squared gradients of a module's parameters.
struct GradNorm<'a> {
    grads: &'a GradientsParams,
    sum: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s = g
                .square()
                .sum()
                .into_data()
                .convert::<f64>()
                .to_vec::<f64>()
                .unwrap_or_default();
            self.sum += s.first().copied().unwrap_or(0.0);
        }
    }
}

/// Scales every gradient of a module's parameters.
struct GradScale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradScale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, g * self.factor);
        }
    }
}

impl<B: AutodiffBackend, H> TrainStep for RpnLearner<B, H>
where
    H: PrefixSource<B::InnerBackend>,
{
    type Input = RecordBatch;
    type Output = StepOut<B::InnerBackend>;

    fn step(&self, batch: RecordBatch) -> TrainOutput<Self::Output> {
        let device = self.rpn.head.q_proj.weight.device();
        let samples = batch.records.len();
        let grid = self.source.grid();
        // On several devices: normalised by the whole global batch.
        let global_tokens = batch
            .global
            .as_ref()
            .map(|all| loss_tokens::<B::InnerBackend>(all, &self.settings, grid, device.inner()));
        // The frozen prefix runs on the inner backend: no graph, no gradient.
        let inputs = batch_inputs(
            &self.source,
            &batch,
            Tensor::from_inner,
            (device.inner(), &device),
        );
        let result = run_step(&self.rpn, &self.settings, grid, inputs, global_tokens);
        let counts = confusion(&result, self.settings.metric_threshold).inner();
        let grads = (result.objective.clone() / self.settings.accumulation as f64).backward();
        // The loss metric is weighted by samples: a device's share reports
        // its part of the global batch's loss scaled to its sample count, so
        // the epoch's train loss is the one a single device reports.
        let loss = match &batch.global {
            None => result.loss.inner(),
            Some(all) => result.objective.inner() * (all.len() as f64 / samples as f64),
        };
        TrainOutput::new(
            self,
            grads,
            StepOut {
                loss,
                counts,
                samples,
            },
        )
    }

    fn optimize<AB, O>(self, optim: &mut O, lr: f64, mut grads: GradientsParams) -> Self
    where
        AB: AutodiffBackend,
        O: Optimizer<Self, AB>,
        Self: AutodiffModule<AB>,
    {
        if let Some(max) = self.settings.grad_clip {
            // Global norm over all parameters (torch.nn.utils.clip_grad_norm_),
            // not Burn's per-tensor clipping.
            let mut norm = GradNorm {
                grads: &grads,
                sum: 0.0,
            };
            self.visit(&mut norm);
            let total = norm.sum.sqrt();
            if total > max {
                let mut scale = GradScale {
                    grads: &mut grads,
                    factor: max / (total + 1e-6),
                };
                self.visit(&mut scale);
            }
        }
        optim.step(lr, self, grads)
    }
}

impl<B: Backend, H> InferenceStep for RpnLearner<B, H>
where
    H: PrefixSource<B>,
{
    type Input = RecordBatch;
    type Output = StepOut<B>;

    fn step(&self, batch: RecordBatch) -> StepOut<B> {
        let device = self.rpn.head.q_proj.weight.device();
        let samples = batch.records.len();
        let inputs = batch_inputs(&self.source, &batch, |t| t, (&device, &device));
        let result = run_step(&self.rpn, &self.settings, self.source.grid(), inputs, None);
        let counts = confusion(&result, self.settings.metric_threshold);
        StepOut {
            loss: result.loss,
            counts,
            samples,
        }
    }
}

/// Linear warm-up to `peak` over `warmup` steps, then cosine decay to 0 at `total`.
#[derive(Clone, Debug)]
pub struct WarmupCosine {
    peak: f64,
    warmup: usize,
    total: usize,
    step: usize,
}

impl WarmupCosine {
    /// A schedule of `total` steps, the first `warmup` of them warming up.
    pub fn new(peak: f64, warmup: usize, total: usize) -> Self {
        Self {
            peak,
            warmup,
            total: total.max(1),
            step: 0,
        }
    }

    /// The rate at 1-based step `t`.
    pub fn rate(&self, t: usize) -> f64 {
        if t <= self.warmup {
            return self.peak * t as f64 / self.warmup.max(1) as f64;
        }
        let progress =
            ((t - self.warmup) as f64 / (self.total - self.warmup).max(1) as f64).min(1.0);
        0.5 * self.peak * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

impl LrScheduler for WarmupCosine {
    type Record<B: Backend> = usize;
    fn step(&mut self) -> f64 {
        self.step += 1;
        self.rate(self.step)
    }
    fn to_record<B: Backend>(&self) -> usize {
        self.step
    }
    fn load_record<B: Backend>(mut self, record: usize) -> Self {
        self.step = record;
        self
    }
}

/// Burn 0.21 numbers the epochs of a resumed run wrongly in its metric logs
/// (from 1 again, truncating those logs, then skipping ahead). This wrapper
/// renumbers them: the n-th distinct epoch seen for a split is epoch
/// `first + n`.
struct ResumeAwareLogger {
    inner: FileMetricLogger,
    first: usize,
    seen: std::collections::HashMap<String, Vec<usize>>,
}

impl ResumeAwareLogger {
    fn true_epoch(&mut self, epoch: usize, split: &Split) -> usize {
        let seen = self.seen.entry(format!("{split:?}")).or_default();
        let position = match seen.iter().position(|&e| e == epoch) {
            Some(p) => p,
            None => {
                seen.push(epoch);
                seen.len() - 1
            }
        };
        self.first + position
    }
}

impl MetricLogger for ResumeAwareLogger {
    fn log(&mut self, update: MetricsUpdate, epoch: usize, split: &Split) {
        let epoch = self.true_epoch(epoch, split);
        self.inner.log(update, epoch, split)
    }
    fn read_numeric(
        &mut self,
        name: &str,
        epoch: usize,
        split: &Split,
    ) -> std::result::Result<Vec<NumericEntry>, String> {
        self.inner.read_numeric(name, epoch, split)
    }
    fn log_metric_definition(&mut self, definition: MetricDefinition) {
        self.inner.log_metric_definition(definition)
    }
    fn log_epoch_summary(&mut self, summary: EpochSummary) {
        self.inner.log_epoch_summary(summary)
    }
}

/// Per-epoch metrics of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Training loss.
    pub train_loss: Option<f64>,
    /// Held-back loss.
    pub valid_loss: Option<f64>,
    /// Held-back precision of `sigmoid > metric_threshold` vs foreground.
    pub valid_precision: Option<f64>,
    /// Held-back recall.
    pub valid_recall: Option<f64>,
    /// Held-back IoU.
    pub valid_iou: Option<f64>,
}

/// What a training run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TrainReport {
    /// Training samples.
    pub train_samples: usize,
    /// Held-back samples.
    pub valid_samples: usize,
    /// Trainable parameters of the RPN.
    pub parameters: usize,
    /// First epoch of this invocation (1 unless resumed).
    pub first_epoch: usize,
    /// Epochs with a checkpoint (fewer than configured when stopped early).
    pub completed_epochs: usize,
    /// Metrics per epoch (all epochs of the run).
    pub epochs: Vec<EpochMetrics>,
    /// The saved RPN.
    pub rpn_file: PathBuf,
}

/// Where a run keeps things.
pub struct RunPaths {
    /// The run folder.
    pub dir: PathBuf,
}

impl RunPaths {
    /// The resolved config.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    /// The trained RPN parameters.
    pub fn rpn(&self) -> PathBuf {
        self.dir.join("rpn.safetensors")
    }
    /// Per-epoch metrics.
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }
    /// burn-train's artifacts (checkpoints, logs).
    pub fn artifacts(&self) -> PathBuf {
        self.dir.join("train")
    }
    /// The last completed epoch with a checkpoint, if any.
    pub fn last_checkpoint(&self) -> Option<usize> {
        let dir = self.artifacts().join("checkpoint");
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                checkpoint_epoch(name.strip_prefix("model-")?)
            })
            .max()
    }
}

/// Checks labels against the config before any compute: sizes, maps the
/// sink rule needs, finite values, readable images.
pub fn check_records(
    records: &[LabelRecord],
    grid: Grid,
    config: &SdrpnConfig,
    images: &Path,
) -> Result<()> {
    if records.is_empty() {
        return Err(TrainError::config(
            "labels",
            "there are no labelled samples",
        ));
    }
    for r in records {
        let bad =
            |why: String| TrainError::config("labels", format!("sample {}: {why}", r.question_id));
        if r.grounding.len() != grid.len() || r.sink.len() != grid.len() {
            return Err(bad(format!(
                "maps have {} values, the model's grid {grid} needs {}",
                r.grounding.len(),
                grid.len()
            )));
        }
        if r.grounding.iter().chain(&r.sink).any(|v| !v.is_finite()) {
            return Err(bad("maps contain NaN or infinity".into()));
        }
        if matches!(config.labels.sink, SinkRule::MassiveActivation { .. }) && r.massive.is_none() {
            return Err(bad("the sink rule is massive_activation but the labels hold no massive maps; relabel with that rule".into()));
        }
        let path = images.join(&r.image);
        if !path.is_file() {
            return Err(bad(format!("image {} does not exist", path.display())));
        }
    }
    Ok(())
}

/// A training run to do.
pub struct TrainRequest<'a, H> {
    /// The host model (frozen).
    pub session: Arc<H>,
    /// Labelled samples.
    pub records: Vec<LabelRecord>,
    /// Folder the records' image paths are relative to.
    pub images: &'a Path,
    /// The method config (its `train` section drives the optimisation).
    pub config: &'a SdrpnConfig,
    /// The run folder.
    pub run_dir: &'a Path,
    /// Continue from the run's last checkpoint.
    pub resume: bool,
    /// Stop, as an interruption would, once this epoch is done (time-boxed
    /// runs; tests of `resume`).
    pub stop_after_epoch: Option<usize>,
    /// Copies of the host on further devices (empty: train on the
    /// session's device alone). With any, training is data-parallel over
    /// the session's device and theirs (burn-train's multi-device strategy,
    /// gradients summed on the session's device, which steps the
    /// optimiser): each global batch of `train.batch_size` is split evenly
    /// across the devices and each share's loss is normalised by the whole
    /// batch's valid tokens, so the result equals a one-device run with the
    /// same batch size up to float rounding. A copy may share the session's
    /// device (it then takes turns with the session on it).
    pub replicas: Vec<Arc<H>>,
}

/// Stops training when an epoch after `epoch` starts.
struct StopAfter<R> {
    inner: R,
    epoch: usize,
    interrupter: Interrupter,
}

impl<R: MetricsRendererTraining> MetricsRendererTraining for StopAfter<R> {
    fn update_train(&mut self, state: MetricState) {
        self.inner.update_train(state)
    }
    fn update_valid(&mut self, state: MetricState) {
        self.inner.update_valid(state)
    }
    fn render_train(&mut self, item: TrainingProgress, progress: Vec<ProgressType>) {
        if item.global_progress.items_processed > self.epoch {
            self.interrupter.stop(Some("stop_after_epoch reached"));
        }
        self.inner.render_train(item, progress)
    }
    fn render_valid(&mut self, item: TrainingProgress, progress: Vec<ProgressType>) {
        self.inner.render_valid(item, progress)
    }
    fn on_train_end(
        &mut self,
        summary: Option<LearnerSummary>,
    ) -> std::result::Result<(), Box<dyn core::error::Error>> {
        self.inner.on_train_end(summary)
    }
}

impl<R: MetricsRendererEvaluation> MetricsRendererEvaluation for StopAfter<R> {
    fn update_test(&mut self, name: EvaluationName, state: MetricState) {
        self.inner.update_test(name, state)
    }
    fn render_test(&mut self, item: EvaluationProgress, progress: Vec<ProgressType>) {
        self.inner.render_test(item, progress)
    }
    fn on_test_end(
        &mut self,
        summary: Option<LearnerSummary>,
    ) -> std::result::Result<(), Box<dyn core::error::Error>> {
        self.inner.on_test_end(summary)
    }
}

impl<R: MetricsRenderer> MetricsRenderer for StopAfter<R> {
    fn manual_close(&mut self) {
        self.inner.manual_close()
    }
    fn register_metric(&mut self, definition: MetricDefinition) {
        self.inner.register_metric(definition)
    }
}

/// Trains the RPN of `request.session` into `request.run_dir`.
///
/// With `resume`, the run continues from its last checkpoint and ends where
/// an uninterrupted run would (same data order, optimiser and schedule state).
pub fn train_rpn<B: Backend, H: TrainHost<B>>(
    request: TrainRequest<H>,
    renderer: impl MetricsRenderer + 'static,
) -> Result<TrainReport> {
    let TrainRequest {
        session,
        records,
        images,
        config,
        run_dir,
        resume,
        stop_after_epoch,
        replicas,
    } = request;
    let paths = RunPaths {
        dir: run_dir.to_path_buf(),
    };
    let _lock = crate::lock::FolderLock::acquire(run_dir, None, "sdrpn train")?;
    let grid = session.label_grid().map_err(|e| TrainError::host(&e))?;
    config.validate(session.num_layers(), session.num_heads(), grid)?;
    check_records(&records, grid, config, images)?;
    if resume {
        if let Ok(before) = SdrpnConfig::load(&paths.config()) {
            if &before != config {
                return Err(TrainError::config(
                    "resume",
                    format!(
                        "{} was started with other settings (its config.toml): resuming applies the stored ones only, so rerun with the same settings, start a new run folder, or drop --resume and add --force to start this one over",
                        run_dir.display()
                    ),
                ));
            }
        }
    }
    let start = if resume {
        paths.last_checkpoint().ok_or_else(|| {
            TrainError::config(
                "resume",
                format!(
                    "{} has no checkpoint to resume from",
                    paths.artifacts().display()
                ),
            )
        })?
    } else {
        if paths.artifacts().exists() {
            std::fs::remove_dir_all(paths.artifacts())
                .map_err(|e| TrainError::io(paths.artifacts(), e))?;
        }
        0
    };
    let made_from = RunProvenance {
        program: crate::provenance::program(),
        model: session.fingerprint().clone(),
        labels: records_hash(&records),
    };
    if resume {
        if let Some(before) = crate::provenance::read::<RunProvenance>(run_dir)? {
            let changed = before.differences(&made_from);
            if !changed.is_empty() {
                return Err(TrainError::config(
                    "resume",
                    format!(
                        "{} was trained from other inputs ({}); resuming would mix them: train into a new run folder, or drop --resume and add --force to start this one over",
                        run_dir.display(),
                        changed.join("; ")
                    ),
                ));
            }
        }
    }
    crate::provenance::write(run_dir, &made_from)?;
    config.save(&paths.config())?;

    let train = &config.train;
    let (train_set, valid_set) = split_records(records, train);
    if train_set.is_empty() || valid_set.is_empty() {
        return Err(TrainError::config(
            "train",
            format!(
                "{} training and {} held-back samples: need at least one of each (lower train.holdout or label more)",
                train_set.len(),
                valid_set.len()
            ),
        ));
    }
    let counts = (train_set.len(), valid_set.len());
    let batches_per_epoch = train_set.len().div_ceil(train.batch_size);
    let total = batches_per_epoch * train.epochs;
    let warmup = (train.warmup_ratio * total as f64).ceil() as usize;

    type AB<B> = burn::backend::Autodiff<B>;
    let rpn = session
        .init_rpn(config.rpn.branch_layer, config.rpn.twig_layers)
        .map_err(|e| TrainError::host(&e))?;
    let parameters = rpn.num_params();
    let devices: Vec<B::Device> = std::iter::once(session.device())
        .chain(replicas.iter().map(|r| r.device()))
        .collect();
    if devices.len() > 1 && train.batch_size % devices.len() != 0 {
        return Err(TrainError::config(
            "train.batch_size",
            format!(
                "{} does not split evenly across {} devices: use a multiple of the device count",
                train.batch_size,
                devices.len()
            ),
        ));
    }
    let source = HostPrefix::new(session, images.to_path_buf(), config.rpn.branch_layer)?
        .with_replicas(replicas);
    let model = RpnLearner::<AB<B>, HostPrefix<B, H>> {
        rpn: rpn.train::<AB<B>>().map(&mut Trainable),
        source,
        settings: StepSettings::of(config),
    };
    let optim = AdamWConfig::new()
        .with_beta_1(train.beta1 as f32)
        .with_beta_2(train.beta2 as f32)
        .with_epsilon(train.epsilon as f32)
        .with_weight_decay(train.weight_decay as f32)
        .init::<AB<B>, RpnLearner<AB<B>, HostPrefix<B, H>>>();
    let scheduler = WarmupCosine::new(train.lr, warmup, total);
    let loader_train = Arc::new(
        EpochLoader::<AB<B>>::new(train_set, train.batch_size, train.seed, true, start)
            .sharded(devices.len()),
    );
    let loader_valid = Arc::new(EpochLoader::<B>::new(
        valid_set,
        train.batch_size,
        train.seed,
        false,
        0,
    ));
    let interrupter = Interrupter::new();
    let guard = DivergenceGuard::new(interrupter.clone());
    let mut builder = SupervisedTraining::new(paths.artifacts(), loader_train, loader_valid)
        .metric_train_numeric(StatMetric::loss().guarded(guard.clone()))
        .metric_valid_numeric(StatMetric::loss())
        .metric_valid_numeric(StatMetric::precision())
        .metric_valid_numeric(StatMetric::recall())
        .metric_valid_numeric(StatMetric::iou())
        .metric_train_numeric(LearningRateMetric::new())
        .with_file_checkpointer(NamedMpkFileRecorder::<FullPrecisionSettings>::new())
        .with_checkpointing_strategy(KeepLastNCheckpoints::new(2))
        .with_metric_logger(ResumeAwareLogger {
            inner: FileMetricLogger::new(paths.artifacts()),
            first: start + 1,
            seen: Default::default(),
        })
        .with_application_logger(None)
        .with_interrupter(interrupter.clone())
        .renderer(StopAfter {
            inner: renderer,
            epoch: stop_after_epoch.unwrap_or(usize::MAX),
            interrupter,
        })
        .grads_accumulation(train.grad_accumulation)
        .num_epochs(train.epochs);
    if devices.len() > 1 {
        builder = builder.with_training_strategy(TrainingStrategy::Default(
            ExecutionStrategy::MultiDevice(devices, MultiDeviceOptim::OptimMainDevice),
        ));
    }
    if start > 0 {
        builder = builder.checkpoint(start);
    }
    let trained = builder.launch(Learner::new(model, optim, scheduler)).model;
    if let Some((epoch, iteration)) = guard.tripped() {
        return Err(diverged(&paths, epoch, iteration, train.lr));
    }
    save_rpn(&trained.rpn, &paths.rpn())?;

    let epochs = read_metrics(&paths.artifacts(), train.epochs);
    let lines: String = epochs
        .iter()
        .map(|e| format!("{}\n", serde_json::to_string(e).expect("serialises")))
        .collect();
    write_atomic(&paths.metrics(), lines.as_bytes())?;
    Ok(TrainReport {
        train_samples: counts.0,
        valid_samples: counts.1,
        parameters,
        first_epoch: start + 1,
        completed_epochs: paths.last_checkpoint().unwrap_or(0),
        epochs,
        rpn_file: paths.rpn(),
    })
}

/// The epoch of a burn-train checkpoint file (`model-3.mpk`, `optim-3.mpk`,
/// `scheduler-3.mpk` -> 3).
pub fn checkpoint_epoch(file_name: &str) -> Option<usize> {
    file_name
        .strip_suffix(".mpk")?
        .rsplit('-')
        .next()?
        .parse()
        .ok()
}

/// The error of a run whose loss became non-finite in `epoch` (1-based) at
/// `iteration`, after removing that epoch's and later checkpoints (their
/// weights are not finite), so the last one left is the last finite one.
fn diverged(paths: &RunPaths, epoch: usize, iteration: usize, lr: f64) -> TrainError {
    let dir = paths.artifacts().join("checkpoint");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if checkpoint_epoch(&name).is_some_and(|n| n >= epoch) {
                std::fs::remove_file(entry.path()).ok();
            }
        }
    }
    let resume = match paths.last_checkpoint() {
        Some(k) => {
            format!("; epoch {k}'s checkpoint is the last finite one (--resume continues from it)")
        }
        None => String::new(),
    };
    TrainError::config(
        "training",
        format!(
            "the training loss became NaN or infinite in epoch {epoch} (iteration {iteration}) with learning rate {lr}: training stopped and no RPN was saved; lower train.lr{resume}"
        ),
    )
}

/// Per-epoch means from burn-train's metric logs.
fn read_metrics(artifacts: &Path, epochs: usize) -> Vec<EpochMetrics> {
    let names = ["Loss", "Precision", "Recall", "IoU"];
    let summary = LearnerSummary::new(artifacts, &names).ok();
    let value = |split_valid: bool, name: &str, epoch: usize| -> Option<f64> {
        let s = summary.as_ref()?;
        let list = if split_valid {
            &s.metrics.valid
        } else {
            &s.metrics.train
        };
        let m = list.iter().find(|m| m.name == name)?;
        m.entries
            .iter()
            .find(|e| e.step == epoch)
            .map(|e| e.value)
            .filter(|v| v.is_finite())
    };
    (1..=epochs)
        .map(|epoch| EpochMetrics {
            epoch,
            train_loss: value(false, "Loss", epoch),
            valid_loss: value(true, "Loss", epoch),
            valid_precision: value(true, "Precision", epoch),
            valid_recall: value(true, "Recall", epoch),
            valid_iou: value(true, "IoU", epoch),
        })
        .collect()
}

/// Saves an RPN's parameters (all of them trainable) to safetensors.
pub fn save_rpn<B: Backend>(rpn: &LlamaRpn<B>, path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    let mut store = SafetensorsStore::from_file(&tmp).overwrite(true);
    rpn.save_into(&mut store)
        .map_err(|e| TrainError::format(&tmp, format!("cannot save the RPN: {e:?}")))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// A hash of labelled records: ids and both maps.
pub fn records_hash(records: &[LabelRecord]) -> String {
    let mut h = sdrpn_llava::fingerprint::Fnv64::default();
    for r in records {
        h.update(r.question_id.as_bytes());
        h.update(&[0]);
        for v in r.grounding.iter().chain(&r.sink) {
            h.update(&v.to_le_bytes());
        }
    }
    h.hex()
}

/// The fingerprint of a trained RPN: the hash of its weights file.
pub fn rpn_fingerprint(run_dir: &Path) -> Result<String> {
    let paths = RunPaths {
        dir: run_dir.to_path_buf(),
    };
    Ok(sdrpn_llava::fingerprint::file_hash(&paths.rpn())?)
}

/// A trained RPN: its run's config and parameters loaded onto `session`'s
/// geometry (the RPN is built from the host, then overwritten). An RPN
/// trained on another model is refused, or with `force` used with a warning
/// (never one trained for another visual grid).
pub fn load_rpn<B: Backend, H: TrainHost<B>>(
    session: &H,
    run_dir: &Path,
    force: bool,
) -> Result<(SdrpnConfig, LlamaRpn<B>)> {
    let paths = RunPaths {
        dir: run_dir.to_path_buf(),
    };
    crate::provenance::check_rpn_model(run_dir, session.fingerprint(), force)?;
    let config = SdrpnConfig::load(&paths.config())?;
    config.validate_for_model(session.num_layers(), session.num_heads())?;
    let mut rpn = session
        .init_rpn(config.rpn.branch_layer, config.rpn.twig_layers)
        .map_err(|e| TrainError::host(&e))?;
    let file = paths.rpn();
    if !file.is_file() {
        return Err(TrainError::format(
            &file,
            "does not exist: is this a finished `sdrpn train` run?",
        ));
    }
    let mut store = SafetensorsStore::from_file(&file);
    let applied = rpn
        .load_from(&mut store)
        .map_err(|e| TrainError::format(&file, format!("does not fit this model's RPN: {e:?}")))?;
    if !applied.missing.is_empty() || !applied.errors.is_empty() {
        return Err(TrainError::format(
            &file,
            format!(
                "does not fit this model's RPN: missing {:?}, errors {:?}",
                applied.missing, applied.errors
            ),
        ));
    }
    Ok((config, rpn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::B;
    use burn::data::dataloader::Progress;

    fn close(got: f64, want: f64) {
        assert!((got - want).abs() < 1e-12, "{got} != {want}");
    }

    #[test]
    fn warm_up_then_cosine_by_hand() {
        // Peak 1, 2 warm-up steps of 6: t / 2 up to step 2, then
        // 0.5 (1 + cos(pi (t - 2) / 4)): cos(pi/4) = 0.70711, cos(pi/2) = 0,
        // cos(3pi/4) = -0.70711, cos(pi) = -1; past the end it stays 0.
        let s = WarmupCosine::new(1.0, 2, 6);
        let want = [
            0.0,
            0.5,
            1.0,
            0.853_553_390_593_273_8,
            0.5,
            0.146_446_609_406_726_24,
            0.0,
            0.0,
        ];
        for (t, &w) in want.iter().enumerate() {
            close(s.rate(t), w);
        }
        // burn-train calls `step` once per optimiser step (1-based), and a
        // resumed run continues from the recorded step.
        let mut live = WarmupCosine::new(2e-4, 2, 6);
        let first: Vec<f64> = (0..3).map(|_| live.step()).collect();
        for (got, w) in first.into_iter().zip([1e-4, 2e-4, 2e-4 * want[3]]) {
            close(got, w);
        }
        let record = LrScheduler::to_record::<B>(&live);
        assert_eq!(record, 3);
        let mut resumed = LrScheduler::load_record::<B>(WarmupCosine::new(2e-4, 2, 6), record);
        close(resumed.step(), 1e-4);
    }

    #[test]
    fn held_back_metrics_pool_the_counts_of_all_batches() {
        // Two batches: tp 3, fp 1, fn 2 (2 samples) and tp 1, fp 5, fn 0
        // (6 samples). Pooled: precision 4/10, recall 4/6, IoU 4/12, loss
        // (0.5 * 2 + 1.5 * 6) / 8 = 1.25 (the batch means would be 0.458,
        // 0.8, 0.417 and 1.0).
        let stats = [
            StepStats {
                loss: 0.5,
                tp: 3.0,
                fp: 1.0,
                fn_: 2.0,
                samples: 2,
            },
            StepStats {
                loss: 1.5,
                tp: 1.0,
                fp: 5.0,
                fn_: 0.0,
                samples: 6,
            },
        ];
        let meta = || MetricMetadata {
            progress: Progress {
                items_processed: 1,
                items_total: 2,
            },
            global_progress: Progress {
                items_processed: 1,
                items_total: 1,
            },
            iteration: Some(1),
            lr: None,
        };
        let running = |metric: &StatMetric| match metric.running_value() {
            NumericEntry::Aggregated {
                aggregated_value, ..
            } => aggregated_value,
            NumericEntry::Value(v) => v,
        };
        for (mut metric, want) in [
            (StatMetric::precision(), 0.4),
            (StatMetric::recall(), 4.0 / 6.0),
            (StatMetric::iou(), 4.0 / 12.0),
            (StatMetric::loss(), 1.25),
        ] {
            for s in &stats {
                metric.update(s, &meta());
            }
            close(running(&metric), want);
        }
        // A batch with nothing predicted and nothing to find adds nothing
        // (no 0/0 pulled into the mean).
        let mut precision = StatMetric::precision();
        precision.update(&stats[0], &meta());
        precision.update(&StepStats::default(), &meta());
        close(running(&precision), 0.75);
    }
}
