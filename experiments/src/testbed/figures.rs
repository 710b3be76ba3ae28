//! The testbed's figures (PNG, no fonts needed):
//! - `figure-samples.png`: one row per test question: the image with the
//!   target's box (green) and SD-RPN's crop (red); its pseudo-labels
//!   (foreground red, background blue, ignored grey); the RPN's map;
//! - `figure-accuracy.png`: accuracy per family, one bar per answerer in
//!   table order (baseline, sdrpn, vicrop-rel, vicrop-grad, oracle, random,
//!   centre), values drawn above the bars with the testbed's digit font.

use super::font::{draw_number, number_size};
use super::run::{Answered, Answerer, Results};
use super::task::Sample;
use crate::heatmap::{self, draw_box};
use image::imageops::{resize, FilterType};
use image::{Rgb, RgbImage};
use sdrpn_core::crop::PixelBox;
use sdrpn_core::labels::Label;
use sdrpn_core::Grid;
use sdrpn_llava::preprocess::ImageMode;
use sdrpn_llava::session::LlavaSession;
use sdrpn_train::label::{run_labelling, LabelJob};
use sdrpn_train::label_store::read_labels;
use sdrpn_train::questions::{read_questions, ShardSpec};
use sdrpn_train::two_pass::TwoPass;
use sdrpn_train::SdrpnConfig;
use std::path::Path;

/// Side of one panel in pixels.
const PANEL: u32 = 224;

/// A label map as a coloured grid over the image, dimmed.
fn label_panel(image: &RgbImage, labels: &[Label], grid: Grid) -> RgbImage {
    let (w, h) = image.dimensions();
    let mut out = image.clone();
    for (x, y, px) in out.enumerate_pixels_mut() {
        let c = (x as usize * grid.cols / w as usize).min(grid.cols - 1);
        let r = (y as usize * grid.rows / h as usize).min(grid.rows - 1);
        let tint = match labels.get(grid.index(r, c)) {
            Some(Label::Foreground) => [255.0, 40.0, 40.0],
            Some(Label::Background) => [40.0, 40.0, 200.0],
            _ => [128.0, 128.0, 128.0],
        };
        for (channel, t) in px.0.iter_mut().zip(tint) {
            *channel = (*channel as f32 * 0.4 + t * 0.6).round() as u8;
        }
    }
    out
}

fn scale_box(b: PixelBox, from: u32, to: u32) -> PixelBox {
    let s = |v: u32| (v as u64 * to as u64 / from as u64) as u32;
    PixelBox {
        x0: s(b.x0),
        y0: s(b.y0),
        x1: s(b.x1),
        y1: s(b.y1),
    }
}

/// Writes both figures into `out`.
pub fn write_figures<B: burn::tensor::backend::Backend>(
    session: &LlavaSession<B>,
    method: &SdrpnConfig,
    test: &[Sample],
    answers: &[Answered],
    results: &Results,
    count: usize,
    out: &Path,
) -> anyhow::Result<()> {
    write_accuracy(results, &out.join("figure-accuracy.png"))?;
    if count == 0 {
        return Ok(());
    }
    // Pseudo-labels of the first test questions, made as for training.
    let labels_dir = out.join("figure-labels");
    let (questions, _) = read_questions(&out.join("data/test/questions.jsonl"))?;
    let job = LabelJob {
        questions,
        images: out.join("data/test/images"),
        out: labels_dir.clone(),
        shard: ShardSpec::default(),
        limit: Some(count),
        shard_size: 64,
        force: false,
        batch: 1,
    };
    run_labelling(session, method, &job, |_, _| {})?;
    // A question whose answer ends at once has no label: its panel stays
    // plain (and with none at all there is no shard to read).
    let has_shard = std::fs::read_dir(&labels_dir)?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("labels-"));
    let records = if has_shard {
        read_labels(&labels_dir)?.1
    } else {
        Vec::new()
    };
    let grid = session.grid();
    let labels = sdrpn_train::step::record_labels::<B>(&records, method, grid, &session.device())?;
    let rpn = sdrpn_train::trainer::load_rpn(session, &out.join("rpn"), false)?.1;
    let rows: Vec<usize> = (0..count.min(test.len())).collect();
    let mut figure = RgbImage::from_pixel(
        3 * PANEL + 8,
        rows.len() as u32 * (PANEL + 4),
        Rgb([255, 255, 255]),
    );
    for (row, &i) in rows.iter().enumerate() {
        let sample = &test[i];
        let image = sample.image();
        let side = image.width();
        let id = i.to_string();
        let crop = answers
            .iter()
            .find(|a| a.id == id && a.answerer == Answerer::Sdrpn)
            .and_then(|a| a.crop);
        let mut first = resize(&image, PANEL, PANEL, FilterType::Triangle);
        draw_box(
            &mut first,
            scale_box(sample.target_box(), side, PANEL),
            2,
            [0, 200, 0],
        );
        if let Some(c) = crop {
            draw_box(&mut first, scale_box(c, side, PANEL), 2, [230, 0, 0]);
        }
        let small = resize(&image, PANEL, PANEL, FilterType::Triangle);
        let second = match records.iter().position(|r| r.question_id == id) {
            Some(k) => label_panel(&small, &labels[k], grid),
            None => small.clone(),
        };
        let prepared = session.prepare(&image, &super::pretrain::prompt_text(&sample.question))?;
        let mut cache = sdrpn_llava::cache::KvCache::new(session.model.language.num_layers());
        let (map, _) =
            session.roi_probabilities(&rpn, &prepared, method.rpn.branch_layer, &mut cache)?;
        let third = heatmap::render(
            &small,
            &map,
            grid,
            heatmap::GridPlacement::Square(ImageMode::Pad),
            None,
        );
        let y = row as u32 * (PANEL + 4);
        for (k, panel) in [first, second, third].iter().enumerate() {
            image::imageops::replace(
                &mut figure,
                panel,
                (k as u32 * (PANEL + 4)) as i64,
                y as i64,
            );
        }
    }
    let path = out.join("figure-samples.png");
    figure
        .save(&path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// Bar colours in table order.
const BAR_COLOURS: [[u8; 3]; Answerer::ALL.len()] = [
    [120, 120, 120],
    [220, 40, 40],
    [150, 60, 180],
    [200, 120, 220],
    [40, 160, 40],
    [60, 90, 220],
    [230, 160, 20],
];

/// Accuracy per family as grouped bars with their values on top.
fn write_accuracy(results: &Results, path: &Path) -> anyhow::Result<()> {
    let (bar, gap, height) = (28u32, 24u32, 220u32);
    let bars = Answerer::ALL.len() as u32;
    let groups = results.accuracy.len() as u32;
    let width = groups * (bars * bar + gap) + gap;
    let top = 30u32;
    let mut img = RgbImage::from_pixel(width, height + top + 10, Rgb([255, 255, 255]));
    for (g, acc) in results.accuracy.values().enumerate() {
        for (k, who) in Answerer::ALL.iter().enumerate() {
            let value = acc.get(*who).clamp(0.0, 100.0);
            let h = (value / 100.0 * height as f64).round() as u32;
            let x0 = gap + g as u32 * (bars * bar + gap) + k as u32 * bar;
            for y in (top + height - h)..(top + height) {
                for x in x0 + 2..x0 + bar - 2 {
                    img.put_pixel(x, y, Rgb(BAR_COLOURS[k]));
                }
            }
            let digits = format!("{:.0}", value);
            let (tw, th) = number_size(digits.len(), 2);
            let tx = x0 + bar.saturating_sub(tw) / 2;
            let ty = (top + height - h).saturating_sub(th + 3);
            draw_number(&mut img, &digits, tx, ty, 2, [0, 0, 0]);
        }
        // Baseline of the group.
        for x in
            gap + g as u32 * (bars * bar + gap)..gap + g as u32 * (bars * bar + gap) + bars * bar
        {
            img.put_pixel(x, top + height, Rgb([0, 0, 0]));
        }
    }
    img.save(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}
