//! SD-RPN's two-pass inference (SPEC 4) on LLaVA.
//!
//! Pass 1 runs base layers `0..K` on the prompt and the RPN on their output,
//! giving a probability per visual token. RoI extraction decides: no crop
//! (answer from the global image), one box (append all crop tokens), or the
//! union box with a token mask. Pass 2 answers from
//! `[prompt up to the image end | RoI tokens | rest of the prompt]`.
//!
//! Positions before the RoI tokens are identical in both passes and the
//! mask is causal, so by default pass 2 reuses pass 1's keys/values of
//! layers `0..K` for that prefix and its layer-`K` input states, instead of
//! recomputing them (exact up to rounding; `reuse_prefix_cache = false`
//! recomputes everything, as the reference code does).

use crate::cache::KvCache;
use crate::error::{LlavaError, Result};
use crate::host::LlavaRpn;
use crate::preprocess::{clip_preprocess, crop_and_resize};
use crate::session::{AnswerOptions, LlavaSession, Prepared};
use crate::taps::{Captured, Taps};
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use image::RgbImage;
use sdrpn_core::components::TokenBox;
use sdrpn_core::crop::{token_box_to_pixels, PixelBox};
use sdrpn_core::host::RpnHost;
use sdrpn_core::readback::floats;
use sdrpn_core::roi::{RoiConfig, RoiMode, RoiSelection};
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

/// Where pass 1's RoI map comes from.
enum MapSource<'a, B: Backend> {
    /// The trained RPN.
    Rpn(&'a LlavaRpn<B>),
    /// A map given by the caller.
    Given(&'a [f32]),
    /// A crop given by the caller (source pixels): no map, one box.
    Region(PixelBox),
}

// Manual impls: a derive would ask `B: Copy`.
impl<B: Backend> Clone for MapSource<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for MapSource<'_, B> {}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

impl<B: Backend> LlavaSession<B> {
    /// Greedy answer tokens after a prefill (`cache` holds the prompt,
    /// `first_logits` are its last position's logits), no taps.
    fn decode_answer(
        &self,
        first_logits: &[f32],
        cache: &mut KvCache<B>,
        options: &AnswerOptions,
    ) -> Result<Vec<u32>> {
        self.with_stop_rule(options, |rule| {
            self.model
                .decode(first_logits, cache, rule, &Taps::none(), |_, _| Ok(()))
        })
    }

    /// The plain baseline through the two-pass output type (no RPN, no crop):
    /// the same tokens as [`LlavaSession::answer`].
    pub fn answer_baseline(
        &self,
        image: &RgbImage,
        question: &str,
        options: &AnswerOptions,
    ) -> Result<TwoPassOutput> {
        let t0 = Instant::now();
        let prepared = self.prepare(image, question)?;
        let prepare_ms = ms(t0);
        let t1 = Instant::now();
        let mut cache = KvCache::new(self.model.language.num_layers());
        let out = self
            .model
            .forward(prepared.embeds, 0, Some(&mut cache), &Taps::none());
        let first_logits = self.model.last_logits(out.hidden)?;
        let tokens = self.decode_answer(&first_logits, &mut cache, options)?;
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
    pub fn roi_probabilities(
        &self,
        rpn: &LlavaRpn<B>,
        prepared: &Prepared<B>,
        branch: usize,
        cache: &mut KvCache<B>,
    ) -> Result<(Vec<f32>, Tensor<B, 3>)> {
        sdrpn_core::rpn::check_branch(branch, rpn.twig_depth(), self.num_layers())?;
        let device = self.device();
        let mut captured = Captured::default();
        let h = self.model.language.run_layers(
            prepared.embeds.clone(),
            0,
            0..branch,
            Some(cache),
            &Taps::none(),
            &mut captured,
        );
        let query = Tensor::<B, 1, Int>::from_data(
            TensorData::new(vec![prepared.query() as i64], [1]),
            &device,
        );
        let visual: Vec<i64> = prepared.visual.clone().map(|i| i as i64).collect();
        let p = visual.len();
        let visual =
            Tensor::<B, 1, Int>::from_data(TensorData::new(visual, [p]), &device).reshape([1, p]);
        let positions = sdrpn_core::Positions::prefix(prepared.ids.len());
        let logits = rpn.forward(h.clone(), &positions, query, visual);
        Ok((floats(sigmoid(logits))?, h))
    }

    /// Encodes the RoI crop: the source rectangle resized to the tower's
    /// input (Pillow bilinear), CLIP-normalised, encoded and projected;
    /// only the tokens under `keep` (raster order) when given.
    ///
    /// # Shapes
    /// - returns `[1, P', D]`
    pub fn roi_tokens(
        &self,
        image: &RgbImage,
        region: PixelBox,
        keep: Option<&[bool]>,
    ) -> Result<Tensor<B, 3>> {
        let s = self.model.config().vision.image_size;
        let crop = crop_and_resize(image, region, s as u32, s as u32)?;
        let pixels = Tensor::from_data(
            TensorData::new(clip_preprocess(&crop, s as u32), [1, 3, s, s]),
            &self.device(),
        );
        let projected = self.model.image_features(pixels)?.projected;
        let Some(keep) = keep else {
            return Ok(projected);
        };
        let idx: Vec<i64> = keep
            .iter()
            .enumerate()
            .filter(|(_, &k)| k)
            .map(|(i, _)| i as i64)
            .collect();
        if idx.is_empty() {
            return Err(LlavaError::invalid("RoI mask", "keeps no token"));
        }
        let n = idx.len();
        Ok(projected.select(
            1,
            Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [n]), &self.device()),
        ))
    }

    /// Answers `question` about `image` with SD-RPN's two passes.
    pub fn answer_with_roi(
        &self,
        rpn: &LlavaRpn<B>,
        image: &RgbImage,
        question: &str,
        options: &TwoPassOptions,
    ) -> Result<TwoPassOutput> {
        self.two_pass(image, question, options, MapSource::Rpn(rpn))
    }

    /// Two-pass answering with a given RoI probability map (`grid.len()`
    /// values) in place of the RPN's: for experiments with other RoI
    /// sources, and to exercise every crop mode in tests.
    pub fn answer_with_map(
        &self,
        image: &RgbImage,
        question: &str,
        map: &[f32],
        options: &TwoPassOptions,
    ) -> Result<TwoPassOutput> {
        self.two_pass(image, question, options, MapSource::Given(map))
    }

    /// Two-pass answering with a given crop (source pixels) in place of the
    /// RPN's RoI: all its tokens are appended, as for one RPN box. For
    /// controls (the ground-truth box, a random or a centred one).
    pub fn answer_with_region(
        &self,
        image: &RgbImage,
        question: &str,
        region: PixelBox,
        options: &TwoPassOptions,
    ) -> Result<TwoPassOutput> {
        // The region is checked where it is cropped (`crop_and_resize`).
        self.two_pass(image, question, options, MapSource::Region(region))
    }

    fn two_pass(
        &self,
        image: &RgbImage,
        question: &str,
        options: &TwoPassOptions,
        source: MapSource<'_, B>,
    ) -> Result<TwoPassOutput> {
        let t0 = Instant::now();
        let prepared = self.prepare(image, question)?;
        let prepare_ms = ms(t0);
        let layers = self.model.language.num_layers();
        let k = options.branch;

        let t1 = Instant::now();
        let mut cache = KvCache::new(layers);
        let (probs, h) = match source {
            MapSource::Rpn(rpn) => {
                let (probs, h) = self.roi_probabilities(rpn, &prepared, k, &mut cache)?;
                (Some(probs), h)
            }
            MapSource::Given(_) | MapSource::Region(_) => {
                if let MapSource::Given(map) = source {
                    self.grid().check_len("RoI map", map.len())?;
                }
                sdrpn_core::rpn::check_branch(k, 1, layers)?;
                let mut captured = Captured::default();
                let h = self.model.language.run_layers(
                    prepared.embeds.clone(),
                    0,
                    0..k,
                    Some(&mut cache),
                    &Taps::none(),
                    &mut captured,
                );
                let map = match source {
                    MapSource::Given(map) => Some(map.to_vec()),
                    _ => None,
                };
                (map, h)
            }
        };
        let device = self.device();
        let selection: RoiSelection = match &probs {
            Some(p) => options.roi.select(
                Tensor::<B, 1>::from_data(TensorData::new(p.clone(), [p.len()]), &device),
                self.grid(),
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
        let probs = probs.unwrap_or_default();
        let pass1_ms = ms(t1);

        let t2 = Instant::now();
        let patch = self.model.config().vision.patch_size;
        let region = match (selection.crop, source) {
            (_, MapSource::Region(r)) => Some(r),
            (Some(b), _) => {
                token_box_to_pixels(b, self.grid(), patch, image.width(), image.height())?
            }
            (None, _) => None,
        };
        // A box entirely in the padding has nothing to crop: answer without RoI.
        let mode = if region.is_some() {
            selection.mode
        } else {
            RoiMode::None
        };
        let roi = match region {
            Some(r) => Some(self.roi_tokens(image, r, selection.keep.as_deref())?),
            None => None,
        };
        let kept: Vec<usize> = match (&roi, selection.keep.as_deref()) {
            (None, _) => Vec::new(),
            (Some(_), Some(keep)) => (0..keep.len()).filter(|&i| keep[i]).collect(),
            (Some(_), None) => (0..self.grid().len()).collect(),
        };
        let crop_ms = ms(t2);

        let t3 = Instant::now();
        let [_, t, d] = prepared.embeds.dims();
        let end = prepared.visual.end;
        let (first_logits, mut cache, roi_count) = match roi {
            None => {
                // Same sequence: finish layers K..L on pass 1's states.
                let mut captured = Captured::default();
                let out = self.model.language.run_layers(
                    h,
                    0,
                    k..layers,
                    Some(&mut cache),
                    &Taps::none(),
                    &mut captured,
                );
                (
                    self.model
                        .last_logits(self.model.language.final_norm(out))?,
                    cache,
                    0,
                )
            }
            Some(roi) => {
                let count = roi.dims()[1];
                let before = prepared.embeds.clone().slice([0..1, 0..end, 0..d]);
                let after = prepared.embeds.clone().slice([0..1, end..t, 0..d]);
                if options.reuse_prefix_cache {
                    let mut reused = cache.prefix(k, end);
                    let mut captured = Captured::default();
                    let new_part = Tensor::cat(vec![roi, after], 1);
                    let h_new = self.model.language.run_layers(
                        new_part,
                        end,
                        0..k,
                        Some(&mut reused),
                        &Taps::none(),
                        &mut captured,
                    );
                    let [_, _, dh] = h.dims();
                    let h_full = Tensor::cat(vec![h.slice([0..1, 0..end, 0..dh]), h_new], 1);
                    let out = self.model.language.run_layers(
                        h_full,
                        0,
                        k..layers,
                        Some(&mut reused),
                        &Taps::none(),
                        &mut captured,
                    );
                    (
                        self.model
                            .last_logits(self.model.language.final_norm(out))?,
                        reused,
                        count,
                    )
                } else {
                    let mut fresh = KvCache::new(layers);
                    let full = Tensor::cat(vec![before, roi, after], 1);
                    let out = self.model.forward(full, 0, Some(&mut fresh), &Taps::none());
                    (self.model.last_logits(out.hidden)?, fresh, count)
                }
            }
        };
        let tokens = self.decode_answer(&first_logits, &mut cache, &options.answer)?;
        Ok(TwoPassOutput {
            answer: self.answer_text(&tokens, &options.answer)?,
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
}
