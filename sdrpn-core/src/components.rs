//! Connected components of a thresholded RoI map and the per-component box
//! rules of SPEC 4 (as the reference code applies them).

use crate::grid::Grid;
use serde::{Deserialize, Serialize};

/// A box in token units: `x` is the column, ends exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBox {
    /// First column.
    pub x0: usize,
    /// First row.
    pub y0: usize,
    /// One past the last column.
    pub x1: usize,
    /// One past the last row.
    pub y1: usize,
}

impl TokenBox {
    /// Width in tokens.
    pub fn width(&self) -> usize {
        self.x1.saturating_sub(self.x0)
    }

    /// Height in tokens.
    pub fn height(&self) -> usize {
        self.y1.saturating_sub(self.y0)
    }

    /// The tight box of the true cells of a grid-sized mask, `None` when
    /// the mask is empty.
    pub fn of_mask(mask: &[bool], grid: Grid) -> Option<Self> {
        Self::of_cells(
            mask.iter().enumerate().filter(|(_, &m)| m).map(|(i, _)| i),
            grid,
        )
    }

    /// The tight box of the given row-major cell indices.
    pub fn of_cells(cells: impl IntoIterator<Item = usize>, grid: Grid) -> Option<Self> {
        cells.into_iter().fold(None, |acc: Option<Self>, i| {
            let (r, c) = grid.row_col(i);
            Some(match acc {
                None => Self {
                    x0: c,
                    y0: r,
                    x1: c + 1,
                    y1: r + 1,
                },
                Some(b) => Self {
                    x0: b.x0.min(c),
                    y0: b.y0.min(r),
                    x1: b.x1.max(c + 1),
                    y1: b.y1.max(r + 1),
                },
            })
        })
    }
}

/// An 8-connected component: its cells in raster order and its tight box.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    /// Row-major indices of its cells, sorted.
    pub cells: Vec<usize>,
    /// Tight box of the cells.
    pub bbox: TokenBox,
}

/// 8-connected components of `mask`, ordered by their first cell in raster
/// order (the order of `skimage.measure.label(connectivity=2)`).
pub fn connected_components(mask: &[bool], grid: Grid) -> Vec<Component> {
    let mut seen = vec![false; mask.len()];
    let mut components = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![start];
        let mut cells = Vec::new();
        while let Some(i) = stack.pop() {
            cells.push(i);
            let (r, c) = grid.row_col(i);
            for dr in -1i64..=1 {
                for dc in -1i64..=1 {
                    let (nr, nc) = (r as i64 + dr, c as i64 + dc);
                    if nr < 0 || nc < 0 || nr >= grid.rows as i64 || nc >= grid.cols as i64 {
                        continue;
                    }
                    let j = grid.index(nr as usize, nc as usize);
                    if mask[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        cells.sort_unstable();
        let bbox = TokenBox::of_cells(cells.iter().copied(), grid).expect("a component has cells");
        components.push(Component { cells, bbox });
    }
    components
}

/// The size rules applied to each component.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SizeRules {
    /// Components of this many cells or fewer are dropped (reference: 1).
    pub drop_at_most: usize,
    /// Components smaller than this are grown (reference: 4, so sizes 2 and 3).
    pub grow_below: usize,
    /// Components larger than this are dropped (reference: 225; 225 is kept).
    pub drop_above: usize,
    /// Reference quirk (default true): a grown box's exclusive end is
    /// clamped to `grid - 1` (23 on LLaVA), so a grown box on the bottom or
    /// right border misses the last row or column. False clamps to `grid`.
    pub border_clamp_quirk: bool,
}

impl Default for SizeRules {
    fn default() -> Self {
        Self {
            drop_at_most: 1,
            grow_below: 4,
            drop_above: 225,
            border_clamp_quirk: true,
        }
    }
}

impl SizeRules {
    /// The box a component contributes, or `None` when it is dropped.
    pub fn apply(&self, component: &Component, grid: Grid) -> Option<TokenBox> {
        let size = component.cells.len();
        if size <= self.drop_at_most || size > self.drop_above {
            return None;
        }
        if size >= self.grow_below {
            return Some(component.bbox);
        }
        let b = component.bbox;
        let (x0, x1) = self.grow_span(b.x0, b.x1, grid.cols);
        let (y0, y1) = self.grow_span(b.y0, b.y1, grid.rows);
        Some(TokenBox { x0, y0, x1, y1 })
    }

    /// The reference's growth along one axis: width `w = max(3, e + 1)` for
    /// an extent `e = end - start`, centred at `(start + end) / 2`, ends
    /// truncated toward zero. So extents 1 and 2 become 3 cells and extent
    /// 3 becomes 4; extent 2 grows on the low side only.
    fn grow_span(&self, start: usize, end: usize, len: usize) -> (usize, usize) {
        let extent = (end - start) as f64;
        let w = (extent + 1.0).max(3.0);
        let centre = (start + end) as f64 / 2.0;
        let lo = (centre - w / 2.0).trunc().max(0.0) as usize;
        let limit = if self.border_clamp_quirk {
            len - 1
        } else {
            len
        };
        let hi = ((centre + w / 2.0).trunc() as usize).min(limit);
        (lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Grid {
        Grid::llava_1_5()
    }

    fn mask_of(cells: &[(usize, usize)]) -> Vec<bool> {
        let g = grid();
        let mut m = vec![false; g.len()];
        for &(r, c) in cells {
            m[g.index(r, c)] = true;
        }
        m
    }

    fn single(cells: &[(usize, usize)]) -> Component {
        let mut comps = connected_components(&mask_of(cells), grid());
        assert_eq!(comps.len(), 1);
        comps.remove(0)
    }

    #[test]
    fn eight_connectivity_joins_diagonals_and_orders_by_first_cell() {
        // A diagonal pair, a separate cell further up-right, and a block below.
        let m = mask_of(&[(5, 5), (6, 6), (2, 20), (10, 1), (10, 2)]);
        let comps = connected_components(&m, grid());
        assert_eq!(comps.len(), 3);
        assert_eq!(comps[0].cells, vec![grid().index(2, 20)]);
        assert_eq!(
            comps[1].bbox,
            TokenBox {
                x0: 5,
                y0: 5,
                x1: 7,
                y1: 7
            }
        );
        assert_eq!(comps[2].cells.len(), 2);
    }

    #[test]
    fn size_one_is_dropped_and_225_kept_226_dropped() {
        let rules = SizeRules::default();
        assert_eq!(rules.apply(&single(&[(4, 4)]), grid()), None);
        let square: Vec<_> = (0..15).flat_map(|r| (0..15).map(move |c| (r, c))).collect();
        assert_eq!(
            rules.apply(&single(&square), grid()),
            Some(TokenBox {
                x0: 0,
                y0: 0,
                x1: 15,
                y1: 15
            })
        );
        let mut bigger = square.clone();
        bigger.push((15, 0));
        assert_eq!(rules.apply(&single(&bigger), grid()), None);
    }

    #[test]
    fn size_four_is_kept_as_is() {
        let c = single(&[(3, 3), (3, 4), (4, 3), (4, 4)]);
        assert_eq!(
            SizeRules::default().apply(&c, grid()),
            Some(TokenBox {
                x0: 3,
                y0: 3,
                x1: 5,
                y1: 5
            })
        );
    }

    #[test]
    fn size_two_and_three_grow_like_the_reference() {
        let rules = SizeRules::default();
        // Horizontal pair at row 10, cols 5-6: x extent 2 -> [4, 7), y extent 1 -> [9, 12).
        assert_eq!(
            rules.apply(&single(&[(10, 5), (10, 6)]), grid()),
            Some(TokenBox {
                x0: 4,
                y0: 9,
                x1: 7,
                y1: 12
            })
        );
        // Vertical line of 3 at col 8, rows 2-4: y extent 3 -> 4 cells [1, 5); x -> [7, 10).
        assert_eq!(
            rules.apply(&single(&[(2, 8), (3, 8), (4, 8)]), grid()),
            Some(TokenBox {
                x0: 7,
                y0: 1,
                x1: 10,
                y1: 5
            })
        );
    }

    #[test]
    fn grown_boxes_at_the_border_follow_the_clamp_quirk() {
        // Pair in the bottom row 23, cols 0-1.
        let c = single(&[(23, 0), (23, 1)]);
        // x: extent 2 at 0 -> int(-0.5) = 0 -> [0, 2); y: extent 1 at 23 -> [22, min(23, 25)) = [22, 23).
        assert_eq!(
            SizeRules::default().apply(&c, grid()),
            Some(TokenBox {
                x0: 0,
                y0: 22,
                x1: 2,
                y1: 23
            })
        );
        let fixed = SizeRules {
            border_clamp_quirk: false,
            ..SizeRules::default()
        };
        assert_eq!(
            fixed.apply(&c, grid()),
            Some(TokenBox {
                x0: 0,
                y0: 22,
                x1: 2,
                y1: 24
            })
        );
    }
}
