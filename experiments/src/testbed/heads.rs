//! Choosing grounding heads by measurement: every (layer, head) of the
//! model is scored by how well its answer-to-image attention (the map the
//! pseudo-labels are built from, SPEC 2) localises the ground-truth target.
//! The paper picked its heads by hand; the testbed ranks them on the
//! validation split and uses the best.

use super::localise::{map_iou, peak_hits, target_cells};
use image::RgbImage;
use sdrpn_core::attention::AttentionAccumulator;
use sdrpn_core::crop::PixelBox;
use sdrpn_core::host::RpnHost;
use sdrpn_core::readback::floats;
use sdrpn_llava::session::LlavaSession;
use serde::{Deserialize, Serialize};

/// One question with its ground truth.
pub struct Probe {
    /// The source image.
    pub image: RgbImage,
    /// The question as the model is prompted (post-prompt included).
    pub prompt: String,
    /// The target's box in source pixels.
    pub target: PixelBox,
}

/// How well one head localises targets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadScore {
    /// 0-based decoder layer.
    pub layer: usize,
    /// Head index.
    pub head: usize,
    /// Mean IoU of the map's foreground box (the labels' rule) with the target.
    pub mean_iou: f64,
    /// Share of probes whose map peaks inside the target.
    pub peak_hit_rate: f64,
}

/// Every (layer, head) of the model scored on `probes`, best first (by mean
/// IoU, then peak hits). `ratio` is the foreground ratio of the labels;
/// `on_progress(done, total)` after each probe.
pub fn rank_heads<B: burn::tensor::backend::Backend>(
    session: &LlavaSession<B>,
    probes: &[Probe],
    ratio: f64,
    max_new_tokens: usize,
    mut on_progress: impl FnMut(usize, usize),
) -> anyhow::Result<Vec<HeadScore>> {
    let (layers, heads, grid) = (session.num_layers(), session.num_heads(), session.grid());
    let patch = session.model.config().vision.patch_size;
    let device = session.device();
    let pairs: Vec<(usize, usize)> = (0..layers)
        .flat_map(|l| (0..heads).map(move |h| (l, h)))
        .collect();
    let mut sums = vec![(0.0f64, 0usize); pairs.len()];
    let mut counted = 0usize;
    for (done, probe) in probes.iter().enumerate() {
        if probe.image.width() != probe.image.height() {
            anyhow::bail!("testbed probes are square images");
        }
        let prepared = session.prepare(&probe.image, &probe.prompt)?;
        let mut maps = pairs
            .iter()
            .map(|&(l, h)| {
                let selection: sdrpn_core::HeadSelection = format!("{l}:{h}").parse()?;
                Ok(AttentionAccumulator::new(
                    selection.resolve(layers, heads)?,
                    prepared.visual.clone(),
                    grid,
                    &device,
                )?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let tapped = session.generate_with_maps(&prepared, &mut maps, max_new_tokens)?;
        on_progress(done + 1, probes.len());
        if tapped.fed_back == 0 {
            continue;
        }
        counted += 1;
        let cells = target_cells(probe.target, grid, probe.image.width());
        for (slot, acc) in sums.iter_mut().zip(maps) {
            let map = floats(acc.finish()?)?;
            slot.0 += map_iou(&map, grid, patch, probe.image.width(), ratio, probe.target);
            slot.1 += usize::from(peak_hits(&map, &cells));
        }
    }
    if counted == 0 {
        anyhow::bail!("no probe's answer had a token fed back, so no head could be scored");
    }
    let mut scores: Vec<HeadScore> = pairs
        .iter()
        .zip(sums)
        .map(|(&(layer, head), (iou, hits))| HeadScore {
            layer,
            head,
            mean_iou: iou / counted as f64,
            peak_hit_rate: hits as f64 / counted as f64,
        })
        .collect();
    scores.sort_by(|a, b| {
        b.mean_iou
            .total_cmp(&a.mean_iou)
            .then(b.peak_hit_rate.total_cmp(&a.peak_hit_rate))
    });
    Ok(scores)
}

/// The best `count` heads as a head selection (`layer:h,h;layer:h`).
pub fn selection_of(scores: &[HeadScore], count: usize) -> String {
    let mut by_layer: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for s in scores.iter().take(count) {
        by_layer.entry(s.layer).or_default().push(s.head);
    }
    by_layer
        .iter()
        .map(|(l, hs)| {
            let hs: Vec<String> = hs.iter().map(|h| h.to_string()).collect();
            format!("{l}:{}", hs.join(","))
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selection_groups_the_best_heads_by_layer() {
        let s = |layer, head, mean_iou| HeadScore {
            layer,
            head,
            mean_iou,
            peak_hit_rate: 0.0,
        };
        let scores = vec![s(3, 2, 0.9), s(1, 0, 0.8), s(3, 5, 0.7), s(0, 0, 0.1)];
        assert_eq!(selection_of(&scores, 3), "1:0;3:2,5");
        let parsed: sdrpn_core::HeadSelection = selection_of(&scores, 3).parse().unwrap();
        assert_eq!(parsed.resolve(6, 8).unwrap().pair_count(), 3);
    }
}
