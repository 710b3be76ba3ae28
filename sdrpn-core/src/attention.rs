//! Attention aggregation: many attention rows -> one map over the visual grid.
//!
//! SPEC 2: for every generated token that is fed back, take its post-softmax
//! attention row at the chosen (layer, head) pairs, slice it to the visual
//! tokens, and average over those pairs and over the decode steps. The sink
//! map S is built the same way from a shallow layer. Sums run in f32
//! whatever the dtype of the rows.

use crate::error::{CoreError, Result};
use crate::grid::Grid;
use crate::heads::ResolvedHeads;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};
use std::ops::Range;

/// Sums attention rows of chosen (layer, head) pairs into a grid map.
///
/// Every row counts with the same weight: the result is the mean over all
/// (layer, head, step) triples added.
#[derive(Debug, Clone)]
pub struct AttentionAccumulator<B: Backend> {
    heads: ResolvedHeads,
    head_index: Vec<Tensor<B, 1, Int>>,
    visual: Range<usize>,
    sum: Tensor<B, 1>,
    rows: usize,
}

impl<B: Backend> AttentionAccumulator<B> {
    /// An empty accumulator for `heads`, whose visual tokens sit at key
    /// positions `visual` (as many as `grid` has cells).
    pub fn new(
        heads: ResolvedHeads,
        visual: Range<usize>,
        grid: Grid,
        device: &B::Device,
    ) -> Result<Self> {
        grid.check_len("visual token range", visual.len())?;
        if heads.pair_count() == 0 {
            return Err(CoreError::config("head selection", "selects no head"));
        }
        let head_index = heads
            .layers
            .iter()
            .map(|(_, h)| {
                let idx: Vec<i64> = h.iter().map(|&x| x as i64).collect();
                Tensor::from_data(idx.as_slice(), device)
            })
            .collect();
        Ok(Self {
            heads,
            head_index,
            visual,
            sum: Tensor::zeros([grid.len()], device),
            rows: 0,
        })
    }

    /// The layers whose rows this accumulator wants, in selection order.
    pub fn layers(&self) -> impl Iterator<Item = usize> + '_ {
        self.heads.layer_indices()
    }

    /// Adds the rows of one layer.
    ///
    /// # Shapes
    /// - `rows`: `[steps, heads, keys]`, all heads of `layer`, keys covering
    ///   at least the visual range.
    pub fn add(&mut self, layer: usize, rows: Tensor<B, 3>) -> Result<()> {
        let slot = self
            .heads
            .layers
            .iter()
            .position(|(l, _)| *l == layer)
            .ok_or_else(|| {
                CoreError::config("attention rows", format!("layer {layer} was not selected"))
            })?;
        let [steps, num_heads, keys] = rows.dims();
        let max_head = self.heads.layers[slot].1.iter().copied().max().unwrap_or(0);
        if max_head >= num_heads || keys < self.visual.end {
            return Err(CoreError::shape(
                format!("attention rows of layer {layer}"),
                format!("[steps, >{max_head} heads, >={} keys]", self.visual.end),
                [steps, num_heads, keys],
            ));
        }
        let chosen = rows
            .cast(DType::F32)
            .select(1, self.head_index[slot].clone())
            .slice([
                0..steps,
                0..self.heads.layers[slot].1.len(),
                self.visual.clone(),
            ]);
        let summed: Tensor<B, 1> = chosen.sum_dim(0).sum_dim(1).flatten(0, 2);
        self.sum = self.sum.clone() + summed;
        self.rows += steps * self.heads.layers[slot].1.len();
        Ok(())
    }

    /// Number of (layer, head, step) rows added so far.
    pub fn row_count(&self) -> usize {
        self.rows
    }

    /// The mean map, `[grid.len()]`. Errors when no row was added (an answer
    /// of zero fed-back tokens has no attention to average).
    pub fn finish(self) -> Result<Tensor<B, 1>> {
        if self.rows == 0 {
            return Err(CoreError::config(
                "attention map",
                "no attention row was added (the answer had no decode step)",
            ));
        }
        Ok(self.sum.div_scalar(self.rows as f32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::{dev, TestBackend as B};

    fn rows(data: Vec<f32>, shape: [usize; 3]) -> Tensor<B, 3> {
        Tensor::<B, 1>::from_floats(data.as_slice(), &dev()).reshape(shape)
    }

    #[test]
    fn mean_over_selected_heads_and_steps_sliced_to_visual_tokens() {
        // 2 steps, 3 heads, 5 keys; visual tokens are keys 1..5 (a 2x2 grid).
        let heads = "0:0,2"
            .parse::<crate::HeadSelection>()
            .unwrap()
            .resolve(1, 3)
            .unwrap();
        let mut acc =
            AttentionAccumulator::<B>::new(heads, 1..5, Grid::new(2, 2).unwrap(), &dev()).unwrap();
        #[rustfmt::skip]
        let data = vec![
            // step 0: head 0, head 1 (ignored), head 2
            9.0, 1.0, 2.0, 3.0, 4.0,   9.0, 100.0, 100.0, 100.0, 100.0,   9.0, 3.0, 2.0, 1.0, 0.0,
            // step 1
            9.0, 0.0, 0.0, 0.0, 8.0,   9.0, 100.0, 100.0, 100.0, 100.0,   9.0, 4.0, 0.0, 0.0, 0.0,
        ];
        acc.add(0, rows(data, [2, 3, 5])).unwrap();
        assert_eq!(acc.row_count(), 4);
        let map = acc.finish().unwrap().into_data().to_vec::<f32>().unwrap();
        assert_eq!(map, vec![2.0, 1.0, 1.0, 3.0]);
    }

    #[test]
    fn rows_of_several_layers_weigh_equally() {
        let heads = "1:0;0:1"
            .parse::<crate::HeadSelection>()
            .unwrap()
            .resolve(2, 2)
            .unwrap();
        let mut acc =
            AttentionAccumulator::<B>::new(heads, 0..1, Grid::new(1, 1).unwrap(), &dev()).unwrap();
        acc.add(1, rows(vec![3.0, 100.0], [1, 2, 1])).unwrap();
        acc.add(0, rows(vec![100.0, 1.0, 100.0, 2.0], [2, 2, 1]))
            .unwrap();
        // (3 + 1 + 2) / 3 rows.
        assert_eq!(
            acc.finish().unwrap().into_data().to_vec::<f32>().unwrap(),
            vec![2.0]
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let heads = "0:3"
            .parse::<crate::HeadSelection>()
            .unwrap()
            .resolve(1, 4)
            .unwrap();
        let grid = Grid::new(1, 2).unwrap();
        assert!(AttentionAccumulator::<B>::new(heads.clone(), 0..3, grid, &dev()).is_err());
        let mut acc = AttentionAccumulator::<B>::new(heads, 0..2, grid, &dev()).unwrap();
        assert!(
            acc.add(5, rows(vec![0.0; 8], [1, 4, 2])).is_err(),
            "unselected layer"
        );
        assert!(
            acc.add(0, rows(vec![0.0; 6], [1, 3, 2])).is_err(),
            "too few heads"
        );
        assert!(acc.clone().finish().is_err(), "nothing added");
    }
}
