//! The visual-token grid: how a host lays its image tokens out.

use crate::error::{CoreError, Result};
use serde::{Deserialize, Serialize};

/// A row-major grid of visual tokens (`index = cols * row + col`).
/// LLaVA-1.5 uses 24x24; small test models use any size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grid {
    /// Number of token rows (image height / patch).
    pub rows: usize,
    /// Number of token columns (image width / patch).
    pub cols: usize,
}

impl Grid {
    /// A grid of `rows` x `cols` tokens; both must be positive.
    pub fn new(rows: usize, cols: usize) -> Result<Self> {
        if rows == 0 || cols == 0 {
            return Err(CoreError::config(
                "grid",
                format!("a grid needs at least one row and column, got {rows}x{cols}"),
            ));
        }
        Ok(Self { rows, cols })
    }

    /// The square grid of LLaVA-1.5 (336 px / 14 px patches = 24x24).
    pub const fn llava_1_5() -> Self {
        Self { rows: 24, cols: 24 }
    }

    /// Number of tokens.
    pub const fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Always false: a grid is never empty (see [`Grid::new`]).
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row-major index of `(row, col)`.
    pub const fn index(&self, row: usize, col: usize) -> usize {
        row * self.cols + col
    }

    /// `(row, col)` of a row-major index.
    pub const fn row_col(&self, index: usize) -> (usize, usize) {
        (index / self.cols, index % self.cols)
    }

    /// Checks that a flat map has one value per token.
    pub fn check_len(&self, what: &str, len: usize) -> Result<()> {
        if len != self.len() {
            return Err(CoreError::shape(
                what,
                format!("{} values ({}x{} grid)", self.len(), self.rows, self.cols),
                len,
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Grid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.rows, self.cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_major_indexing_round_trips() {
        let g = Grid::new(3, 5).unwrap();
        assert_eq!(g.len(), 15);
        assert_eq!(g.index(2, 4), 14);
        assert_eq!(g.row_col(7), (1, 2));
        assert!(Grid::new(0, 4).is_err());
        assert!(g.check_len("map", 14).is_err());
    }
}
