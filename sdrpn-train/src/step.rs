//! One training / validation step of the RPN: frozen prefix (no gradient),
//! RPN forward, labels built on the fly from the stored maps, loss, and the
//! counts behind precision / recall / IoU.

use crate::config::{SdrpnConfig, SinkRule};
use crate::dataset::RecordBatch;
use crate::label_store::LabelRecord;
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use sdrpn_core::denoise::{denoise, sinks_from_attention};
use sdrpn_core::host::PrefixStates;
use sdrpn_core::labels::{build_labels, LabelBatch, LabelConfig};
use sdrpn_core::loss::LossKind;
use sdrpn_core::Grid;
use sdrpn_core::Positions;
use sdrpn_llava::host::LlamaRpn;
use std::fmt::Debug;

/// The frozen part of the host: prompt -> output of base layer K-1.
pub trait PrefixSource<B: Backend>: Clone + Debug + Send + Sync + 'static {
    /// Frozen-prefix states of one labelled sample (`[1, T, D]` on
    /// `device`, rotary positions, the query position and the visual
    /// positions). Panics with the sample id when its image can no longer be
    /// read (images are checked before training).
    fn prefix(&self, record: &LabelRecord, device: &B::Device) -> PrefixStates<B>;
    /// The visual grid.
    fn grid(&self) -> Grid;
}

/// Settings a step needs (a copy of the relevant config parts).
#[derive(Clone, Debug)]
pub struct StepSettings {
    /// Loss.
    pub loss: LossKind,
    /// Label thresholds.
    pub labels: LabelConfig,
    /// Sink rule.
    pub sink: SinkRule,
    /// Gradient accumulation (the loss is divided by it for backward).
    pub accumulation: usize,
    /// Threshold on sigmoid(logits) for the metrics.
    pub metric_threshold: f64,
    /// Global gradient-norm clip.
    pub grad_clip: Option<f64>,
}

impl StepSettings {
    /// The step settings of a config.
    pub fn of(config: &SdrpnConfig) -> Self {
        Self {
            loss: config.train.loss,
            labels: config.labels.thresholds.clone(),
            sink: config.labels.sink.clone(),
            accumulation: config.train.grad_accumulation,
            metric_threshold: config.train.metric_threshold,
            grad_clip: config.train.grad_clip,
        }
    }
}

/// Tensors of one batch.
pub struct BatchInputs<B: Backend> {
    /// Frozen-prefix states, right-padded, `[N, T, D]`.
    pub hidden: Tensor<B, 3>,
    /// Their rotary positions (padding continues each sample's).
    pub positions: Positions,
    /// Query positions `[N]`.
    pub query: Tensor<B, 1, Int>,
    /// Visual positions `[N, P]`.
    pub visual: Tensor<B, 2, Int>,
    /// Grounding maps `[N, P]`.
    pub grounding: Tensor<B, 2>,
    /// Sink maps `[N, P]`.
    pub sink: Tensor<B, 2>,
    /// Massive-activation maps `[N, P]`, when stored.
    pub massive: Option<Tensor<B, 2>>,
}

fn rows<B: Backend, R: std::borrow::Borrow<LabelRecord>>(
    records: &[R],
    pick: impl Fn(&LabelRecord) -> &[f32],
    device: &B::Device,
) -> Tensor<B, 2> {
    let p = pick(records[0].borrow()).len();
    let values: Vec<f32> = records
        .iter()
        .flat_map(|r| pick(r.borrow()).to_vec())
        .collect();
    Tensor::from_data(TensorData::new(values, [records.len(), p]), device)
}

/// Builds the batch tensors: prefixes on the source's backend `C` (on
/// `at`, the inner device of `device`), lifted to `B` by `lift`
/// (`Tensor::from_inner` when training).
pub fn batch_inputs<C: Backend, B: Backend>(
    source: &impl PrefixSource<C>,
    batch: &RecordBatch,
    lift: impl Fn(Tensor<C, 3>) -> Tensor<B, 3>,
    (at, device): (&C::Device, &B::Device),
) -> BatchInputs<B> {
    let prefixes: Vec<_> = batch.records.iter().map(|r| source.prefix(r, at)).collect();
    let t_max = prefixes
        .iter()
        .map(|s| s.hidden.dims()[1])
        .max()
        .unwrap_or(0);
    let padded: Vec<Tensor<C, 3>> = prefixes
        .iter()
        .map(|s| {
            let h = &s.hidden;
            let [n, t, d] = h.dims();
            if t == t_max {
                h.clone()
            } else {
                Tensor::cat(
                    vec![h.clone(), Tensor::zeros([n, t_max - t, d], &h.device())],
                    1,
                )
            }
        })
        .collect();
    let n = prefixes.len();
    let query: Vec<i64> = prefixes.iter().map(|s| s.query as i64).collect();
    let p = prefixes[0].visual.len();
    let visual: Vec<i64> = prefixes
        .iter()
        .flat_map(|s| s.visual.clone().map(|i| i as i64))
        .collect();
    let axes = match &prefixes[0].positions {
        Positions::Axes(samples) | Positions::LeftPadded { axes: samples, .. } => samples[0].len(),
        Positions::Sequential { .. } => 1,
    };
    let per_sample: Vec<Positions> = prefixes.iter().map(|s| s.positions.clone()).collect();
    let positions = Positions::batch(&per_sample, t_max, axes);
    let records = &batch.records;
    BatchInputs {
        hidden: lift(Tensor::cat(padded, 0)),
        positions,
        query: Tensor::from_data(TensorData::new(query, [n]), device),
        visual: Tensor::from_data(TensorData::new(visual, [n, p]), device),
        grounding: rows(records, |r| &r.grounding, device),
        sink: rows(records, |r| &r.sink, device),
        massive: records[0]
            .massive
            .is_some()
            .then(|| rows(records, |r| r.massive.as_deref().unwrap_or(&[]), device)),
    }
}

/// The denoised grounding maps of a batch under the sink rule.
pub fn denoised<B: Backend>(inputs: &BatchInputs<B>, sink: &SinkRule) -> Tensor<B, 2> {
    denoise_maps(
        inputs.grounding.clone(),
        inputs.sink.clone(),
        inputs.massive.clone(),
        sink,
    )
}

/// Grounding maps `[N, P]` with the sinks of `sink_maps` / `massive`
/// (`[N, P]`, whichever the rule reads) zeroed.
fn denoise_maps<B: Backend>(
    grounding: Tensor<B, 2>,
    sink_maps: Tensor<B, 2>,
    massive: Option<Tensor<B, 2>>,
    sink: &SinkRule,
) -> Tensor<B, 2> {
    match sink {
        SinkRule::Off => grounding,
        SinkRule::AttentionProxy { tau } => {
            denoise(grounding, sinks_from_attention(sink_maps, *tau))
        }
        SinkRule::MassiveActivation { threshold, .. } => {
            let massive = massive.expect("massive maps are checked to exist before training");
            denoise(grounding, massive.greater_elem(*threshold as f32))
        }
    }
}

/// The pseudo-labels training builds from stored records under `config`
/// (sink rule, thresholds), one `Vec` per record: for measuring labels
/// against ground truth.
pub fn record_labels<B: Backend>(
    records: &[LabelRecord],
    config: &SdrpnConfig,
    grid: Grid,
    device: &B::Device,
) -> crate::error::Result<Vec<Vec<sdrpn_core::labels::Label>>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let clean = stored_denoised::<B, _>(records, &config.labels.sink, device);
    Ok(build_labels(clean, grid, &config.labels.thresholds)?.to_labels())
}

/// The denoised grounding maps `[N, P]` of stored records (at least one)
/// under the sink rule.
fn stored_denoised<B: Backend, R: std::borrow::Borrow<LabelRecord>>(
    records: &[R],
    sink: &SinkRule,
    device: &B::Device,
) -> Tensor<B, 2> {
    let massive = records[0]
        .borrow()
        .massive
        .is_some()
        .then(|| rows::<B, _>(records, |r| r.massive.as_deref().unwrap_or(&[]), device));
    denoise_maps::<B>(
        rows(records, |r| &r.grounding, device),
        rows(records, |r| &r.sink, device),
        massive,
        sink,
    )
}

/// Loss, labels and logits of a batch.
pub struct StepResult<B: Backend> {
    /// The loss (mean over valid tokens of the batch), `[1]`.
    pub loss: Tensor<B, 1>,
    /// What the gradient is taken of, `[1]`: [`StepResult::loss`], or on
    /// several devices the batch's summed loss over the valid tokens of the
    /// global batch it is a share of.
    pub objective: Tensor<B, 1>,
    /// RPN logits `[N, P]`.
    pub logits: Tensor<B, 2>,
    /// Labels built on the fly.
    pub labels: LabelBatch<B>,
}

/// What the loss compares the logits with, and over which tokens
/// (`[N, P]` each): the 0/1 labels over the valid tokens (BCE, focal), or
/// the denoised map `clean` normalised by its maximum over every token of a
/// non-rejected sample (MSE).
fn loss_target<B: Backend>(
    loss: LossKind,
    clean: Tensor<B, 2>,
    labels: &LabelBatch<B>,
) -> (Tensor<B, 2>, Tensor<B, 2, Bool>) {
    match loss {
        LossKind::Mse => {
            let [n, p] = clean.dims();
            let max = clean.clone().max_dim(1).clamp_min(1e-12);
            let kept: Tensor<B, 2, Bool> = labels
                .rejected
                .clone()
                .bool_not()
                .reshape([n, 1])
                .expand([n, p]);
            (clean / max, kept)
        }
        _ => (labels.target.clone(), labels.valid.clone()),
    }
}

/// The number of tokens the loss of `records` as one batch averages over
/// (labels built from their stored maps under `settings`).
pub fn loss_tokens<B: Backend>(
    records: &[std::sync::Arc<LabelRecord>],
    settings: &StepSettings,
    grid: Grid,
    device: &B::Device,
) -> f64 {
    let clean = stored_denoised::<B, _>(records, &settings.sink, device);
    let labels = build_labels(clean.clone(), grid, &settings.labels)
        .expect("label maps are checked before training");
    let (_, mask) = loss_target(settings.loss, clean, &labels);
    let count = mask.int().sum().into_data().convert::<i64>();
    count.to_vec::<i64>().map_or(0, |v| v[0]) as f64
}

/// Runs the RPN on a batch and scores it; `global_tokens`: on several
/// devices, [`loss_tokens`] of the global batch this one is a share of.
pub fn run_step<B: Backend>(
    rpn: &LlamaRpn<B>,
    settings: &StepSettings,
    grid: Grid,
    inputs: BatchInputs<B>,
    global_tokens: Option<f64>,
) -> StepResult<B> {
    let clean = denoised(&inputs, &settings.sink);
    let labels = build_labels(clean.clone(), grid, &settings.labels)
        .expect("label maps are checked before training");
    let logits = rpn.forward(
        inputs.hidden,
        &inputs.positions,
        inputs.query,
        inputs.visual,
    );
    let (target, mask) = loss_target(settings.loss, clean, &labels);
    let loss = settings
        .loss
        .loss(logits.clone(), target.clone(), mask.clone());
    let objective = match global_tokens {
        None => loss.clone(),
        Some(tokens) => settings.loss.summed(logits.clone(), target, mask) / tokens.max(1.0),
    };
    StepResult {
        loss,
        objective,
        logits,
        labels,
    }
}

/// True positives, false positives and false negatives of `sigmoid(logits)
/// > threshold` against the foreground, over valid tokens: `[3]`.
pub fn confusion<B: Backend>(result: &StepResult<B>, threshold: f64) -> Tensor<B, 1> {
    let predicted = sigmoid(result.logits.clone().detach()).greater_elem(threshold as f32);
    let fg = result.labels.target.clone().greater_elem(0.5);
    let valid = result.labels.valid.clone();
    let count = |m: Tensor<B, 2, Bool>| m.bool_and(valid.clone()).float().sum();
    Tensor::cat(
        vec![
            count(predicted.clone().bool_and(fg.clone())),
            count(predicted.clone().bool_and(fg.clone().bool_not())),
            count(predicted.bool_not().bool_and(fg)),
        ],
        0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::B;

    #[test]
    fn confusion_counts_thresholded_tokens_against_the_foreground() {
        let device = Default::default();
        // Sample 1: sigmoid > 0.5 at logits 2, 3, 0.5; token 3 is not valid.
        // Sample 2: predicted at logits 1, 1; foreground at tokens 0..3.
        let logits =
            Tensor::<B, 2>::from_floats([[2.0, -1.0, 3.0, 0.5], [-2.0, 1.0, 1.0, -3.0]], &device);
        let target =
            Tensor::<B, 2>::from_floats([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]], &device);
        let valid = Tensor::<B, 2, Bool>::from_bool(
            TensorData::new(
                vec![true, true, true, false, true, true, true, true],
                [2, 4],
            ),
            &device,
        );
        let result = StepResult {
            loss: Tensor::zeros([1], &device),
            objective: Tensor::zeros([1], &device),
            logits,
            labels: LabelBatch {
                target,
                valid,
                rejected: Tensor::from_bool(TensorData::new(vec![false, false], [2]), &device),
            },
        };
        // tp: (1, 0), (2, 1), (2, 2) = 3; fp: (1, 2) = 1 ((1, 3) is not
        // valid); fn: (1, 1), (2, 0) = 2.
        let counts = confusion(&result, 0.5).into_data().to_vec::<f32>().unwrap();
        assert_eq!(counts, vec![3.0, 1.0, 2.0]);
        // Threshold 0.8 keeps only logits 2 and 3 (sigmoid 0.88, 0.95; 0.5
        // and 1 give 0.62, 0.73): tp (1, 0); fp (1, 2); fn (1, 1), (2, 0),
        // (2, 1), (2, 2).
        let counts = confusion(&result, 0.8).into_data().to_vec::<f32>().unwrap();
        assert_eq!(counts, vec![1.0, 1.0, 4.0]);
    }
}
