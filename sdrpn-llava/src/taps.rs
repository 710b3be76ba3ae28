//! What a forward pass captures, asked for explicitly.
//!
//! Nothing is captured unless asked: the attention maps of all layers of a
//! 7B model over a 600-token prompt do not fit in memory.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use std::collections::{BTreeMap, BTreeSet};

/// Which query rows of an attention map to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum QueryRows {
    /// Every query row of the pass.
    #[default]
    All,
    /// The last `n` rows of the pass.
    Last(usize),
    /// These absolute sequence positions (those inside the pass).
    Positions(Vec<usize>),
}

/// A request for captured tensors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Taps {
    /// Layers whose post-softmax attention is kept, with the heads to keep
    /// (`None`: all heads).
    pub attention: BTreeMap<usize, Option<Vec<usize>>>,
    /// Which query rows of those maps to keep.
    pub queries: QueryRows,
    /// Hidden states to keep, in HF numbering: 0 = input embeddings, i =
    /// after decoder layer i (1-based), L = after the final norm.
    pub hidden: BTreeSet<usize>,
}

impl Taps {
    /// Captures nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// All heads of the given layers, every query row.
    pub fn attention_of(layers: impl IntoIterator<Item = usize>) -> Self {
        Self {
            attention: layers.into_iter().map(|l| (l, None)).collect(),
            ..Self::default()
        }
    }

    /// Whether anything is asked for.
    pub fn is_empty(&self) -> bool {
        self.attention.is_empty() && self.hidden.is_empty()
    }

    /// Whether the attention of `layer` is asked for.
    pub(crate) fn keeps_attention(&self, layer: usize) -> bool {
        self.attention.contains_key(&layer)
    }

    /// Keeps the requested heads and query rows of `probs` for `layer`,
    /// whose queries sit at positions `start..start + T`.
    ///
    /// # Shapes
    /// - `probs`: `[N, H, T, S]` -> `[N, h, q, S]`
    pub(crate) fn select<B: Backend>(
        &self,
        layer: usize,
        probs: &Tensor<B, 4>,
        start: usize,
    ) -> Option<Tensor<B, 4>> {
        let heads = self.attention.get(&layer)?;
        let [_, _, t, _] = probs.dims();
        let device = probs.device();
        let mut out = probs.clone();
        if let Some(h) = heads {
            let idx: Vec<i64> = h.iter().map(|&x| x as i64).collect();
            out = out.select(1, Tensor::<B, 1, Int>::from_data(idx.as_slice(), &device));
        }
        let rows: Option<Vec<i64>> = match &self.queries {
            QueryRows::All => None,
            QueryRows::Last(n) => Some((t.saturating_sub(*n)..t).map(|r| r as i64).collect()),
            QueryRows::Positions(ps) => Some(
                ps.iter()
                    .filter(|&&p| p >= start && p < start + t)
                    .map(|&p| (p - start) as i64)
                    .collect(),
            ),
        };
        match rows {
            None => Some(out),
            Some(r) if r.len() == t => Some(out),
            Some(r) if r.is_empty() => None,
            Some(r) => Some(out.select(2, Tensor::<B, 1, Int>::from_data(r.as_slice(), &device))),
        }
    }
}

/// Tensors captured by one forward pass.
#[derive(Debug, Clone)]
pub struct Captured<B: Backend> {
    /// Post-softmax attention per layer, `[N, h, q, S]`.
    pub attention: BTreeMap<usize, Tensor<B, 4>>,
    /// Hidden states by HF index, `[N, T, D]`.
    pub hidden: BTreeMap<usize, Tensor<B, 3>>,
}

impl<B: Backend> Default for Captured<B> {
    fn default() -> Self {
        Self {
            attention: BTreeMap::new(),
            hidden: BTreeMap::new(),
        }
    }
}
