//! Rotary positions of the tokens of a forward pass, as the host assigns
//! them: 1-D for LLaMA, three axes (temporal, height, width) for
//! Qwen2.5-VL's multimodal RoPE. The method never computes positions; it
//! receives them from the host with the frozen prefix and hands them to
//! the twig layers.

/// Rotary positions of the tokens of one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Positions {
    /// Every sample's tokens at `start..start + len` (1-D RoPE; on a
    /// multi-axis host every axis takes these positions, as text does).
    Sequential {
        /// Position of the first token.
        start: usize,
        /// Number of tokens.
        len: usize,
    },
    /// Per sample, per rotary axis, one position per token: `[N][A][T]`
    /// (every sample with the same `A` and `T`; one stored axis serves
    /// every rotary axis, as text does).
    Axes(Vec<Vec<Vec<i64>>>),
    /// A batch of left-padded sequences (batched generation): positions as
    /// in `Axes`, and sample `n`'s first `pads[n]` cache indices hold
    /// padding that no query may attend to (the attention mask hides
    /// them, in this pass and every later one over the same cache).
    LeftPadded {
        /// Padding slots at the start of each sample's sequence.
        pads: Vec<usize>,
        /// `[N][A][T]` positions of this pass's tokens (any value on padding).
        axes: Vec<Vec<Vec<i64>>>,
    },
}

impl Positions {
    /// Positions `0..len`.
    pub fn prefix(len: usize) -> Self {
        Self::Sequential { start: 0, len }
    }

    /// Number of tokens `T`.
    pub fn len(&self) -> usize {
        match self {
            Self::Sequential { len, .. } => *len,
            Self::Axes(samples) | Self::LeftPadded { axes: samples, .. } => samples
                .first()
                .and_then(|axes| axes.first())
                .map_or(0, Vec::len),
        }
    }

    /// Number of samples the positions are given for (1 for a sequential
    /// run, which every sample shares).
    pub fn samples(&self) -> usize {
        match self {
            Self::Sequential { .. } => 1,
            Self::Axes(samples) | Self::LeftPadded { axes: samples, .. } => samples.len(),
        }
    }

    /// The left padding of each sample of a [`Positions::LeftPadded`] batch.
    pub fn left_pads(&self) -> Option<&[usize]> {
        match self {
            Self::LeftPadded { pads, .. } => Some(pads),
            _ => None,
        }
    }

    /// Whether the pass has no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Position of token `t` of sample `n` on each of `axes` axes.
    pub fn at(&self, n: usize, t: usize, axes: usize) -> Vec<i64> {
        match self {
            Self::Sequential { start, .. } => vec![(start + t) as i64; axes],
            Self::Axes(samples) | Self::LeftPadded { axes: samples, .. } => match &samples[n][..] {
                [one] => vec![one[t]; axes],
                many => many.iter().map(|axis| axis[t]).collect(),
            },
        }
    }

    /// The positions of tokens `range` only.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        match self {
            Self::Sequential { start, .. } => Self::Sequential {
                start: start + range.start,
                len: range.len(),
            },
            Self::Axes(samples) => Self::Axes(slice_axes(samples, range)),
            Self::LeftPadded { pads, axes } => Self::LeftPadded {
                pads: pads.clone(),
                axes: slice_axes(axes, range),
            },
        }
    }

    /// Per-sample sequences stacked into one left-padded batch of `len`
    /// tokens (`len` at least every sample's length): sample `n` starts
    /// after `len - samples[n].len()` padding slots, its tokens keep their
    /// own positions (padding sits at position 0), and the padding is
    /// masked in every pass over the batch.
    pub fn left_padded(samples: &[Positions], len: usize) -> Self {
        let axes_of = |p: &Positions| match p {
            Self::Sequential { .. } => 1,
            Self::Axes(s) | Self::LeftPadded { axes: s, .. } => s.first().map_or(1, Vec::len),
        };
        let axes = samples.iter().map(axes_of).max().unwrap_or(1);
        let pads: Vec<usize> = samples.iter().map(|p| len - p.len()).collect();
        let axes = samples
            .iter()
            .zip(&pads)
            .map(|(p, &pad)| {
                (0..axes)
                    .map(|a| {
                        (0..len)
                            .map(|t| {
                                if t < pad {
                                    0
                                } else {
                                    p.at(0, t - pad, axes)[a]
                                }
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Self::LeftPadded { pads, axes }
    }

    /// Per-sample positions stacked into one batch, each sample right-padded
    /// to `len` tokens by continuing its last position (padding sits after
    /// every query token, so causal attention never sees it).
    pub fn batch(samples: &[Positions], len: usize, axes: usize) -> Self {
        let all_sequential_from_zero = samples
            .iter()
            .all(|p| matches!(p, Self::Sequential { start: 0, .. }));
        if all_sequential_from_zero {
            return Self::prefix(len);
        }
        Self::Axes(
            samples
                .iter()
                .map(|p| {
                    let n = p.len();
                    (0..axes)
                        .map(|a| {
                            (0..len)
                                .map(|t| {
                                    let last = p.at(0, n.saturating_sub(1), axes)[a];
                                    if t < n {
                                        p.at(0, t, axes)[a]
                                    } else {
                                        last + (t - n + 1) as i64
                                    }
                                })
                                .collect()
                        })
                        .collect()
                })
                .collect(),
        )
    }
}

/// Tokens `range` of every sample and axis.
fn slice_axes(samples: &[Vec<Vec<i64>>], range: std::ops::Range<usize>) -> Vec<Vec<Vec<i64>>> {
    samples
        .iter()
        .map(|axes| axes.iter().map(|a| a[range.clone()].to_vec()).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_positions_slice_and_read_on_every_axis() {
        let p = Positions::Sequential { start: 5, len: 4 };
        assert_eq!(p.len(), 4);
        assert_eq!(p.at(0, 2, 3), vec![7, 7, 7]);
        assert_eq!(p.slice(1..3), Positions::Sequential { start: 6, len: 2 });
    }

    #[test]
    fn batches_pad_each_sample_by_continuing_its_positions() {
        let a = Positions::Axes(vec![vec![vec![0, 1, 1], vec![0, 1, 2], vec![0, 2, 1]]]);
        let b = Positions::prefix(2);
        let batch = Positions::batch(&[a, b], 4, 3);
        assert_eq!(
            batch,
            Positions::Axes(vec![
                vec![vec![0, 1, 1, 2], vec![0, 1, 2, 3], vec![0, 2, 1, 2]],
                vec![vec![0, 1, 2, 3], vec![0, 1, 2, 3], vec![0, 1, 2, 3]],
            ])
        );
        // Samples that all start at 0 stay one sequential run.
        assert_eq!(
            Positions::batch(&[Positions::prefix(2), Positions::prefix(3)], 3, 1),
            Positions::prefix(3)
        );
        assert_eq!(batch.slice(1..2).len(), 1);
    }

    #[test]
    fn left_padded_batches_shift_each_sample_right_and_keep_its_positions() {
        let a = Positions::Axes(vec![vec![vec![0, 1, 1], vec![0, 1, 2], vec![0, 2, 1]]]);
        let b = Positions::prefix(2);
        let batch = Positions::left_padded(&[a, b], 4);
        assert_eq!(batch.left_pads(), Some(&[1, 2][..]));
        assert_eq!(batch.samples(), 2);
        assert_eq!(batch.len(), 4);
        assert_eq!(batch.at(0, 3, 3), vec![1, 2, 1]);
        // A 1-D sample serves every axis.
        assert_eq!(batch.at(1, 2, 3), vec![0, 0, 0]);
        assert_eq!(batch.at(1, 3, 3), vec![1, 1, 1]);
        let tail = batch.slice(3..4);
        assert_eq!(tail.left_pads(), Some(&[1, 2][..]));
        assert_eq!(tail.at(1, 0, 3), vec![1, 1, 1]);
        // One stored axis reads as every axis.
        assert_eq!(
            Positions::Axes(vec![vec![vec![7]]]).at(0, 0, 3),
            vec![7, 7, 7]
        );
    }
}
