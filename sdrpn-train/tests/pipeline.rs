//! Self-distillation end to end on the tiny fixture model: labelling writes
//! records and resumes; training runs with a finite, falling loss; a
//! stopped and resumed run ends exactly where an uninterrupted one does.

use safetensors::SafeTensors;
use sdrpn_core::Grid;
use sdrpn_llava::session::LlavaSession;
use sdrpn_train::label::{run_labelling, LabelJob};
use sdrpn_train::label_store::{read_labels, LabelRecord};
use sdrpn_train::questions::{read_questions, ShardSpec};
use sdrpn_train::render::SilentRenderer;
use sdrpn_train::trainer::{train_rpn, TrainReport, TrainRequest};
use sdrpn_train::SdrpnConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

type B = sdrpn_core::backend::CpuBackend;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sdrpn-llava/tests/fixtures")
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sdrpn-pipeline-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn session() -> LlavaSession<B> {
    LlavaSession::<B>::load(
        &fixtures().join("tiny-llava"),
        &Default::default(),
        SdrpnConfig::tiny().prompt,
    )
    .unwrap()
}

/// Eight questions on the fixture images, one with a missing image and one empty.
fn question_file(dir: &Path) -> PathBuf {
    let images = ["wide.png", "tall.png", "big.png"];
    let mut lines = String::new();
    for i in 0..8 {
        let (image, text) = match i {
            3 => ("missing.png", "Where is it?"),
            5 => ("big.png", "  "),
            _ => (
                images[i % 3],
                [
                    "What is in the picture?",
                    "What color is it?",
                    "Describe the image.",
                ][i % 3],
            ),
        };
        lines.push_str(&format!(
            "{{\"question_id\": {i}, \"image\": \"{image}\", \"text\": \"{text}\"}}\n"
        ));
    }
    let path = dir.join("questions.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

fn label(dir: &Path, limit: Option<usize>) -> sdrpn_train::label::LabelProgress {
    let (questions, bad) = read_questions(&question_file(dir)).unwrap();
    assert!(bad.is_empty());
    let job = LabelJob {
        questions,
        images: fixtures().join("images"),
        out: dir.join("labels"),
        shard: ShardSpec::default(),
        limit,
        shard_size: 2,
        force: false,
        batch: 1,
    };
    run_labelling(&session(), &SdrpnConfig::tiny(), &job, |_, _| {}).unwrap()
}

#[test]
fn labelling_writes_records_skips_bad_samples_and_resumes() {
    let dir = scratch("label");
    let first = label(&dir, Some(4));
    assert_eq!(
        (first.labelled, first.skipped),
        (3, 1),
        "the missing image is skipped"
    );
    let second = label(&dir, None);
    assert_eq!(second.resumed, 3, "the three labelled are not redone");
    assert_eq!(
        (second.labelled, second.skipped),
        (3, 2),
        "the missing image is tried again, and skipped with the empty question"
    );
    let (grid, records) = read_labels(&dir.join("labels")).unwrap();
    assert_eq!(grid, Grid::new(6, 6).unwrap());
    assert_eq!(records.len(), 6);
    for r in &records {
        assert_eq!(r.grounding.len(), 36);
        assert!(r.fed_back >= 1 && r.fed_back < r.answer_tokens.max(2));
        // Means of attention rows over 36 of ~100 keys: positive, below 1 in
        // total. (That the maps are exactly HF's decode-attention means is
        // checked in label_maps.rs; here the pipeline around them is.)
        let total: f32 = r.grounding.iter().sum();
        assert!(total > 0.0 && total < 1.0, "grounding mass {total}");
        assert!(r.prompt.contains("USER: <image>\n"));
    }
    let skipped = std::fs::read_to_string(dir.join("labels/skipped-w0of1.jsonl")).unwrap();
    assert!(
        skipped.contains("missing.png") && skipped.contains("empty question"),
        "{skipped}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// Records with crafted grounding maps: a hot 2x2 block whose place depends
/// on the sample, zero sink maps. (The random tiny model's own attention is
/// too diffuse to give many usable labels.)
fn crafted_records(dir: &Path) -> Vec<LabelRecord> {
    label(dir, None);
    let (_, mut records) = read_labels(&dir.join("labels")).unwrap();
    for (i, r) in records.iter_mut().enumerate() {
        let (r0, c0) = (i % 3, (i * 2) % 4);
        let mut a = vec![0.001f32; 36];
        for (dr, dc) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            a[(r0 + dr) * 6 + c0 + dc] = 0.05;
        }
        r.grounding = a;
        r.sink = vec![0.0; 36];
    }
    records
}

fn train(
    dir: &Path,
    run: &str,
    records: Vec<LabelRecord>,
    config: &SdrpnConfig,
    resume: bool,
    stop: Option<usize>,
) -> TrainReport {
    try_train(dir, run, records, config, resume, stop).unwrap()
}

fn try_train(
    dir: &Path,
    run: &str,
    records: Vec<LabelRecord>,
    config: &SdrpnConfig,
    resume: bool,
    stop: Option<usize>,
) -> sdrpn_train::Result<TrainReport> {
    train_on(dir, run, records, config, (resume, stop), Vec::new())
}

/// [`try_train`] with copies of the host on further devices.
fn train_on(
    dir: &Path,
    run: &str,
    records: Vec<LabelRecord>,
    config: &SdrpnConfig,
    (resume, stop): (bool, Option<usize>),
    replicas: Vec<Arc<LlavaSession<B>>>,
) -> sdrpn_train::Result<TrainReport> {
    let run_dir = dir.join(run);
    train_rpn(
        TrainRequest {
            session: Arc::new(session()),
            records,
            images: &fixtures().join("images"),
            config,
            run_dir: &run_dir,
            resume,
            stop_after_epoch: stop,
            replicas,
        },
        SilentRenderer,
    )
}

fn config(epochs: usize) -> SdrpnConfig {
    let mut c = SdrpnConfig::tiny();
    c.train.epochs = epochs;
    c.train.holdout = 2;
    c.train.batch_size = 8; // the four training samples form one fixed batch
    c.train.lr = 2e-3;
    c.train.warmup_ratio = 0.0;
    c
}

#[test]
fn training_loss_is_finite_and_falls_on_a_fixed_batch() {
    let dir = scratch("train");
    let records = crafted_records(&dir);
    let report = train(&dir, "run", records, &config(6), false, None);
    assert_eq!((report.train_samples, report.valid_samples), (4, 2));
    let losses: Vec<f64> = report
        .epochs
        .iter()
        .map(|e| e.train_loss.unwrap())
        .collect();
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
    assert!(losses[5] < losses[0] * 0.9, "loss did not fall: {losses:?}");
    let last = report.epochs.last().unwrap();
    assert!(last.valid_loss.unwrap().is_finite());
    // Held-back metrics are pooled ratios (unit-tested by hand in
    // trainer.rs): each in [0, 1], and IoU = tp / (tp + fp + fn) can
    // exceed neither precision nor recall. Precision is undefined (absent)
    // when the RPN predicts no foreground at all.
    let (r, iou) = (
        last.valid_recall.expect("held-back recall"),
        last.valid_iou.expect("held-back IoU"),
    );
    let p = last.valid_precision.unwrap_or(1.0);
    for v in [p, r, iou] {
        assert!((0.0..=1.0).contains(&v), "{p} {r} {iou}");
    }
    assert!(
        iou <= p.min(r) + 1e-9,
        "IoU {iou} above precision {p} or recall {r}"
    );
    for f in ["config.toml", "rpn.safetensors", "metrics.jsonl"] {
        assert!(dir.join("run").join(f).is_file(), "{f}");
    }
    // The saved RPN loads back onto the host's geometry.
    let (cfg, _rpn) = sdrpn_train::trainer::load_rpn(&session(), &dir.join("run"), false).unwrap();
    assert_eq!(cfg.train.epochs, 6);
    // ... and onto no other model: one with a 24x24 grid is refused.
    let other = LlavaSession::<B>::load(
        &fixtures().join("tiny-llava-336"),
        &Default::default(),
        SdrpnConfig::tiny().prompt,
    )
    .unwrap();
    let e = match sdrpn_train::trainer::load_rpn(&other, &dir.join("run"), false) {
        Ok(_) => panic!("a foreign RPN is refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("was trained on another model (visual grid 6x6 vs 24x24"),
        "{e}"
    );
    // --force cannot make another grid fit ...
    let e = match sdrpn_train::trainer::load_rpn(&other, &dir.join("run"), true) {
        Ok(_) => panic!("a foreign grid is refused even with force"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("--force cannot override another visual grid"),
        "{e}"
    );
    // ... but uses an RPN of another model with the same grid (the f16 copy
    // of the fixture: other weights), which is refused without it.
    let same_grid = LlavaSession::<B>::load(
        &fixtures().join("tiny-llava-f16"),
        &Default::default(),
        SdrpnConfig::tiny().prompt,
    )
    .unwrap();
    match sdrpn_train::trainer::load_rpn(&same_grid, &dir.join("run"), false) {
        Ok(_) => panic!("an RPN of other weights is refused without force"),
        Err(e) => assert!(
            e.to_string().contains("add --force to use it anyway"),
            "{e}"
        ),
    }
    let (forced, _) = sdrpn_train::trainer::load_rpn(&same_grid, &dir.join("run"), true).unwrap();
    assert_eq!(forced, cfg);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_diverging_run_stops_saves_no_rpn_and_keeps_only_finite_checkpoints() {
    let dir = scratch("diverge");
    let records = crafted_records(&dir);
    let mut c = config(4);
    c.train.lr = 1e9;
    let e = try_train(&dir, "run", records, &c, false, None)
        .unwrap_err()
        .to_string();
    let epoch: usize = e
        .split("became NaN or infinite in epoch ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the error names the epoch: {e}"));
    assert!(
        e.contains("no RPN was saved") && e.contains("lower train.lr"),
        "{e}"
    );
    assert!(!dir.join("run/rpn.safetensors").exists());
    let left: Vec<usize> = std::fs::read_dir(dir.join("run/train/checkpoint"))
        .map(|d| {
            d.filter_map(|f| {
                let name = f.ok()?.file_name().into_string().ok()?;
                sdrpn_train::trainer::checkpoint_epoch(&name)
            })
            .collect()
        })
        .unwrap_or_default();
    assert!(
        left.iter().all(|&k| k < epoch),
        "checkpoints {left:?} left from epoch {epoch} on"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn resuming_with_other_settings_is_refused() {
    let dir = scratch("resume-settings");
    let records = crafted_records(&dir);
    train(&dir, "run", records.clone(), &config(3), false, Some(1));
    let mut other = config(3);
    other.train.lr = 1e-2;
    let e = try_train(&dir, "run", records, &other, true, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("was started with other settings"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_resumed_run_ends_exactly_where_an_uninterrupted_one_does() {
    let dir = scratch("resume");
    let records = crafted_records(&dir);
    let mut c = config(3);
    c.train.batch_size = 2; // two batches per epoch, reshuffled every epoch
    let full = train(&dir, "full", records.clone(), &c, false, None);
    let stopped = train(&dir, "split", records.clone(), &c, false, Some(1));
    assert_eq!(stopped.completed_epochs, 1);
    let resumed = train(&dir, "split", records, &c, true, None);
    assert_eq!(resumed.first_epoch, 2);
    assert_eq!(resumed.completed_epochs, 3);
    let a = std::fs::read(dir.join("full/rpn.safetensors")).unwrap();
    let b = std::fs::read(dir.join("split/rpn.safetensors")).unwrap();
    let (a, b) = (
        SafeTensors::deserialize(&a).unwrap(),
        SafeTensors::deserialize(&b).unwrap(),
    );
    let mut names = a.names();
    names.sort();
    assert!(names.len() > 10);
    for name in names {
        let (x, y) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert!(
            x.data() == y.data(),
            "{name}: the resumed RPN differs from the uninterrupted one"
        );
    }
    // Same per-epoch metrics, the resumed epochs included.
    assert_eq!(full.epochs, resumed.epochs);
    std::fs::remove_dir_all(dir).ok();
}

/// The float tensors of an RPN file, by name.
fn rpn_weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = file.names().into_iter().map(String::from).collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let data = file.tensor(&name).unwrap().data().to_vec();
            let values = data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

#[test]
fn a_two_device_run_equals_a_one_device_run_with_the_same_batch() {
    let dir = scratch("two-devices");
    // Hot blocks of 1, 2 or 3 tokens a side and 0-3 ignored tokens: samples
    // differ in how many tokens their loss counts, so the mean of the
    // devices' means would not be the batch's loss.
    let mut records = crafted_records(&dir);
    for (i, r) in records.iter_mut().enumerate() {
        let side = 1 + i % 3;
        let mut a = vec![0.001f32; 36];
        for dr in 0..side {
            for dc in 0..side {
                a[(i % 3 + dr) * 6 + (i * 2) % 3 + dc] = 0.05;
            }
        }
        // 0-3 tokens between the background and foreground ratios, in the
        // last column (outside every block's box): ignored by the loss.
        for row in 0..i % 4 {
            a[row * 6 + 5] = 0.05 * 0.45;
        }
        r.grounding = a;
    }
    let mut c = config(3);
    c.train.batch_size = 2; // two batches per epoch: one sample on each device
    let settings = sdrpn_train::step::StepSettings::of(&c);
    let counted: std::collections::BTreeSet<u64> = records
        .iter()
        .map(|r| {
            let one = [Arc::new(r.clone())];
            let grid = Grid::new(6, 6).unwrap();
            sdrpn_train::step::loss_tokens::<B>(&one, &settings, grid, &Default::default()) as u64
        })
        .collect();
    assert!(counted.len() > 2, "tokens counted per sample: {counted:?}");
    let one = train_on(&dir, "one", records.clone(), &c, (false, None), Vec::new()).unwrap();
    // The second device's host copy: another session on the same CPU
    // device (burn-train takes the same device twice; on GPUs, one per card).
    let two = train_on(
        &dir,
        "two",
        records.clone(),
        &c,
        (false, None),
        vec![Arc::new(session())],
    )
    .unwrap();
    assert_eq!(two.completed_epochs, 3);
    let (a, b) = (
        rpn_weights(&dir.join("one/rpn.safetensors")),
        rpn_weights(&dir.join("two/rpn.safetensors")),
    );
    assert!(a.len() > 10);
    for ((name, x), (other, y)) in a.iter().zip(&b) {
        assert_eq!(name, other);
        for (u, v) in x.iter().zip(y) {
            assert!(
                (u - v).abs() <= 1e-5 * (1.0 + u.abs()),
                "{name}: {u} on one device, {v} on two"
            );
        }
    }
    // Training moved the weights (the held-back loss changed), and the
    // held-back metrics (computed on one device in both) agree.
    let valid = |r: &TrainReport, e: usize| r.epochs[e].valid_loss.unwrap();
    assert!((valid(&one, 0) - valid(&one, 2)).abs() > 1e-4);
    // The epoch's train loss (each device's share reports its part of the
    // batch's loss) agrees as well.
    for (e1, e2) in one.epochs.iter().zip(&two.epochs) {
        for (l1, l2) in [
            (e1.valid_loss.unwrap(), e2.valid_loss.unwrap()),
            (e1.train_loss.unwrap(), e2.train_loss.unwrap()),
        ] {
            assert!((l1 - l2).abs() <= 1e-5 * (1.0 + l1.abs()), "{l1} vs {l2}");
        }
    }
    // A batch that does not split evenly is refused with a clear error.
    c.train.batch_size = 3;
    let e = train_on(
        &dir,
        "odd",
        records,
        &c,
        (false, None),
        vec![Arc::new(session())],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("does not split evenly across 2 devices"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}
