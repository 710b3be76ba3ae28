//! Qwen2.5-VL's attention windows over the merged-token grid, as HF's
//! `get_window_index` lays them out, and the 2-D rotary positions of the
//! patches in the processor's order.
//!
//! The processor emits patches in merge order: merged token `u` (row-major
//! over the `rows/m x cols/m` grid) owns patches `4u..4u+3` (its `m x m`
//! square, row-major). Windows tile the merged grid in squares of
//! `window x window` tokens, row-major; the grid is padded to whole windows
//! (HF always pads, by a whole window when the side divides evenly) and
//! padded slots are dropped, so edge windows are smaller and empty windows
//! vanish.

/// The window layout of one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowLayout {
    /// Merged-token indices (processor order) in window order.
    pub order: Vec<usize>,
    /// Merged tokens per window, in window order (no empty windows).
    pub lengths: Vec<usize>,
}

impl WindowLayout {
    /// The layout of a `rows x cols` patch grid merged `merge x merge`, in
    /// windows of `window x window` merged tokens.
    pub fn new(rows: usize, cols: usize, merge: usize, window: usize) -> Self {
        let (lh, lw) = (rows / merge, cols / merge);
        let (nwh, nww) = ((lh + window) / window, (lw + window) / window);
        let mut order = Vec::with_capacity(lh * lw);
        let mut lengths = Vec::new();
        for wr in 0..nwh {
            for wc in 0..nww {
                let before = order.len();
                for i in 0..window {
                    for j in 0..window {
                        let (r, c) = (wr * window + i, wc * window + j);
                        if r < lh && c < lw {
                            order.push(r * lw + c);
                        }
                    }
                }
                if order.len() > before {
                    lengths.push(order.len() - before);
                }
            }
        }
        Self { order, lengths }
    }

    /// Where each window-order slot goes back to: `inverse[order[i]] = i`.
    pub fn inverse(&self) -> Vec<usize> {
        let mut inv = vec![0; self.order.len()];
        for (i, &u) in self.order.iter().enumerate() {
            inv[u] = i;
        }
        inv
    }
}

/// `(row, col)` of every patch of a `rows x cols` grid in the processor's
/// merge order (HF's `rot_pos_emb` position ids).
pub fn patch_positions(rows: usize, cols: usize, merge: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(rows * cols);
    for br in 0..rows / merge {
        for bc in 0..cols / merge {
            for i in 0..merge {
                for j in 0..merge {
                    out.push((br * merge + i, bc * merge + j));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_tile_the_merged_grid_row_major_with_smaller_edge_windows() {
        // 6x10 patches -> 3x5 merged tokens, windows of 2x2 tokens:
        // window rows [0,1] and [2], window columns [0,1], [2,3], [4].
        let w = WindowLayout::new(6, 10, 2, 2);
        assert_eq!(w.lengths, vec![4, 4, 2, 2, 2, 1]);
        assert_eq!(
            w.order,
            vec![0, 1, 5, 6, 2, 3, 7, 8, 4, 9, 10, 11, 12, 13, 14]
        );
        let inv = w.inverse();
        for (i, &u) in w.order.iter().enumerate() {
            assert_eq!(inv[u], i);
        }
    }

    #[test]
    fn a_grid_that_divides_evenly_has_no_empty_windows() {
        // 8x8 patches -> 4x4 tokens in 2x2 windows: HF pads a whole empty
        // window row and column, which drop out.
        let w = WindowLayout::new(8, 8, 2, 2);
        assert_eq!(w.lengths, vec![4; 4]);
        assert_eq!(w.order.len(), 16);
    }

    #[test]
    fn patches_come_in_merge_squares() {
        let p = patch_positions(2, 4, 2);
        assert_eq!(
            p,
            vec![
                (0, 0),
                (0, 1),
                (1, 0),
                (1, 1),
                (0, 2),
                (0, 3),
                (1, 2),
                (1, 3)
            ]
        );
    }
}
