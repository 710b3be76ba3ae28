//! The key/value cache, kept outside the model (runtime state).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Keys and values of one layer for the positions seen so far.
#[derive(Debug, Clone)]
pub struct LayerKv<B: Backend> {
    /// `[N, Hkv, S, hd]`
    pub keys: Tensor<B, 4>,
    /// `[N, Hkv, S, hd]`
    pub values: Tensor<B, 4>,
}

/// Per-layer key/value cache of a decoder. A layer without an entry has
/// seen nothing yet.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerKv<B>>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// Number of positions cached in layer 0 (the sequence length so far).
    pub fn len(&self) -> usize {
        self.seq_len(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of positions cached in `layer`.
    pub fn seq_len(&self, layer: usize) -> usize {
        self.layers
            .get(layer)
            .and_then(|l| l.as_ref())
            .map_or(0, |kv| kv.keys.dims()[2])
    }

    /// Appends new keys and values to `layer` and returns all of them.
    ///
    /// # Shapes
    /// - `keys`, `values`: `[N, Hkv, T, hd]` -> `[N, Hkv, S + T, hd]`
    pub fn append(&mut self, layer: usize, keys: Tensor<B, 4>, values: Tensor<B, 4>) -> LayerKv<B> {
        let merged = match self.layers[layer].take() {
            None => LayerKv { keys, values },
            Some(old) => LayerKv {
                keys: Tensor::cat(vec![old.keys, keys], 2),
                values: Tensor::cat(vec![old.values, values], 2),
            },
        };
        self.layers[layer] = Some(merged.clone());
        merged
    }

    /// A cache holding only the first `positions` positions of layers
    /// `0..layers` (a shared prefix to reuse in another pass).
    pub fn prefix(&self, layers: usize, positions: usize) -> Self {
        let cut = |kv: &LayerKv<B>| {
            let [n, h, s, d] = kv.keys.dims();
            let end = positions.min(s);
            LayerKv {
                keys: kv.keys.clone().slice([0..n, 0..h, 0..end, 0..d]),
                values: kv.values.clone().slice([0..n, 0..h, 0..end, 0..d]),
            }
        };
        Self {
            layers: self
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    if i < layers {
                        l.as_ref().map(cut)
                    } else {
                        None
                    }
                })
                .collect(),
        }
    }
}
