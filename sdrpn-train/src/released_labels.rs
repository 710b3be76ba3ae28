//! The authors' released pseudo-labels (`llava_v1_5_{7b,13b}_pseudo_roi_release.pkl`)
//! imported into our label store, so that `sdrpn train` runs on them
//! unchanged (`sdrpn import-labels`).
//!
//! The file is one pickled list of dicts (layout and citations:
//! `docs/RELEASED_ARTIFACTS.md`), read as a stream ([`crate::pickle`]):
//! records are converted and written in shards as they arrive, never the
//! whole list at once. A record is mapped as the reference training
//! dataset reads it (`LLaVA/llava/train/train.py`:804-815 at `00876ac`):
//!
//! | pickle key | label record |
//! |---|---|
//! | `question_id` | `question_id` (a string; an int is written in decimal) |
//! | `prompt` (the human turn without `<image>`) | `question`; `prompt` is `"<image>\n" + prompt`, the turn the reference trains on |
//! | `text` | `answer` |
//! | `image` (relative to the image folder) | `image` |
//! | `grounding_attn_o2i` | `grounding` (map A) |
//! | `sink_attn` | `sink` (map S) |
//! | `grounding_attn_q2i` | not used (the reference trains on o2i only, l.833-842) |
//!
//! Token counts are not in the file: `answer_tokens` and `fed_back` are 0.
//! The released 7B grounding maps are already multiplied by
//! `sink_attn < 1e-3` (`model_vqa_label.py`:142-143); our trainer applies
//! the sink rule again, which changes nothing (a masked entry is 0 either
//! way). Maps may be float16 (7B), float32 or float64 (13B), flat over the
//! grid or 2-D `(rows, cols)`.
//!
//! A record that cannot be used (a missing key, a map of another size,
//! NaN, a repeated id) is skipped and logged with why in
//! `skipped-imported.jsonl`. An interrupted import loses at most the
//! unflushed shard: a rerun skips the ids already written. The folder
//! records its source in `imported.json`; an import of another file into it
//! is refused.

use crate::config::SdrpnConfig;
use crate::error::{write_atomic, Result, TrainError};
use crate::label_store::{LabelRecord, ShardWriter};
use crate::pickle::{read_streaming, PickleError, Value};
use sdrpn_core::Grid;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The shard worker name of imported labels.
pub const WORKER: &str = "imported";

/// The file an imported label folder records its source in.
pub const SOURCE_FILE: &str = "imported.json";

/// An import to do.
pub struct LabelImport<'a> {
    /// The pickle (its path, for the record and for errors).
    pub pickle: &'a Path,
    /// The label folder to write.
    pub out: &'a Path,
    /// The visual grid (`None`: read off the first usable record, which
    /// must then be 2-D or square).
    pub grid: Option<Grid>,
    /// The method config written as the folder's `config.toml` (the preset
    /// of the model that made the labels).
    pub config: &'a SdrpnConfig,
    /// Records per shard.
    pub shard_size: usize,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImportReport {
    /// Records read from the pickle.
    pub read: usize,
    /// Records written by this run.
    pub imported: usize,
    /// Records an earlier run had written already.
    pub already: usize,
    /// Records skipped, with why (`question_id` or `item N`).
    pub skipped: Vec<(String, String)>,
    /// Maps read, by numpy dtype (`f2`, `f4`, `f8`).
    pub dtypes: BTreeMap<String, usize>,
    /// The grid the maps were stored on.
    pub grid: Option<Grid>,
}

/// Where an imported folder's labels came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImportSource {
    /// The program that wrote it.
    pub program: String,
    /// The pickle, as given.
    pub pickle: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The config preset the folder was given.
    pub preset: String,
}

/// Imports the pickle read from `input` (`job.pickle`'s contents; pass a
/// progress-wrapped reader to show progress).
pub fn import_released_labels(job: &LabelImport, input: impl Read) -> Result<ImportReport> {
    if job.shard_size == 0 {
        return Err(TrainError::config("shard size", "must be at least 1"));
    }
    std::fs::create_dir_all(job.out).map_err(|e| TrainError::io(job.out, e))?;
    let _lock = crate::lock::FolderLock::acquire(job.out, None, "sdrpn import-labels")?;
    check_folder(job)?;
    let mut report = ImportReport {
        grid: job.grid,
        ..Default::default()
    };
    let mut writer = job
        .grid
        .map(|grid| ShardWriter::open(job.out, WORKER, grid))
        .transpose()?;
    let mut seen = HashSet::new();
    let result = read_streaming(input, |item: Value| -> std::result::Result<(), Failure> {
        let index = report.read;
        report.read += 1;
        let id = item_id(&item).unwrap_or_else(|| format!("item {index}"));
        let record = match convert(&item, &mut report) {
            Ok(r) => r,
            Err(why) => {
                report.skipped.push((id, why));
                return Ok(());
            }
        };
        if !seen.insert(record.question_id.clone()) {
            report.skipped.push((id, "a repeated question_id".into()));
            return Ok(());
        }
        if writer.is_none() {
            let grid = report.grid.expect("convert sets the grid");
            writer = Some(ShardWriter::open(job.out, WORKER, grid)?);
        }
        let w = writer.as_mut().expect("opened above");
        if w.is_done(&record.question_id) {
            report.already += 1;
            return Ok(());
        }
        w.push(record)?;
        report.imported += 1;
        if w.buffered() >= job.shard_size {
            w.flush()?;
        }
        Ok(())
    });
    if let Some(w) = writer.as_mut() {
        // What was converted before an error is kept: a rerun goes on.
        w.flush()?;
        for (id, why) in &report.skipped {
            w.skip(id, why)?;
        }
    }
    result.map_err(|e| match e {
        Failure::Pickle(e) => TrainError::format(job.pickle, e.to_string()),
        Failure::Store(e) => e,
    })?;
    if report.imported + report.already == 0 {
        return Err(TrainError::format(
            job.pickle,
            format!(
                "none of its {} records could be used (first: {})",
                report.read,
                report.skipped.first().map_or(
                    "the file holds no records".to_string(),
                    |(id, why)| format!("{id}: {why}")
                )
            ),
        ));
    }
    Ok(report)
}

/// Why reading stopped: the pickle, or the store.
enum Failure {
    Pickle(PickleError),
    Store(TrainError),
}

impl From<PickleError> for Failure {
    fn from(e: PickleError) -> Self {
        Failure::Pickle(e)
    }
}

impl From<TrainError> for Failure {
    fn from(e: TrainError) -> Self {
        Failure::Store(e)
    }
}

/// Refuses a folder that holds labels of another source; records this one.
fn check_folder(job: &LabelImport) -> Result<()> {
    if crate::provenance::read::<serde_json::Value>(job.out)?.is_some() {
        return Err(TrainError::config(
            "label folder",
            format!(
                "{} holds labels made by `sdrpn label`; import into a new folder (mixing the two would train on two models' maps)",
                job.out.display()
            ),
        ));
    }
    let bytes = std::fs::metadata(job.pickle)
        .map_err(|e| TrainError::io(job.pickle, e))?
        .len();
    let now = ImportSource {
        program: crate::provenance::program(),
        pickle: job.pickle.to_path_buf(),
        bytes,
        preset: job.config.preset.clone(),
    };
    let path = job.out.join(SOURCE_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let before: ImportSource =
            serde_json::from_str(&text).map_err(|e| TrainError::format(&path, e.to_string()))?;
        let same_file =
            before.pickle.file_name() == now.pickle.file_name() && before.bytes == bytes;
        if !same_file || before.preset != now.preset {
            return Err(TrainError::config(
                "label folder",
                format!(
                    "{} holds labels imported from {} ({} bytes, preset {}); this import is of {} ({bytes} bytes, preset {}): use a new --out folder",
                    job.out.display(),
                    before.pickle.display(),
                    before.bytes,
                    before.preset,
                    now.pickle.display(),
                    now.preset
                ),
            ));
        }
    }
    let text = serde_json::to_string_pretty(&now).expect("serialises");
    write_atomic(&path, text.as_bytes())?;
    job.config.save(&job.out.join("config.toml"))
}

/// The record's `question_id`, when it has a usable one.
fn item_id(item: &Value) -> Option<String> {
    match field(item, "question_id")? {
        Value::Str(s) => Some(s.to_string()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The value of `key` in a dict item.
fn field(item: &Value, key: &str) -> Option<Value> {
    let Value::Dict(entries) = item else {
        return None;
    };
    let entries = entries.borrow();
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v.clone())
}

fn text_field(item: &Value, key: &str) -> std::result::Result<String, String> {
    match field(item, key) {
        Some(Value::Str(s)) => Ok(s.to_string()),
        Some(other) => Err(format!("{key} is a {}, not a string", other.kind())),
        None => Err(format!("no {key}")),
    }
}

/// One pickle item as a label record, or why it cannot be one. Sets the
/// report's grid from the first usable map when none was given.
fn convert(item: &Value, report: &mut ImportReport) -> std::result::Result<LabelRecord, String> {
    if !matches!(item, Value::Dict(_)) {
        return Err(format!("a {}, not a dict", item.kind()));
    }
    let question_id = item_id(item).ok_or("no question_id string")?;
    let question = text_field(item, "prompt")?;
    let answer = text_field(item, "text")?;
    let image = text_field(item, "image")?;
    let mut map = |key: &str| -> std::result::Result<Vec<f32>, String> {
        let value = field(item, key).ok_or_else(|| format!("no {key}"))?;
        let array = value.ndarray().map_err(|e| format!("{key}: {e}"))?;
        let grid = match report.grid {
            Some(g) => g,
            None => grid_of(&array.shape).map_err(|e| format!("{key}: {e}"))?,
        };
        let fits = match array.shape[..] {
            [n] => n == grid.len(),
            [r, c] => r == grid.rows && c == grid.cols,
            _ => false,
        };
        if !fits {
            return Err(format!(
                "{key} has shape {:?}; the grid {grid} needs ({},) or ({}, {})",
                array.shape,
                grid.len(),
                grid.rows,
                grid.cols
            ));
        }
        if let Some(i) = array.values.iter().position(|v| !v.is_finite()) {
            return Err(format!("{key} holds {} at {i}", array.values[i]));
        }
        report.grid = Some(grid);
        *report.dtypes.entry(array.dtype.clone()).or_default() += 1;
        Ok(array.values)
    };
    let grounding = map("grounding_attn_o2i")?;
    let sink = map("sink_attn")?;
    Ok(LabelRecord {
        question_id,
        image,
        prompt: format!("<image>\n{question}"),
        question,
        answer,
        answer_tokens: 0,
        fed_back: 0,
        grounding,
        sink,
        massive: None,
    })
}

/// The grid of a map's shape: `(rows, cols)`, or a square of `(n,)`.
fn grid_of(shape: &[usize]) -> std::result::Result<Grid, String> {
    let bad = || format!("shape {shape:?} names no grid: pass the grid (--grid ROWSxCOLS)");
    match *shape {
        [r, c] => Grid::new(r, c).map_err(|_| bad()),
        [n] => {
            let side = (n as f64).sqrt().round() as usize;
            if side * side != n {
                return Err(bad());
            }
            Grid::new(side, side).map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}
