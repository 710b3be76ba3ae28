//! Every output folder records what made it (`provenance.json`), and a
//! resume or a reuse checks it: a label folder its model and labelling
//! settings, a training run its model and labels, an RPN the model it was
//! trained on. A mismatch is refused with what changed and what to do.

use crate::config::SdrpnConfig;
use crate::error::{write_atomic, Result, TrainError};
use sdrpn_llava::fingerprint::ModelFingerprint;
use sdrpn_llava::session::PromptOptions;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The file every output folder records its inputs in.
pub const FILE: &str = "provenance.json";

/// What a label folder's maps were made from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelProvenance {
    /// The program that wrote it.
    pub program: String,
    /// The host model.
    pub model: ModelFingerprint,
    /// How prompts were built.
    pub prompt: PromptOptions,
    /// The settings that shape the stored maps (heads, sink rule, answer
    /// length; not the thresholds, which apply at training time).
    pub maps: serde_json::Value,
}

impl LabelProvenance {
    /// The provenance of labelling with `model` and `config`.
    pub fn new(model: &ModelFingerprint, config: &SdrpnConfig) -> Self {
        let l = &config.labels;
        Self {
            program: program(),
            model: model.clone(),
            prompt: config.prompt,
            maps: serde_json::json!({
                "grounding_heads": l.grounding_heads.to_string(),
                "sink_heads": l.sink_heads.to_string(),
                "sink": serde_json::to_value(&l.sink).unwrap_or_default(),
                "max_new_tokens": l.max_new_tokens,
            }),
        }
    }

    fn differences(&self, other: &Self) -> Vec<String> {
        let mut out = model_changes(&self.model, &other.model);
        if self.prompt != other.prompt {
            out.push(format!(
                "prompt options {:?} vs {:?}",
                self.prompt, other.prompt
            ));
        }
        if self.maps != other.maps {
            out.push(format!(
                "labelling settings {} vs {}",
                self.maps, other.maps
            ));
        }
        out
    }
}

/// What a trained RPN was made from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunProvenance {
    /// The program that wrote it.
    pub program: String,
    /// The host model the RPN was trained on (and must be used with).
    pub model: ModelFingerprint,
    /// Hash of the labelled records it was trained on.
    pub labels: String,
}

impl RunProvenance {
    /// What differs from `other`, in words (empty when equal).
    pub fn differences(&self, other: &Self) -> Vec<String> {
        let mut out = model_changes(&self.model, &other.model);
        if self.labels != other.labels {
            out.push("the labelled records differ".into());
        }
        out
    }
}

/// This program and version.
pub fn program() -> String {
    format!("sdrpn {}", env!("CARGO_PKG_VERSION"))
}

/// Reads a folder's provenance, if it has one.
pub fn read<T: for<'de> Deserialize<'de>>(dir: &Path) -> Result<Option<T>> {
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| TrainError::format(&path, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TrainError::io(&path, e)),
    }
}

/// Writes a folder's provenance atomically.
pub fn write<T: Serialize>(dir: &Path, provenance: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(provenance).expect("provenance serialises");
    write_atomic(&dir.join(FILE), text.as_bytes())
}

/// Checks a label folder about to be resumed against what labelling would
/// use now, or records it for a new folder. A mismatch is refused, or with
/// `force` the folder's labels (every worker's) are discarded and it starts
/// afresh.
pub fn check_label_folder(dir: &Path, now: &LabelProvenance, force: bool) -> Result<()> {
    let Some(before) = read::<LabelProvenance>(dir)? else {
        return write(dir, now);
    };
    let changed = before.differences(now);
    if changed.is_empty() {
        return Ok(());
    }
    if !force {
        return Err(TrainError::config(
            "label folder",
            format!(
                "{} holds labels made from other inputs ({}); resuming would mix them: label into a new --out folder, or add --force to discard them and label afresh there",
                dir.display(),
                changed.join("; ")
            ),
        ));
    }
    let removed = crate::label_store::clear(dir)?;
    eprintln!(
        "{} held labels made from other inputs ({}): its {removed} label files were removed and it is labelled afresh",
        dir.display(),
        changed.join("; ")
    );
    write(dir, now)
}

/// What differs between the model an output was made with and `now`, each
/// line prefixed `model: `.
pub fn model_changes(made_with: &ModelFingerprint, now: &ModelFingerprint) -> Vec<String> {
    made_with
        .differences(now)
        .into_iter()
        .map(|d| format!("model: {d}"))
        .collect()
}

/// Refuses an input made with another model than `now`: `made_with` is the
/// model its provenance names, `refusal` words the error from the
/// differences. With `force` the input is used anyway, with a warning
/// naming `what`, unless the visual grids differ (an input made for another
/// grid cannot be used at all).
fn refuse_other_model(
    made_with: Option<ModelFingerprint>,
    now: &ModelFingerprint,
    what: &str,
    force: bool,
    refusal: impl FnOnce(String) -> String,
) -> Result<()> {
    let Some(made_with) = made_with else {
        return Ok(());
    };
    let changed = made_with.differences(now).join("; ");
    if changed.is_empty() {
        return Ok(());
    }
    if !force || made_with.grid != now.grid {
        let mut message = refusal(changed);
        if force {
            message.push_str(" (--force cannot override another visual grid)");
        }
        return Err(TrainError::config(what, message));
    }
    eprintln!("warning: --force: using {what} made with another model ({changed})");
    Ok(())
}

/// Refuses an RPN trained on another model than `model` (with `force`:
/// warns, unless the grids differ).
pub fn check_rpn_model(run_dir: &Path, model: &ModelFingerprint, force: bool) -> Result<()> {
    let made_with = read::<RunProvenance>(run_dir)?.map(|r| r.model);
    refuse_other_model(made_with, model, "RPN", force, |changed| {
        format!(
            "the RPN in {} was trained on another model ({changed}); use it with that model, train one for this model, or add --force to use it anyway",
            run_dir.display()
        )
    })
}

/// Refuses labels made with another model than `model` (training on them
/// would distil another model's attention; with `force`: warns, unless the
/// grids differ).
pub fn check_labels_model(labels_dir: &Path, model: &ModelFingerprint, force: bool) -> Result<()> {
    let made_with = read::<LabelProvenance>(labels_dir)?.map(|l| l.model);
    refuse_other_model(made_with, model, "labels", force, |changed| {
        format!(
            "the labels in {} were made with another model ({changed}); train with the model that made them, label again with this one, or add --force to train on them anyway",
            labels_dir.display()
        )
    })
}
