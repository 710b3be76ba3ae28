//! Everything a forward pass computes, for debugging and parity tests
//! (`sdrpn inspect`): input ids, pixels, image features, every hidden state,
//! every attention map, logits, and the greedy continuation with the
//! attention rows of each fed-back token.

use crate::cache::KvCache;
use crate::error::{LlavaError, Result};
use crate::session::{AnswerOptions, LlavaSession};
use crate::taps::{Captured, Taps};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use image::RgbImage;
use sdrpn_core::readback::floats;
use std::collections::BTreeMap;
use std::path::Path;

/// A host-side tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum HostValues {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit integers (token ids).
    I64(Vec<i64>),
}

/// The attention rows of each fed-back token, gathered while decoding with
/// every layer's attention tapped.
pub struct DecodeRows<B: Backend> {
    /// One `[1, L, H, S]` per step (`S` grows by one each step).
    rows: Vec<Tensor<B, 4>>,
}

impl<B: Backend> Default for DecodeRows<B> {
    fn default() -> Self {
        Self { rows: Vec::new() }
    }
}

impl<B: Backend> DecodeRows<B> {
    /// Records one step's taps (`[1, H, 1, S]` per layer).
    pub fn record(&mut self, captured: Captured<B>) {
        let step = Tensor::cat(captured.attention.into_values().collect(), 0);
        let [l, h, _, s] = step.dims();
        self.rows.push(step.reshape([1, l, h, s]));
    }

    /// Appends `decode_attentions [N-1, L, H, T+N-1]` to `out` for a prompt
    /// of `t` tokens: row j is token j fed back at position T+j, zero-padded
    /// on the right. Nothing when no token was fed back.
    pub fn push_into(self, out: &mut Inspection, t: usize) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let width = t + self.rows.len();
        let padded: Vec<Tensor<B, 4>> = self
            .rows
            .into_iter()
            .map(|r| {
                let [n, l, h, s] = r.dims();
                let pad = Tensor::zeros([n, l, h, width - s], &r.device());
                Tensor::cat(vec![r, pad], 3)
            })
            .collect();
        out.push_f32("decode_attentions", Tensor::cat(padded, 0))
    }
}

/// Named host tensors in insertion order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inspection {
    /// `(name, shape, values)`.
    pub tensors: Vec<(String, Vec<usize>, HostValues)>,
}

impl Inspection {
    /// Appends a tensor read back as f32.
    pub fn push_f32<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        t: Tensor<B, D>,
    ) -> Result<()> {
        let shape = t.dims().to_vec();
        self.tensors
            .push((name.into(), shape, HostValues::F32(floats(t)?)));
        Ok(())
    }

    /// Appends token ids as i64.
    pub fn push_ids(&mut self, name: &str, ids: &[u32]) {
        self.tensors.push((
            name.into(),
            vec![ids.len()],
            HostValues::I64(ids.iter().map(|&x| x as i64).collect()),
        ));
    }

    /// Appends a full pass's `lm_hidden_states [L+1, T, D]` and
    /// `lm_attentions [L, H, T, T]` (every layer tapped, batch of one).
    pub fn push_layers<B: Backend>(&mut self, captured: &Captured<B>) -> Result<()> {
        let hidden: Vec<Tensor<B, 3>> = captured.hidden.values().cloned().collect();
        self.push_f32("lm_hidden_states", Tensor::cat(hidden, 0))?;
        let attention: Vec<Tensor<B, 4>> = captured.attention.values().cloned().collect();
        self.push_f32("lm_attentions", Tensor::cat(attention, 0))
    }

    /// A tensor by name.
    pub fn get(&self, name: &str) -> Option<(&[usize], &HostValues)> {
        self.tensors
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, s, v)| (s.as_slice(), v))
    }

    /// Writes all tensors to a safetensors file (atomically: temp + rename).
    pub fn save(&self, path: &Path, metadata: BTreeMap<String, String>) -> Result<()> {
        let bytes: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(name, shape, values)| {
                let (dtype, data) = match values {
                    HostValues::F32(v) => (
                        safetensors::Dtype::F32,
                        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    ),
                    HostValues::I64(v) => (
                        safetensors::Dtype::I64,
                        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    ),
                };
                (name.clone(), shape.clone(), dtype, data)
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(name, shape, dtype, data)| {
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| LlavaError::invalid("inspect output", e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta: std::collections::HashMap<String, String> = metadata.into_iter().collect();
        let tmp = path.with_extension("safetensors.tmp");
        safetensors::serialize_to_file(views, Some(meta), &tmp).map_err(|e| {
            LlavaError::invalid("inspect output", format!("{}: {e}", tmp.display()))
        })?;
        std::fs::rename(&tmp, path).map_err(|e| LlavaError::io(path, e))
    }
}

impl<B: Backend> LlavaSession<B> {
    /// Runs the prompt once with every tap on, then generates greedily
    /// (`max_new_tokens`), recording the attention rows of each fed-back token.
    ///
    /// Tensors (batch dimension dropped): `input_ids [T]`, `pixel_values
    /// [3,S,S]`, `image_features_selected [P,Dv]`, `image_features_projected
    /// [P,D]`, `lm_hidden_states [L+1,T,D]`, `lm_attentions [L,H,T,T]`,
    /// `logits [T,V]`, `gen_ids [N]`, `decode_attentions [N-1,L,H,T+N-1]`
    /// (row j: token j fed back at position T+j, zero-padded on the right).
    pub fn inspect(
        &self,
        image: &RgbImage,
        text: &str,
        max_new_tokens: usize,
    ) -> Result<Inspection> {
        let prepared = self.prepare(image, text)?;
        let layers = self.model.language.num_layers();
        let mut out = Inspection::default();
        out.push_ids("input_ids", &prepared.ids);
        let [_, c, s, _] = prepared.pixels.dims();
        out.push_f32("pixel_values", prepared.pixels.clone().reshape([c, s, s]))?;
        let squeeze = |t: Tensor<B, 3>| {
            let [_, p, d] = t.dims();
            t.reshape([p, d])
        };
        out.push_f32(
            "image_features_selected",
            squeeze(prepared.features.selected.clone()),
        )?;
        out.push_f32(
            "image_features_projected",
            squeeze(prepared.features.projected.clone()),
        )?;

        // Full pass with every tap (no cache needed: generation below redoes it).
        let taps = Taps {
            hidden: (0..=layers).collect(),
            ..Taps::attention_of(0..layers)
        };
        let full = self.model.forward(prepared.embeds.clone(), 0, None, &taps);
        out.push_layers(&full.captured)?;
        let [_, t, d] = full.hidden.dims();
        out.push_f32(
            "logits",
            squeeze(self.model.language.logits(full.hidden.reshape([1, t, d]))),
        )?;

        // Greedy continuation with the attention rows of each fed-back token.
        let mut rows = DecodeRows::default();
        let mut cache = KvCache::new(layers);
        let options = AnswerOptions {
            max_new_tokens,
            stop_strings: Vec::new(),
        };
        let gen = self.answer_tokens(
            prepared.embeds,
            &mut cache,
            &options,
            &Taps::attention_of(0..layers),
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
