//! The pseudo-label store written by `sdrpn label` and read by `sdrpn train`.
//!
//! A label folder holds:
//! - `config.toml`: the resolved config of the labelling run;
//! - `labels-<worker>-<seq>.safetensors`: shards, each self-contained: tensors
//!   `grounding` `[n, P]` (map A), `sink` `[n, P]` (map S), optionally
//!   `massive` `[n, P]` (max |RMS-normalised hidden| over the massive-activation
//!   dimensions), and in the header metadata `records` (a JSON array of the
//!   per-sample fields below, in row order) and `grid` (`RxC`). Shards are
//!   written to a temp file and renamed, so a shard is either complete or absent.
//! - `index-<worker>.jsonl`: one line per labelled sample (record fields plus
//!   `shard` and `row`), rebuilt from the shards at the start of each run;
//! - `skipped-<worker>.jsonl`: samples that could not be labelled, with why;
//! - `source.json`: `{"images": ABSOLUTE_FOLDER}`, where the labelling read
//!   its images, so that training finds them without `--images`.
//!
//! Maps are stored raw (not denoised, not thresholded), so label ablations
//! need no relabelling: the trainer builds labels on the fly.

use crate::error::{Result, TrainError};
use safetensors::{Dtype, SafeTensors};
use sdrpn_core::Grid;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One labelled sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelRecord {
    /// Question id.
    pub question_id: String,
    /// Image path relative to the image folder.
    pub image: String,
    /// The question.
    pub question: String,
    /// The prompt the model saw.
    pub prompt: String,
    /// The model's own greedy answer.
    pub answer: String,
    /// Generated tokens (EOS included when produced).
    pub answer_tokens: usize,
    /// Tokens fed back, i.e. decode steps averaged into the maps.
    pub fed_back: usize,
    /// Grounding map A, `P` values.
    #[serde(skip)]
    pub grounding: Vec<f32>,
    /// Sink map S, `P` values.
    #[serde(skip)]
    pub sink: Vec<f32>,
    /// Massive-activation map, `P` values, when the config asks for it.
    #[serde(skip)]
    pub massive: Option<Vec<f32>>,
}

/// A sample that was skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Question id.
    pub question_id: String,
    /// Why.
    pub reason: String,
}

/// Records in `out/source.json` the image folder the labelling reads (made
/// absolute, so the record holds wherever training runs from).
pub fn write_image_source(out: &Path, images: &Path) -> Result<()> {
    let absolute = std::fs::canonicalize(images).map_err(|e| TrainError::io(images, e))?;
    let json = serde_json::json!({ "images": absolute });
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let text = serde_json::to_string_pretty(&json).expect("a JSON value serialises");
    crate::error::write_atomic(&out.join("source.json"), text.as_bytes())
}

/// The image folder recorded by [`write_image_source`] in a label folder.
pub fn read_image_source(labels: &Path) -> Result<PathBuf> {
    let path = labels.join("source.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        TrainError::format(
            &path,
            format!("{e} (pass --images to say where the images are)"),
        )
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| TrainError::format(&path, e.to_string()))?;
    let images = json["images"]
        .as_str()
        .ok_or_else(|| TrainError::format(&path, "no \"images\" string"))?;
    Ok(PathBuf::from(images))
}

fn shard_prefix(worker: &str) -> String {
    format!("labels-{worker}-")
}

/// Shard files of a label folder, sorted (all workers, or one worker's).
pub fn shard_files(dir: &Path, worker: Option<&str>) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(TrainError::io(dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| TrainError::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let prefix = worker.map(shard_prefix).unwrap_or_else(|| "labels-".into());
        if name.starts_with(&prefix) && name.ends_with(".safetensors") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Removes every worker's labels from `dir` (shards, indexes, skipped
/// logs), leaving its other files; returns how many files were removed.
pub fn clear(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))? {
        let path = entry.map_err(|e| TrainError::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let store_file = (name.starts_with("labels-") && name.ends_with(".safetensors"))
            || ((name.starts_with("index-") || name.starts_with("skipped-"))
                && name.ends_with(".jsonl"));
        if store_file {
            std::fs::remove_file(&path).map_err(|e| TrainError::io(&path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn floats_of(
    path: &Path,
    st: &SafeTensors,
    name: &str,
    rows: usize,
    p: usize,
) -> Result<Option<Vec<f32>>> {
    let view = match st.tensor(name) {
        Ok(v) => v,
        Err(_) => return Ok(None),
    };
    if view.dtype() != Dtype::F32 || view.shape() != [rows, p] {
        return Err(TrainError::format(
            path,
            format!(
                "tensor {name} is {:?} {:?}, expected F32 [{rows}, {p}]",
                view.dtype(),
                view.shape()
            ),
        ));
    }
    Ok(Some(
        view.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    ))
}

/// Reads one shard.
pub fn read_shard(path: &Path) -> Result<(Grid, Vec<LabelRecord>)> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| TrainError::format(path, format!("not a label shard: {e}")))?;
    let (_, meta) =
        SafeTensors::read_metadata(&bytes).map_err(|e| TrainError::format(path, e.to_string()))?;
    let meta: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| TrainError::format(path, format!("metadata lacks {k:?}")))
    };
    let grid_text = get("grid")?;
    let grid = grid_text
        .split_once('x')
        .and_then(|(r, c)| Grid::new(r.parse().ok()?, c.parse().ok()?).ok())
        .ok_or_else(|| TrainError::format(path, format!("bad grid {grid_text:?}")))?;
    let mut records: Vec<LabelRecord> = serde_json::from_str(get("records")?)
        .map_err(|e| TrainError::format(path, format!("bad records: {e}")))?;
    let (n, p) = (records.len(), grid.len());
    let grounding = floats_of(path, &st, "grounding", n, p)?
        .ok_or_else(|| TrainError::format(path, "no grounding tensor"))?;
    let sink = floats_of(path, &st, "sink", n, p)?
        .ok_or_else(|| TrainError::format(path, "no sink tensor"))?;
    let massive = floats_of(path, &st, "massive", n, p)?;
    for (i, r) in records.iter_mut().enumerate() {
        r.grounding = grounding[i * p..(i + 1) * p].to_vec();
        r.sink = sink[i * p..(i + 1) * p].to_vec();
        r.massive = massive.as_ref().map(|m| m[i * p..(i + 1) * p].to_vec());
    }
    Ok((grid, records))
}

/// Reads every shard of a label folder (all workers), in file order.
pub fn read_labels(dir: &Path) -> Result<(Grid, Vec<LabelRecord>)> {
    let files = shard_files(dir, None)?;
    if files.is_empty() {
        return Err(TrainError::format(
            dir,
            "holds no label shards (labels-*.safetensors); run `sdrpn label` first",
        ));
    }
    let mut grid = None;
    let mut all = Vec::new();
    let mut seen = BTreeSet::new();
    for f in files {
        let (g, records) = read_shard(&f)?;
        if *grid.get_or_insert(g) != g {
            return Err(TrainError::format(
                &f,
                format!("grid {g} differs from the other shards'"),
            ));
        }
        for r in records {
            // Several workers never label the same id, but a re-run after a
            // crash between rename and bookkeeping could: keep the first.
            if seen.insert(r.question_id.clone()) {
                all.push(r);
            }
        }
    }
    Ok((grid.expect("at least one shard"), all))
}

/// Writes shards and bookkeeping of one worker.
pub struct ShardWriter {
    dir: PathBuf,
    worker: String,
    grid: Grid,
    next_seq: usize,
    buffer: Vec<LabelRecord>,
    done: BTreeSet<String>,
}

impl ShardWriter {
    /// Opens (creating) `dir` for `worker`, reading what earlier runs finished:
    /// labelled ids from the shards (rebuilding the worker's index) and skipped ids.
    pub fn open(dir: &Path, worker: &str, grid: Grid) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let mut done = BTreeSet::new();
        let mut index = String::new();
        let files = shard_files(dir, Some(worker))?;
        for f in &files {
            let (g, records) = read_shard(f)?;
            if g != grid {
                return Err(TrainError::format(
                    f,
                    format!("grid {g} differs from the model's {grid}"),
                ));
            }
            let shard = f
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string();
            for (row, r) in records.iter().enumerate() {
                done.insert(r.question_id.clone());
                index.push_str(&index_line(r, &shard, row));
            }
        }
        crate::error::write_atomic(&dir.join(format!("index-{worker}.jsonl")), index.as_bytes())?;
        // Skipped samples are tried again (their image or text may have
        // been fixed): the log starts afresh and gets them again if they
        // still fail.
        let skipped = dir.join(format!("skipped-{worker}.jsonl"));
        match std::fs::remove_file(&skipped) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(TrainError::io(&skipped, e))
            }
            _ => {}
        }
        let next_seq = files
            .iter()
            .filter_map(|f| {
                let name = f.file_stem()?.to_str()?;
                name.rsplit('-').next()?.parse::<usize>().ok()
            })
            .max()
            .map_or(0, |m| m + 1);
        Ok(Self {
            dir: dir.to_path_buf(),
            worker: worker.to_string(),
            grid,
            next_seq,
            buffer: Vec::new(),
            done,
        })
    }

    /// Whether an earlier run labelled `question_id` (or this run handled it).
    pub fn is_done(&self, question_id: &str) -> bool {
        self.done.contains(question_id)
    }

    /// Number of ids handled so far (labelled or skipped).
    pub fn done_count(&self) -> usize {
        self.done.len()
    }

    /// Buffers a record; it is written with the next [`ShardWriter::flush`].
    pub fn push(&mut self, record: LabelRecord) -> Result<()> {
        let p = self.grid.len();
        let massive_ok = record.massive.as_ref().is_none_or(|m| m.len() == p);
        if record.grounding.len() != p || record.sink.len() != p || !massive_ok {
            return Err(TrainError::config(
                "label record",
                format!("maps of {} must have {p} values", record.question_id),
            ));
        }
        if let Some(first) = self.buffer.first() {
            if first.massive.is_some() != record.massive.is_some() {
                return Err(TrainError::config(
                    "label record",
                    "massive maps present for some records only",
                ));
            }
        }
        self.done.insert(record.question_id.clone());
        self.buffer.push(record);
        Ok(())
    }

    /// Records in the buffer.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Logs a skipped sample (appended and flushed at once).
    pub fn skip(&mut self, question_id: &str, reason: &str) -> Result<()> {
        let path = self.dir.join(format!("skipped-{}.jsonl", self.worker));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        let line = serde_json::to_string(&Skipped {
            question_id: question_id.to_string(),
            reason: reason.to_string(),
        })
        .expect("serialises");
        writeln!(f, "{line}").map_err(|e| TrainError::io(&path, e))?;
        self.done.insert(question_id.to_string());
        Ok(())
    }

    /// Writes the buffered records as one shard (temp file + rename), then
    /// appends them to the worker's index.
    pub fn flush(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let name = format!(
            "{}{:05}.safetensors",
            shard_prefix(&self.worker),
            self.next_seq
        );
        let path = self.dir.join(&name);
        let (n, p) = (self.buffer.len(), self.grid.len());
        let bytes = |f: &dyn Fn(&LabelRecord) -> &[f32]| -> Vec<u8> {
            self.buffer
                .iter()
                .flat_map(|r| f(r).iter().flat_map(|x| x.to_le_bytes()))
                .collect()
        };
        let grounding = bytes(&|r| &r.grounding);
        let sink = bytes(&|r| &r.sink);
        let massive = self.buffer[0]
            .massive
            .is_some()
            .then(|| bytes(&|r| r.massive.as_deref().unwrap_or(&[])));
        let mut views = vec![
            ("grounding".to_string(), view(&grounding, n, p)?),
            ("sink".to_string(), view(&sink, n, p)?),
        ];
        if let Some(m) = &massive {
            views.push(("massive".to_string(), view(m, n, p)?));
        }
        let meta: HashMap<String, String> = [
            (
                "records".to_string(),
                serde_json::to_string(&self.buffer).expect("serialises"),
            ),
            (
                "grid".to_string(),
                format!("{}x{}", self.grid.rows, self.grid.cols),
            ),
        ]
        .into_iter()
        .collect();
        let tmp = path.with_extension("safetensors.tmp");
        safetensors::serialize_to_file(views, Some(meta), &tmp)
            .map_err(|e| TrainError::format(&tmp, e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| TrainError::io(&path, e))?;
        let index = self.dir.join(format!("index-{}.jsonl", self.worker));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&index)
            .map_err(|e| TrainError::io(&index, e))?;
        for (row, r) in self.buffer.iter().enumerate() {
            f.write_all(index_line(r, &name, row).as_bytes())
                .map_err(|e| TrainError::io(&index, e))?;
        }
        self.buffer.clear();
        self.next_seq += 1;
        Ok(())
    }
}

fn view(data: &[u8], n: usize, p: usize) -> Result<safetensors::tensor::TensorView<'_>> {
    safetensors::tensor::TensorView::new(Dtype::F32, vec![n, p], data)
        .map_err(|e| TrainError::config("label shard", e.to_string()))
}

fn index_line(r: &LabelRecord, shard: &str, row: usize) -> String {
    let mut v = serde_json::to_value(r).expect("serialises");
    v["shard"] = shard.into();
    v["row"] = row.into();
    format!("{v}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_source_round_trips_and_its_absence_is_named() {
        let dir = std::env::temp_dir().join(format!("sdrpn-source-{}", std::process::id()));
        let images = dir.join("images");
        std::fs::create_dir_all(&images).unwrap();
        let labels = dir.join("labels");
        let err = read_image_source(&labels).unwrap_err().to_string();
        assert!(
            err.contains("source.json") && err.contains("--images"),
            "{err}"
        );
        write_image_source(&labels, &images).unwrap();
        let read = read_image_source(&labels).unwrap();
        assert!(read.is_absolute());
        assert_eq!(read, std::fs::canonicalize(&images).unwrap());
        std::fs::write(labels.join("source.json"), "{}").unwrap();
        let err = read_image_source(&labels).unwrap_err().to_string();
        assert!(err.contains("images"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    fn record(id: &str, p: usize, massive: bool) -> LabelRecord {
        LabelRecord {
            question_id: id.into(),
            image: "a.png".into(),
            question: "q".into(),
            prompt: "p".into(),
            answer: "a".into(),
            answer_tokens: 3,
            fed_back: 2,
            grounding: (0..p).map(|i| i as f32).collect(),
            sink: vec![0.5; p],
            massive: massive.then(|| vec![1.0; p]),
        }
    }

    #[test]
    fn shards_round_trip_and_resume_knows_what_is_done() {
        let dir = std::env::temp_dir().join(format!("sdrpn-store-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let grid = Grid::new(2, 3).unwrap();
        let mut w = ShardWriter::open(&dir, "w0of1", grid).unwrap();
        w.push(record("1", 6, true)).unwrap();
        w.push(record("2", 6, true)).unwrap();
        w.flush().unwrap();
        w.skip("3", "missing image").unwrap();
        w.push(record("4", 6, true)).unwrap(); // never flushed: lost, as a crash would
        drop(w);
        let w = ShardWriter::open(&dir, "w0of1", grid).unwrap();
        assert!(w.is_done("1") && w.is_done("2"));
        // A skipped sample is tried again (its image may have been fixed),
        // and an unflushed one was lost.
        assert!(!w.is_done("3") && !w.is_done("4"));
        assert!(!dir.join("skipped-w0of1.jsonl").exists());
        let (g, records) = read_labels(&dir).unwrap();
        assert_eq!(g, grid);
        assert_eq!(records.len(), 2);
        assert_eq!(records[1], record("2", 6, true));
        let index = std::fs::read_to_string(dir.join("index-w0of1.jsonl")).unwrap();
        assert_eq!(index.lines().count(), 2);
        assert!(index.contains("\"row\":1"));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn wrong_sizes_are_refused() {
        let dir = std::env::temp_dir().join(format!("sdrpn-store-bad-{}", std::process::id()));
        let mut w = ShardWriter::open(&dir, "w0of1", Grid::new(2, 2).unwrap()).unwrap();
        assert!(w.push(record("1", 6, false)).is_err());
        assert!(read_labels(&dir.join("nowhere")).is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
