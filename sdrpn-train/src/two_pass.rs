//! SD-RPN's two-pass inference (SPEC 4), written once for every host.
//!
//! Pass 1 runs base layers `0..K` on the prompt and the RPN on their output,
//! giving a probability per visual token. RoI extraction decides: no crop
//! (answer from the global image), one box (append all crop tokens), or the
//! union box with a token mask (mapped onto the crop's own grid). The host
//! encodes the crop and says where its tokens go and at what rotary
//! positions; pass 2 answers from
//! `[prompt up to the insertion point | RoI tokens | rest of the prompt]`.
//!
//! Positions before the insertion point are identical in both passes (the
//! host promises it) and the mask is causal, so by default pass 2 reuses
//! pass 1's keys/values of layers `0..K` for that prefix and its layer-`K`
//! input states, instead of recomputing them (exact up to rounding;
//! `reuse_prefix_cache = false` recomputes everything, as the reference
//! code does on both hosts).

use crate::vicrop::{gradient_map, relative_maps};
pub use crate::vicrop::{ViCropMap, ViCropRule};
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use image::RgbImage;
use sdrpn_core::cache::KvCache;
use sdrpn_core::components::TokenBox;
use sdrpn_core::crop::PixelBox;
use sdrpn_core::host::{AnswerOptions, HostPrompt, RoiInsert, RpnHost};
use sdrpn_core::readback::floats;
use sdrpn_core::roi::{resize_mask_to, RoiConfig, RoiMode, RoiSelection};
use sdrpn_core::rpn::Rpn;
use serde::Serialize;
use std::time::Instant;

/// Settings of two-pass inference.
#[derive(Clone, Debug, PartialEq)]
pub struct TwoPassOptions {
    /// Branch layer K (where the RPN attaches).
    pub branch: usize,
    /// RoI extraction (threshold, size rules).
    pub roi: RoiConfig,
    /// Generation settings.
    pub answer: AnswerOptions,
    /// Reuse pass 1's prefix keys/values in pass 2 (default true).
    pub reuse_prefix_cache: bool,
}

/// Wall-clock milliseconds of each stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Preprocessing, vision tower and prompt embedding.
    pub prepare_ms: f64,
    /// Base layers 0..K and the RPN.
    pub pass1_ms: f64,
    /// Cropping and encoding the RoI.
    pub crop_ms: f64,
    /// The answering pass (prefill and decoding).
    pub pass2_ms: f64,
    /// Everything.
    pub total_ms: f64,
}

/// What two-pass inference produced.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TwoPassOutput {
    /// The answer text.
    pub answer: String,
    /// Generated token ids.
    pub tokens: Vec<u32>,
    /// RPN probabilities over the grid (row-major), empty without an RPN.
    pub roi_map: Vec<f32>,
    /// Boxes that survived the size rules, token units.
    pub boxes: Vec<TokenBox>,
    /// The cropped rectangle of the source image, if any.
    pub crop: Option<PixelBox>,
    /// none, bbox or mask.
    pub mode: RoiMode,
    /// How many RoI tokens pass 2 appended.
    pub roi_tokens: usize,
    /// Which tokens of the crop's grid those are (raster order): all of
    /// them in bbox mode, the mask's in mask mode, none without a crop.
    /// Not serialised (`roi_tokens` is).
    #[serde(skip)]
    pub kept: Vec<usize>,
    /// Stage timings.
    pub timings: Timings,
    /// Logits of the first answer token (for checks; not serialised).
    #[serde(skip)]
    pub first_logits: Vec<f32>,
}

/// The RPN of host `H`.
pub type HostRpn<B, H> = Rpn<B, <H as RpnHost<B>>::Layer, <H as RpnHost<B>>::Norm>;

/// Where pass 1's RoI map comes from.
enum MapSource<'a, B: Backend, H: RpnHost<B>> {
    /// The trained RPN.
    Rpn(&'a HostRpn<B, H>),
    /// A map given by the caller.
    Given(&'a [f32]),
    /// A crop given by the caller (source pixels): no map, one box.
    Region(PixelBox),
    /// ViCrop's map (rel-att or grad-att) of layer `branch - 1` and its crop rule.
    ViCrop(&'a ViCropRule),
}

// Manual impls: a derive would ask `B: Copy`.
impl<B: Backend, H: RpnHost<B>> Clone for MapSource<'_, B, H> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend, H: RpnHost<B>> Copy for MapSource<'_, B, H> {}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Two-pass answering on any host (import the trait to call it as a
/// method of a session).
pub trait TwoPass<B: Backend>: RpnHost<B> + Sized {
    /// The plain baseline through the two-pass output type (no RPN, no
    /// crop): one pass over the prompt, then greedy decoding.
    fn answer_baseline(
        &self,
        image: &RgbImage,
        question: &str,
        options: &AnswerOptions,
    ) -> Result<TwoPassOutput, Self::Error> {
        let t0 = Instant::now();
        let prompt = self.prepare(image, question)?;
        let prepare_ms = ms(t0);
        let t1 = Instant::now();
        let mut cache = KvCache::new(self.num_layers());
        let out = self.run_layers(
            prompt.embeds(),
            0,
            &prompt.positions(),
            0..self.num_layers(),
            Some(&mut cache),
        );
        let first_logits = self.last_logits(out)?;
        let tokens = self.decode(&first_logits, &mut cache, prompt.decode_offset(), options)?;
        Ok(TwoPassOutput {
            answer: self.answer_text(&tokens, options)?,
            tokens,
            roi_map: Vec::new(),
            boxes: Vec::new(),
            crop: None,
            mode: RoiMode::None,
            roi_tokens: 0,
            kept: Vec::new(),
            timings: Timings {
                prepare_ms,
                pass2_ms: ms(t1),
                total_ms: ms(t0),
                ..Timings::default()
            },
            first_logits,
        })
    }

    /// RPN probabilities of a prepared prompt and the frozen-prefix states
    /// (output of layer K-1, `[1, T, D]`), filling `cache` for layers 0..K.
    fn roi_probabilities(
        &self,
        rpn: &HostRpn<B, Self>,
        prompt: &Self::Prompt,
        branch: usize,
        cache: &mut KvCache<B>,
    ) -> Result<(Vec<f32>, Tensor<B, 3>), Self::Error> {
        sdrpn_core::rpn::check_branch(branch, rpn.twig_depth(), self.num_layers())?;
        let h = self.run_layers(
            prompt.embeds(),
            0,
            &prompt.positions(),
            0..branch,
            Some(cache),
        );
        Ok((self.rpn_map(rpn, prompt, h.clone())?, h))
    }

    /// The RPN's probability per visual token of `prompt`, from the states
    /// its branch layer receives (what [`Self::roi_probabilities`] runs after
    /// the base layers).
    ///
    /// # Shapes
    /// - `h`: `[1, T, D]`, the output of layer K-1 -> `P` values (the prompt's grid)
    fn rpn_map(
        &self,
        rpn: &HostRpn<B, Self>,
        prompt: &Self::Prompt,
        h: Tensor<B, 3>,
    ) -> Result<Vec<f32>, Self::Error> {
        let device = self.device();
        let query = Tensor::<B, 1, Int>::from_data(
            TensorData::new(vec![prompt.query() as i64], [1]),
            &device,
        );
        let visual: Vec<i64> = prompt.visual().map(|i| i as i64).collect();
        let p = visual.len();
        let visual =
            Tensor::<B, 1, Int>::from_data(TensorData::new(visual, [p]), &device).reshape([1, p]);
        let logits = rpn.forward(h, &prompt.positions(), query, visual);
        Ok(floats(sigmoid(logits))?)
    }

    /// Answers `question` about `image` with SD-RPN's two passes.
    fn answer_with_roi(
        &self,
        rpn: &HostRpn<B, Self>,
        image: &RgbImage,
        question: &str,
        options: &TwoPassOptions,
    ) -> Result<TwoPassOutput, Self::Error> {
        two_pass(self, image, question, options, MapSource::Rpn(rpn))
    }

    /// Two-pass answering with a given RoI probability map (one value per
    /// token of the prompt's grid) in place of the RPN's: for experiments
    /// with other RoI sources, and to exercise every crop mode in tests.
    fn answer_with_map(
        &self,
        image: &RgbImage,
        question: &str,
        map: &[f32],
        options: &TwoPassOptions,
    ) -> Result<TwoPassOutput, Self::Error> {
        two_pass(self, image, question, options, MapSource::Given(map))
    }

    /// ViCrop's two passes ([`ViCropRule`]): pass 1 runs layers `0..=layer`
    /// on the prompt and, for rel-att, on the generic question's prompt
    /// (the ratio of their maps picks ViCrop's crop), or, for grad-att,
    /// layers `layer..L` once more with autodiff (the gradient-weighted map
    /// picks it); pass 2 answers with the crop's tokens appended (reusing
    /// pass 1's prefix like SD-RPN).
    /// `options.branch` is ignored (the layer takes its place); `options.roi`
    /// too.
    fn answer_with_vicrop(
        &self,
        image: &RgbImage,
        question: &str,
        layer: usize,
        rule: &ViCropRule,
        options: &TwoPassOptions,
    ) -> Result<TwoPassOutput, Self::Error> {
        let options = TwoPassOptions {
            branch: layer + 1,
            ..options.clone()
        };
        two_pass(self, image, question, &options, MapSource::ViCrop(rule))
    }

    /// Two-pass answering with a given crop (source pixels) in place of the
    /// RPN's RoI: all its tokens are appended, as for one RPN box. For
    /// controls (the ground-truth box, a random or a centred one).
    fn answer_with_region(
        &self,
        image: &RgbImage,
        question: &str,
        region: PixelBox,
        options: &TwoPassOptions,
    ) -> Result<TwoPassOutput, Self::Error> {
        // The region is checked where the host crops it.
        two_pass(self, image, question, options, MapSource::Region(region))
    }
}

impl<B: Backend, H: RpnHost<B>> TwoPass<B> for H {}

fn two_pass<B: Backend, H: RpnHost<B>>(
    host: &H,
    image: &RgbImage,
    question: &str,
    options: &TwoPassOptions,
    source: MapSource<'_, B, H>,
) -> Result<TwoPassOutput, H::Error> {
    let t0 = Instant::now();
    let prompt = host.prepare(image, question)?;
    let prepare_ms = ms(t0);
    let layers = host.num_layers();
    let k = options.branch;
    let grid = prompt.grid();
    let positions = prompt.positions();

    let t1 = Instant::now();
    let mut cache = KvCache::new(layers);
    let (probs, h) = match source {
        MapSource::Rpn(rpn) => {
            let (probs, h) = host.roi_probabilities(rpn, &prompt, k, &mut cache)?;
            (Some(probs), h)
        }
        MapSource::ViCrop(rule) => match rule.map {
            ViCropMap::Relative => {
                let (h, mut maps) = relative_maps(
                    host,
                    &prompt,
                    image,
                    question,
                    &[k - 1],
                    rule,
                    Some(&mut cache),
                )?;
                (maps.pop(), h)
            }
            ViCropMap::Gradient => {
                let (h, map) = gradient_map(host, &prompt, k - 1, Some(&mut cache))?;
                (Some(map), h)
            }
        },
        MapSource::Given(_) | MapSource::Region(_) => {
            if let MapSource::Given(map) = source {
                grid.check_len("RoI map", map.len())?;
            }
            sdrpn_core::rpn::check_branch(k, 1, layers)?;
            let h = host.run_layers(prompt.embeds(), 0, &positions, 0..k, Some(&mut cache));
            let map = match source {
                MapSource::Given(map) => Some(map.to_vec()),
                _ => None,
            };
            (map, h)
        }
    };
    let pass1_ms = ms(t1);

    let t2 = Instant::now();
    let region = match source {
        MapSource::Region(r) => Some(r),
        MapSource::ViCrop(rule) => Some(sdrpn_core::vicrop::vicrop_box(
            probs.as_deref().unwrap_or_default(),
            grid,
            image.width(),
            image.height(),
            rule.base_box,
        )?),
        _ => None,
    };
    let selection_map = match source {
        MapSource::ViCrop(_) => None,
        _ => probs.as_deref(),
    };
    let crop = crop_stage(host, &prompt, image, selection_map, region, &options.roi)?;
    let crop_ms = ms(t2);
    let probs = probs.unwrap_or_default();
    let CropStage {
        selection,
        region,
        mode,
        roi,
        kept,
    } = crop;

    let t3 = Instant::now();
    let [_, t, d] = prompt.embeds().dims();
    let (first_logits, mut cache, roi_count, offset) = match roi {
        None => {
            // Same sequence: finish layers K..L on pass 1's states.
            let out = host.run_layers(h, 0, &positions, k..layers, Some(&mut cache));
            (host.last_logits(out)?, cache, 0, prompt.decode_offset())
        }
        Some(roi) => {
            let at = roi.at;
            let after = prompt.embeds().slice([0..1, at..t, 0..d]);
            let count = roi.embeds.dims()[1];
            let total = t + count;
            if options.reuse_prefix_cache {
                let mut reused = cache.prefix(k, at);
                let new_part = Tensor::cat(vec![roi.embeds, after], 1);
                let h_new = host.run_layers(
                    new_part,
                    at,
                    &roi.positions.slice(at..total),
                    0..k,
                    Some(&mut reused),
                );
                let [_, _, dh] = h.dims();
                let h_full = Tensor::cat(vec![h.slice([0..1, 0..at, 0..dh]), h_new], 1);
                let out = host.run_layers(h_full, 0, &roi.positions, k..layers, Some(&mut reused));
                (
                    host.last_logits(out)?,
                    reused,
                    roi.roi_tokens,
                    roi.decode_offset,
                )
            } else {
                let mut fresh = KvCache::new(layers);
                let full = with_insert(prompt.embeds(), &roi);
                let out = host.run_layers(full, 0, &roi.positions, 0..layers, Some(&mut fresh));
                (
                    host.last_logits(out)?,
                    fresh,
                    roi.roi_tokens,
                    roi.decode_offset,
                )
            }
        }
    };
    let tokens = host.decode(&first_logits, &mut cache, offset, &options.answer)?;
    Ok(TwoPassOutput {
        answer: host.answer_text(&tokens, &options.answer)?,
        tokens,
        roi_map: probs,
        boxes: selection.boxes,
        crop: region,
        mode,
        roi_tokens: roi_count,
        kept,
        timings: Timings {
            prepare_ms,
            pass1_ms,
            crop_ms,
            pass2_ms: ms(t3),
            total_ms: ms(t0),
        },
        first_logits,
    })
}

/// What pass 1's RoI map (or a given region) decided for one prompt: the
/// RoI selection, the crop, the mode actually used, pass 2's insert and the
/// crop-grid tokens it keeps.
pub(crate) struct CropStage<B: Backend> {
    pub selection: RoiSelection,
    pub region: Option<PixelBox>,
    pub mode: RoiMode,
    pub roi: Option<RoiInsert<B>>,
    pub kept: Vec<usize>,
}

/// RoI extraction on `probs` (one box of all crop tokens when `given` is a
/// region instead), the crop of `image` it selects, and the host's encoding
/// of that crop for pass 2.
pub(crate) fn crop_stage<B: Backend, H: RpnHost<B>>(
    host: &H,
    prompt: &H::Prompt,
    image: &RgbImage,
    probs: Option<&[f32]>,
    given: Option<PixelBox>,
    roi_config: &RoiConfig,
) -> Result<CropStage<B>, H::Error> {
    let grid = prompt.grid();
    let selection: RoiSelection = match probs {
        Some(p) => roi_config.select(
            Tensor::<B, 1>::from_data(TensorData::new(p.to_vec(), [p.len()]), &host.device()),
            grid,
        )?,
        None => RoiSelection {
            mode: RoiMode::Bbox,
            boxes: Vec::new(),
            crop: None,
            keep: None,
            blurred: Vec::new(),
            mask: Vec::new(),
        },
    };
    let region = match (selection.crop, given) {
        (_, Some(r)) => Some(r),
        (Some(b), None) => host.token_box_pixels(prompt, b, image.width(), image.height())?,
        (None, None) => None,
    };
    // A box entirely in the padding has nothing to crop: answer without RoI.
    let mode = if region.is_some() {
        selection.mode
    } else {
        RoiMode::None
    };
    // The mask of the union box, on the grid the crop is encoded on.
    let keep: Option<Vec<bool>> = match (region, selection.crop, &selection.keep) {
        (Some(r), Some(union), Some(_)) => {
            let crop_grid = host.crop_grid(r)?;
            Some(resize_mask_to(&selection.mask, grid, union, crop_grid))
        }
        _ => None,
    };
    let roi = match region {
        Some(r) => Some(host.roi_insert(prompt, image, r, keep.as_deref())?),
        None => None,
    };
    let kept: Vec<usize> = match (&roi, &keep, region) {
        (None, _, _) => Vec::new(),
        (Some(_), Some(keep), _) => (0..keep.len()).filter(|&i| keep[i]).collect(),
        (Some(_), None, Some(r)) => (0..host.crop_grid(r)?.len()).collect(),
        (Some(_), None, None) => Vec::new(),
    };
    Ok(CropStage {
        selection,
        region,
        mode,
        roi,
        kept,
    })
}

/// Pass 2's whole sequence: the prompt's embeddings `[1, T, D]` with the
/// RoI's inserted before token `roi.at` -> `[1, T + R, D]`.
pub(crate) fn with_insert<B: Backend>(embeds: Tensor<B, 3>, roi: &RoiInsert<B>) -> Tensor<B, 3> {
    let [_, t, d] = embeds.dims();
    let at = roi.at;
    let before = embeds.clone().slice([0..1, 0..at, 0..d]);
    let after = embeds.slice([0..1, at..t, 0..d]);
    Tensor::cat(vec![before, roi.embeds.clone(), after], 1)
}
