//! Rotary position embedding as HF computes it (`x cos + rotate_half(x)
//! sin`, tables in f32), for 1-D positions (LLaMA) and Qwen2.5-VL's
//! multimodal sections. Host decoders and the RPN head share it.

use crate::positions::Positions;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Rotary position embedding for a run of positions, applied as HF's
/// `x * cos + rotate_half(x) * sin`.
///
/// The tables are laid out for `[N, T, H, hd]` activations flattened to
/// `[N, T*H*hd]` (the head axis repeated), so both products are plain
/// contiguous element-wise ops. `rotate_half` is a product with a fixed
/// `[hd, hd]` matrix of 0 and +-1 entries, which is exact in any float type.
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    /// `[1 or N, T*H*hd]`
    cos: Tensor<B, 2>,
    /// `[1 or N, T*H*hd]`
    sin: Tensor<B, 2>,
    /// `[hd, hd]`: `x.matmul(rotate)` is `rotate_half(x)` along the last axis.
    rotate: Tensor<B, 2>,
    heads: usize,
}

impl<B: Backend> Rope<B> {
    /// Tables for the tokens at `positions` and `heads` heads, computed in
    /// f32 the way HF does (`inv_freq = 1 / theta^(2i/d)`, `angle = pos *
    /// inv_freq`). With `sections` (Qwen2.5-VL's `mrope_section`), frequency
    /// `i` takes its position from axis `a` where `i` falls in the `a`-th
    /// run of `sections` (HF's `apply_multimodal_rotary_pos_emb`); without,
    /// every frequency uses axis 0.
    pub fn new(
        head_dim: usize,
        heads: usize,
        theta: f64,
        positions: &Positions,
        sections: Option<&[usize]>,
        device: &B::Device,
    ) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let (axes, axis_of): (usize, Vec<usize>) = match sections {
            None => (1, vec![0; half]),
            Some(s) => (
                s.len(),
                s.iter()
                    .enumerate()
                    .flat_map(|(a, &n)| std::iter::repeat_n(a, n))
                    .collect(),
            ),
        };
        let samples = positions.samples();
        let len = positions.len();
        let mut angles = Vec::with_capacity(samples * len * half);
        for n in 0..samples {
            for t in 0..len {
                let pos = positions.at(n, t, axes);
                angles.extend(
                    inv_freq
                        .iter()
                        .zip(&axis_of)
                        .map(|(f, &axis)| pos[axis] as f32 * f),
                );
            }
        }
        Self::from_angles(&angles, [samples, len], head_dim, heads, device)
    }

    /// Tables from rotation angles `[N, T, hd/2]` (row-major, in f32), one
    /// per frequency of each token: what a host with its own frequency
    /// layout (Qwen2.5-VL's 2-D vision rotary) computes.
    pub fn from_angles(
        angles: &[f32],
        [samples, len]: [usize; 2],
        head_dim: usize,
        heads: usize,
        device: &B::Device,
    ) -> Self {
        let half = head_dim / 2;
        assert_eq!(
            angles.len(),
            samples * len * half,
            "angles are [N, T, hd/2]"
        );
        let (cos, sin): (Vec<f32>, Vec<f32>) = angles
            .iter()
            .map(|a| {
                let (s, c) = a.sin_cos();
                (c, s)
            })
            .unzip();
        // Built on the device from the `[N, T, hd/2]` table: the half-width
        // table twice per head (rotate_half layout), repeated for every head,
        // materialised once per pass (only `N*T*hd/2` values are uploaded).
        let size = len * heads * head_dim;
        let table = |v: Vec<f32>| {
            Tensor::<B, 3>::from_data(TensorData::new(v, [samples, len, half]), device)
                .reshape([samples, len, 1, 1, half])
                .expand([samples, len, heads, 2, half])
                .reshape([samples, size])
        };
        let mut rotate = vec![0f32; head_dim * head_dim];
        for i in 0..half {
            // rotate_half(x)[i] = -x[i + half]; rotate_half(x)[i + half] = x[i].
            rotate[(i + half) * head_dim + i] = -1.0;
            rotate[i * head_dim + i + half] = 1.0;
        }
        Self {
            cos: table(cos),
            sin: table(sin),
            rotate: Tensor::from_data(TensorData::new(rotate, [head_dim, head_dim]), device),
            heads,
        }
    }

    /// Rotates `[N, T, H, hd]` (T and H those of the tables; N theirs or any
    /// when the tables are shared by every sample).
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, t, h, d] = x.dims();
        debug_assert_eq!(h, self.heads);
        let dtype = x.dtype();
        let rotated = x
            .clone()
            .reshape([n * t * h, d])
            .matmul(self.rotate.clone().cast(dtype))
            .reshape([n, t * h * d]);
        let out = x.reshape([n, t * h * d]) * self.cos.clone().cast(dtype)
            + rotated * self.sin.clone().cast(dtype);
        out.reshape([n, t, h, d])
    }
}
