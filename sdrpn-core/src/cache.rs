//! The key/value cache, kept outside the model (runtime state).

use crate::fast_cpu::write_rows;
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

/// Keys and values of one layer in buffers with room to grow: rows
/// `0..len` of axis 2 hold the positions seen so far.
#[derive(Debug, Clone)]
struct Stored<B: Backend> {
    /// `[N, Hkv, C, hd]`, `C >= len`
    keys: Tensor<B, 4>,
    /// `[N, Hkv, C, hd]`
    values: Tensor<B, 4>,
    len: usize,
}

impl<B: Backend> Stored<B> {
    /// The positions held (views of the buffers, no copy on flex).
    fn view(&self) -> LayerKv<B> {
        let [n, h, _, d] = self.keys.dims();
        let len = self.len;
        LayerKv {
            keys: self.keys.clone().slice([0..n, 0..h, 0..len, 0..d]),
            values: self.values.clone().slice([0..n, 0..h, 0..len, 0..d]),
        }
    }
}

/// Positions of room a layer's buffers get beyond what they hold (decoded
/// tokens are written in place until it is used up, then the room doubles).
const ROOM: usize = 64;

/// Per-layer key/value cache of a decoder. A layer without an entry has
/// seen nothing yet. Each layer keeps its keys and values in buffers with
/// room for more positions, so a decoded token is written in place (on
/// flex, see [`crate::fast_cpu::write_rows`]) instead of copying the whole
/// cache into a concatenation at every step.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<Stored<B>>>,
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
            .map_or(0, |kv| kv.len)
    }

    /// Appends new keys and values to `layer` and returns all of them.
    ///
    /// # Shapes
    /// - `keys`, `values`: `[N, Hkv, T, hd]` -> `[N, Hkv, S + T, hd]`
    pub fn append(&mut self, layer: usize, keys: Tensor<B, 4>, values: Tensor<B, 4>) -> LayerKv<B> {
        let [n, h, t, d] = keys.dims();
        let stored = match self.layers[layer].take() {
            Some(old) if old.len + t <= old.keys.dims()[2] => old,
            old => {
                // New buffers with room; the positions held so far move over.
                let len = old.as_ref().map_or(0, |o| o.len);
                let capacity = (len + t + ROOM).max(2 * len);
                let (device, dtype) = (keys.device(), keys.dtype());
                let empty = || Tensor::<B, 4>::zeros([n, h, capacity, d], (&device, dtype));
                let (mut new_keys, mut new_values) = (empty(), empty());
                if let Some(old) = old.filter(|o| o.len > 0) {
                    let held = old.view();
                    new_keys = write_rows(new_keys, 0, held.keys);
                    new_values = write_rows(new_values, 0, held.values);
                }
                Stored {
                    keys: new_keys,
                    values: new_values,
                    len,
                }
            }
        };
        let at = stored.len;
        let stored = Stored {
            keys: write_rows(stored.keys, at, keys),
            values: write_rows(stored.values, at, values),
            len: at + t,
        };
        let all = stored.view();
        self.layers[layer] = Some(stored);
        all
    }

    /// A cache holding only the first `positions` positions of layers
    /// `0..layers` (a shared prefix to reuse in another pass). It shares the
    /// buffers: the first append to either cache copies them.
    pub fn prefix(&self, layers: usize, positions: usize) -> Self {
        Self {
            layers: self
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| match l {
                    Some(kv) if i < layers => Some(Stored {
                        len: positions.min(kv.len),
                        ..kv.clone()
                    }),
                    _ => None,
                })
                .collect(),
        }
    }
}

impl<B: Backend> KvCache<B> {
    /// [`KvCache::prefix`] of only the batch rows `samples` (in that
    /// order): a copy, unless they are every row in order (then the
    /// buffers are shared as by `prefix`).
    pub fn select_samples(&self, samples: &[usize], layers: usize, positions: usize) -> Self {
        let mut out = self.prefix(layers, positions);
        for stored in out.layers.iter_mut().flatten() {
            let n = stored.keys.dims()[0];
            if samples.iter().copied().eq(0..n) {
                continue;
            }
            let device = stored.keys.device();
            let idx: Vec<i64> = samples.iter().map(|&s| s as i64).collect();
            let idx = Tensor::<B, 1, burn::tensor::Int>::from_data(
                burn::tensor::TensorData::new(idx, [samples.len()]),
                &device,
            );
            stored.keys = stored.keys.clone().select(0, idx.clone());
            stored.values = stored.values.clone().select(0, idx);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    type B = crate::backend::CpuBackend;

    fn values(t: Tensor<B, 4>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    /// Appends past the buffers' room, one token at a time, hold what a
    /// concatenation holds; a prefix cache shares the buffers without
    /// seeing (or spoiling) what the other cache appends afterwards.
    #[test]
    fn appends_equal_concatenation_and_prefixes_stay_apart() {
        let device = Default::default();
        let rows = |t: usize| Tensor::<B, 4>::random([2, 3, t, 5], Distribution::Default, &device);
        let mut cache = KvCache::<B>::new(2);
        let mut keys = Vec::new();
        let mut vals = Vec::new();
        for t in std::iter::once(7).chain(std::iter::repeat_n(1, ROOM + 10)) {
            let (k, v) = (rows(t), rows(t));
            keys.push(k.clone());
            vals.push(v.clone());
            let all = cache.append(1, k, v);
            assert_eq!(values(all.keys), values(Tensor::cat(keys.clone(), 2)));
            assert_eq!(values(all.values), values(Tensor::cat(vals.clone(), 2)));
        }
        assert_eq!(cache.seq_len(1), 7 + ROOM + 10);
        assert_eq!(
            (cache.len(), cache.is_empty()),
            (0, true),
            "layer 0 saw nothing"
        );

        let mut prefix = cache.prefix(2, 7);
        assert_eq!(prefix.seq_len(1), 7);
        let (k, v) = (rows(2), rows(2));
        let extended = prefix.append(1, k.clone(), v);
        let expected = Tensor::cat(vec![Tensor::cat(keys[..1].to_vec(), 2), k], 2);
        assert_eq!(values(extended.keys), values(expected));
        // The original cache still holds its own positions 7 and 8.
        let (k2, v2) = (rows(1), rows(1));
        keys.push(k2.clone());
        let all = cache.append(1, k2, v2);
        assert_eq!(values(all.keys), values(Tensor::cat(keys.clone(), 2)));

        // Rows 1 then 0 of the first 7 positions, apart from the original.
        let mut picked = cache.select_samples(&[1, 0], 2, 7);
        let first = Tensor::cat(keys[..1].to_vec(), 2);
        let sample = |n: usize| first.clone().slice([n..n + 1, 0..3, 0..7, 0..5]);
        let swapped = Tensor::cat(vec![sample(1), sample(0)], 0);
        let (k3, v3) = (rows(1), rows(1));
        let extended = picked.append(1, k3.clone(), v3);
        assert_eq!(
            values(extended.keys),
            values(Tensor::cat(vec![swapped, k3], 2))
        );
        assert_eq!(cache.seq_len(1), 7 + ROOM + 11);
    }

    #[test]
    fn written_rows_land_where_slice_assign_puts_them() {
        let device = Default::default();
        let buffer = Tensor::<B, 4>::from_data(
            TensorData::new((0..2 * 2 * 6 * 3).map(|i| i as f32).collect(), [2, 2, 6, 3]),
            &device,
        );
        let rows = Tensor::<B, 4>::random([2, 2, 2, 3], Distribution::Default, &device);
        // A strided view as the rows (heads swapped in): the copy follows its strides.
        let strided = rows.clone().swap_dims(0, 1);
        let expected = buffer
            .clone()
            .slice_assign([0..2, 0..2, 3..5, 0..3], strided.clone());
        let written = crate::fast_cpu::write_rows(buffer.clone(), 3, strided);
        assert_eq!(values(written), values(expected));
        // The input buffer is still held here: it is not written in place.
        assert_eq!(values(buffer)[..3], [0.0, 1.0, 2.0]);
    }
}
