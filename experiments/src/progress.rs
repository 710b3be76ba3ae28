//! Progress bars for long jobs (labelling, training, evaluation).

use burn::train::metric::{MetricDefinition, MetricId};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use burn::train::LearnerSummary;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;

/// A bar with rate and ETA.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    styled(len, what, "{pos}/{len}", "{per_sec}] {msg}")
}

/// A bar over the bytes of a file read (wrap the reader with
/// `ProgressBar::wrap_read`).
pub fn bytes_bar(len: u64, what: &str) -> ProgressBar {
    styled(len, what, "{bytes}/{total_bytes}", "{bytes_per_sec}]")
}

/// `what`, a bar, the `count`, elapsed < ETA, then `rate`.
fn styled(len: u64, what: &str, count: &str, rate: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let template =
        format!("{what} {{bar:30}} {count} [{{elapsed_precise}} < {{eta_precise}}, {rate}");
    bar.set_style(ProgressStyle::with_template(&template).expect("valid template"));
    bar
}

/// burn-train renderer: one bar per epoch and split with the running loss.
pub struct TrainBar {
    bar: Option<ProgressBar>,
    split: &'static str,
    epoch: usize,
    names: HashMap<MetricId, String>,
    latest: HashMap<String, String>,
}

impl TrainBar {
    /// A renderer that draws nothing until training starts.
    pub fn new() -> Self {
        Self {
            bar: None,
            split: "",
            epoch: 0,
            names: HashMap::new(),
            latest: HashMap::new(),
        }
    }

    fn record(&mut self, state: MetricState) {
        if let MetricState::Numeric(entry, _) = state {
            if let Some(name) = self.names.get(&entry.metric_id) {
                // "epoch 0.51 - batch 0.47": keep the epoch's running value.
                let running = entry
                    .serialized_entry
                    .formatted
                    .split(" - ")
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("epoch ");
                self.latest.insert(name.clone(), running.to_string());
            }
        }
    }

    fn render(&mut self, split: &'static str, item: TrainingProgress) {
        let epoch = item.global_progress.items_processed;
        let Some(progress) = item.progress else {
            return;
        };
        if self.bar.is_none() || self.split != split || self.epoch != epoch {
            if let Some(b) = self.bar.take() {
                b.finish();
            }
            self.bar = Some(bar(
                progress.items_total as u64,
                &format!("{split} epoch {epoch}/{}", item.global_progress.items_total),
            ));
            self.split = split;
            self.epoch = epoch;
        }
        let b = self.bar.as_ref().expect("set above");
        b.set_position(progress.items_processed as u64);
        let mut parts: Vec<String> = self
            .latest
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        parts.sort();
        b.set_message(parts.join(", "));
    }
}

impl Default for TrainBar {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsRendererTraining for TrainBar {
    fn update_train(&mut self, state: MetricState) {
        self.record(state)
    }
    fn update_valid(&mut self, state: MetricState) {
        self.record(state)
    }
    fn render_train(&mut self, item: TrainingProgress, _progress: Vec<ProgressType>) {
        self.render("train", item)
    }
    fn render_valid(&mut self, item: TrainingProgress, _progress: Vec<ProgressType>) {
        self.render("valid", item)
    }
    fn on_train_end(
        &mut self,
        _summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
        Ok(())
    }
}

impl MetricsRendererEvaluation for TrainBar {
    fn update_test(&mut self, _name: EvaluationName, state: MetricState) {
        self.record(state)
    }
    fn render_test(&mut self, item: EvaluationProgress, _progress: Vec<ProgressType>) {
        self.render("test", (&item).into())
    }
    fn on_test_end(
        &mut self,
        _summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        Ok(())
    }
}

impl MetricsRenderer for TrainBar {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id.clone(), definition.name.clone());
    }
}
