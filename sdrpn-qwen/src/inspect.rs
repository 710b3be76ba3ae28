//! Everything a forward pass computes (`sdrpn inspect` on a Qwen
//! checkpoint), with the same meanings as for LLaVA plus Qwen's own inputs:
//! `input_ids [T]`, `pixel_values [S, 3*2*p*p]` (the processor's flattened
//! patches), `image_grid_thw [1, 3]`, `position_ids [3, T]`,
//! `image_features_projected [P, D]` (merger output), `lm_hidden_states
//! [L+1, T, D]`, `lm_attentions [L, H, T, T]`, `logits [T, V]`, `gen_ids
//! [N]`, `decode_attentions [N-1, L, H, T+N-1]`.

use crate::error::Result;
use crate::session::QwenSession;
use burn::tensor::backend::Backend;
use image::RgbImage;
use sdrpn_llava::cache::KvCache;
use sdrpn_llava::inspect::{DecodeRows, HostValues, Inspection};
use sdrpn_llava::session::AnswerOptions;
use sdrpn_llava::taps::Taps;

impl<B: Backend> QwenSession<B> {
    /// Runs the prompt once with every tap on, then generates greedily
    /// (`max_new_tokens`), recording the attention rows of each fed-back token.
    pub fn inspect(
        &self,
        image: &RgbImage,
        message: &str,
        max_new_tokens: usize,
    ) -> Result<Inspection> {
        let prepared = self.prepare(image, message)?;
        let layers = self.model.language.num_layers();
        let mut out = Inspection::default();
        out.push_ids("input_ids", &prepared.ids);
        out.push_f32("pixel_values", prepared.patches.clone())?;
        let (rows, cols) = prepared.patch_grid;
        out.tensors.push((
            "image_grid_thw".into(),
            vec![1, 3],
            HostValues::I64(vec![1, rows as i64, cols as i64]),
        ));
        let t = prepared.ids.len();
        let p = &prepared.positions.positions;
        let positions: Vec<i64> = (0..3)
            .flat_map(|a| (0..t).map(move |i| p.at(0, i, 3)[a]))
            .collect();
        out.tensors.push((
            "position_ids".into(),
            vec![3, t],
            HostValues::I64(positions),
        ));
        out.push_f32("image_features_projected", prepared.features.clone())?;

        let taps = Taps {
            hidden: (0..=layers).collect(),
            ..Taps::attention_of(0..layers)
        };
        let full = self.model.forward(
            prepared.embeds.clone(),
            0,
            &prepared.positions.positions,
            None,
            &taps,
        );
        out.push_layers(&full.captured)?;
        let logits = self.model.language.logits(full.hidden);
        let v = logits.dims()[2];
        out.push_f32("logits", logits.reshape([t, v]))?;

        let mut rows = DecodeRows::default();
        let mut cache = KvCache::new(layers);
        let options = AnswerOptions {
            max_new_tokens,
            stop_strings: Vec::new(),
        };
        let (gen, _) = self.generate(
            &prepared,
            &mut cache,
            &options,
            (&Taps::none(), &Taps::attention_of(0..layers)),
            |_, cap| {
                rows.record(cap);
                Ok(())
            },
        )?;
        out.push_ids("gen_ids", &gen);
        rows.push_into(&mut out, t)?;
        Ok(out)
    }
}
