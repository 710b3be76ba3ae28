//! M-RoPE positions of a prompt, by HF's `get_rope_index` rule for images:
//! text tokens count up on all three axes together; an image's merged
//! tokens start at the next position `p` and sit at `(p, p + row, p + col)`
//! (temporal, height, width); the text after it resumes at one past the
//! largest position used so far. Generated tokens continue at
//! `T + delta` with `delta = max + 1 - T`.

use crate::error::{QwenError, Result};
use sdrpn_core::Positions;

/// Positions of a prompt and the offset of the tokens after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptPositions {
    /// `[1][3][T]`.
    pub positions: Positions,
    /// HF's `rope_deltas`: position of token `t >= T` is `t + delta`.
    pub delta: i64,
}

/// Positions of `ids`, whose runs of `image_token` are the images of
/// `grids` (merged `rows x cols` each), in order.
pub fn rope_index(
    ids: &[u32],
    image_token: u32,
    grids: &[(usize, usize)],
) -> Result<PromptPositions> {
    let mut axes = [
        Vec::with_capacity(ids.len()),
        Vec::with_capacity(ids.len()),
        Vec::with_capacity(ids.len()),
    ];
    let mut next: i64 = 0;
    let mut images = grids.iter();
    let mut i = 0;
    while i < ids.len() {
        if ids[i] != image_token {
            for a in axes.iter_mut() {
                a.push(next);
            }
            next += 1;
            i += 1;
            continue;
        }
        let &(rows, cols) = images.next().ok_or_else(|| {
            QwenError::invalid(
                "prompt",
                format!(
                    "more image-token runs than the {} image(s) given",
                    grids.len()
                ),
            )
        })?;
        let run = rows * cols;
        if i + run > ids.len() || ids[i..i + run].iter().any(|&t| t != image_token) {
            return Err(QwenError::invalid(
                "prompt",
                format!(
                    "the image at token {i} needs {run} consecutive image tokens ({rows}x{cols})"
                ),
            ));
        }
        for r in 0..rows {
            for c in 0..cols {
                axes[0].push(next);
                axes[1].push(next + r as i64);
                axes[2].push(next + c as i64);
            }
        }
        next += rows.max(cols) as i64;
        i += run;
    }
    if images.next().is_some() {
        return Err(QwenError::invalid(
            "prompt",
            format!(
                "fewer image-token runs than the {} image(s) given",
                grids.len()
            ),
        ));
    }
    let delta = next - ids.len() as i64;
    Ok(PromptPositions {
        positions: Positions::Axes(vec![axes.to_vec()]),
        delta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tokens_take_row_and_column_offsets_and_text_resumes_after_the_largest() {
        // 2 text, a 2x3 image, 2 text.
        let ids = [5, 6, 9, 9, 9, 9, 9, 9, 7, 8];
        let p = rope_index(&ids, 9, &[(2, 3)]).unwrap();
        let Positions::Axes(s) = &p.positions else {
            panic!("axes expected")
        };
        assert_eq!(s[0][0], vec![0, 1, 2, 2, 2, 2, 2, 2, 5, 6]);
        assert_eq!(s[0][1], vec![0, 1, 2, 2, 2, 3, 3, 3, 5, 6]);
        assert_eq!(s[0][2], vec![0, 1, 2, 3, 4, 2, 3, 4, 5, 6]);
        // max 6 + 1 - 10 tokens.
        assert_eq!(p.delta, -3);
    }

    #[test]
    fn image_counts_must_match() {
        assert!(rope_index(&[1, 9, 9, 2], 9, &[(2, 2)]).is_err());
        assert!(rope_index(&[1, 9, 9, 9, 9, 2], 9, &[]).is_err());
        assert!(rope_index(&[1, 2], 9, &[(1, 1)]).is_err());
    }
}
