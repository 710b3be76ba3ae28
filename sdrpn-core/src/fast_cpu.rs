//! Fused CPU kernels for the element-wise work Burn's flex backend runs on
//! one thread with a scalar `expf`: the attention softmax (with its scale
//! and additive mask), SiLU and CLIP's quick GELU. On the flex backend in f32 they run over
//! all of rayon's threads with an exponential that the compiler vectorises
//! (AVX-512 or AVX2 chosen at run time); on every other backend, dtype or
//! build, the callers' plain Burn ops run instead (`scaled_softmax` hands
//! the scores back, `silu` calls Burn's), so GPU and autodiff paths are
//! untouched.
//!
//! The exponential is Cephes' `expf` (range reduction by ln 2, degree-6
//! polynomial): within 2 ulp of the correctly rounded value, exactly 0 for
//! arguments below -87.3 (so masked scores give probability 0), NaN for NaN.
//! No fused multiply-add is used, so every SIMD path gives the same bits.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `softmax(scores * scale + bias)` over the last axis, in f32, when the
/// backend is flex and `scores` is f32; `bias` (0 or -inf, or any additive
/// term) is broadcast from a shape whose first three axes are each 1 or
/// those of `scores`. `Err` gives the inputs back for the caller's own ops.
///
/// # Shapes
/// - `scores`: `[A, B, C, D]`; `bias`: `[1 or A, 1 or B, 1 or C, D]` -> `[A, B, C, D]`
pub fn scaled_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    scale: f32,
    bias: Option<&Tensor<B, 4>>,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    #[cfg(feature = "flex")]
    {
        flex::scaled_softmax(scores, scale, bias)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (scale, bias);
        Err(scores)
    }
}

/// SiLU (`x * sigmoid(x)`) on the fast path, else Burn's.
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = match flex::x_sigmoid(x, 1.0) {
        Ok(out) => return out,
        Err(x) => x,
    };
    burn::tensor::activation::silu(x)
}

/// CLIP's quick GELU, `x * sigmoid(1.702 x)` (as HF computes it: the
/// product `1.702 x` rounded to f32 first), on the fast path, else Burn's.
pub fn quick_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = match flex::x_sigmoid(x, 1.702) {
        Ok(out) => return out,
        Err(x) => x,
    };
    x.clone() * burn::tensor::activation::sigmoid(x * 1.702)
}

/// Attention heads of consecutive query blocks merged into one token-major
/// tensor: block `i`'s rows follow block `i - 1`'s. On flex in f32 one
/// parallel row copy; elsewhere Burn's permute and concatenation.
///
/// # Shapes
/// - `blocks`: each `[N, H, T_i, hd]` -> `[N, sum T_i, H * hd]`
pub fn merge_heads<B: Backend>(blocks: Vec<Tensor<B, 4>>) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    let blocks = match flex::merge_heads(blocks) {
        Ok(out) => return out,
        Err(blocks) => blocks,
    };
    let merged = blocks
        .into_iter()
        .map(|x| {
            let [n, h, t, hd] = x.dims();
            x.swap_dims(1, 2).reshape([n, t, h * hd])
        })
        .collect();
    Tensor::cat(merged, 1)
}

/// `buffer` with `rows` written over its rows `at..at + T` of axis 2 (a
/// key/value cache's append). On flex in f32 the write happens in place
/// when `buffer` is contiguous and nothing else holds its memory; else
/// Burn's `slice_assign` (a copy of `buffer`), with the same values.
///
/// # Shapes
/// - `buffer`: `[N, H, C, hd]`, `rows`: `[N, H, T, hd]` with `at + T <= C` -> `[N, H, C, hd]`
pub fn write_rows<B: Backend>(buffer: Tensor<B, 4>, at: usize, rows: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, h, c, hd] = buffer.dims();
    let t = rows.dims()[2];
    assert!(
        at + t <= c && rows.dims() == [n, h, t, hd],
        "write_rows: {:?} at row {at} of {:?}",
        rows.dims(),
        buffer.dims()
    );
    #[cfg(feature = "flex")]
    let (buffer, rows) = match flex::write_rows(buffer, at, rows) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    buffer.slice_assign([0..n, 0..h, at..at + t, 0..hd], rows)
}

/// `e^x` in f32 (see the module doc), written so that a loop over it
/// vectorises: selects instead of branches, no float-to-int conversion (the rounded
/// exponent is read from the bits of the rounding sum). Arguments above 88
/// saturate at `e^88`; callers pass `x <= 0`.
#[cfg(feature = "flex")]
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer n, whose value then
    // sits in the sum's low mantissa bits: bits = 0x4B40_0000 + n.
    const ROUND: f32 = 12_582_912.0;
    const ROUND_BITS: i32 = 0x4B40_0000;
    let clamped = x.clamp(-87.3, 88.0);
    let rounded = clamped * LOG2E + ROUND;
    let n = rounded - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let k = (rounded.to_bits() as i32).wrapping_sub(ROUND_BITS);
    let two_to_k = f32::from_bits((k.wrapping_add(127) << 23) as u32);
    let e = (p * r * r + r + 1.0) * two_to_k;
    if x < -87.3 {
        0.0
    } else if x.is_nan() {
        x
    } else {
        e
    }
}

#[cfg(feature = "flex")]
mod flex {
    use super::exp;
    use burn::backend::Flex;
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Tensor, TensorPrimitive};
    use burn_flex::{FlexTensor, Layout};
    use rayon::prelude::*;
    use std::any::{Any, TypeId};

    /// The flex tensor of `t` when `B` is flex and `t` is f32.
    fn to_flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<FlexTensor, Tensor<B, D>> {
        if !all_flex_f32(&[&t]) {
            return Err(t);
        }
        let primitive: Box<dyn Any> = Box::new(t.into_primitive().tensor());
        Ok(*primitive
            .downcast::<FlexTensor>()
            .expect("B is Flex: its float primitive is a FlexTensor"))
    }

    /// The tensor of a flex primitive (`B` is flex).
    fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
        let primitive: Box<dyn Any> = Box::new(t);
        Tensor::from_primitive(TensorPrimitive::Float(
            *primitive
                .downcast::<B::FloatTensorPrimitive>()
                .expect("B is Flex: its float primitive is a FlexTensor"),
        ))
    }

    /// Elements per parallel task of element-wise kernels.
    const CHUNK: usize = 1 << 14;

    pub(super) fn x_sigmoid<B: Backend, const D: usize>(
        x: Tensor<B, D>,
        alpha: f32,
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        let x = to_flex(x)?.to_contiguous();
        let input: &[f32] = x.storage();
        let mut out = vec![0f32; input.len()];
        out.par_chunks_mut(CHUNK)
            .zip(input.par_chunks(CHUNK))
            .for_each(|(o, i)| simd::x_sigmoid(i, alpha, o));
        let shape = x.layout().shape().clone();
        Ok(from_flex(FlexTensor::new(
            burn::tensor::Bytes::from_elems(out),
            Layout::contiguous(shape),
            DType::F32,
        )))
    }

    pub(super) fn scaled_softmax<B: Backend>(
        scores: Tensor<B, 4>,
        scale: f32,
        bias: Option<&Tensor<B, 4>>,
    ) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
        let dims = scores.dims();
        let bias_dims = bias.map(|b| b.dims());
        let broadcastable = bias_dims
            .is_none_or(|b| b[3] == dims[3] && (0..3).all(|i| b[i] == 1 || b[i] == dims[i]));
        if !broadcastable || bias.is_some_and(|b| b.dtype() != DType::F32) {
            return Err(scores);
        }
        let scores = to_flex(scores)?.to_contiguous();
        let bias = match bias.map(|b| to_flex(b.clone())) {
            Some(Ok(b)) => Some(b.to_contiguous()),
            Some(Err(_)) => unreachable!("checked: f32 on the same backend as the scores"),
            None => None,
        };
        let [_, nb, nc, d] = dims;
        if d == 0 || scores.layout().num_elements() == 0 {
            return Ok(from_flex(scores));
        }
        let input: &[f32] = scores.storage();
        let bias_values: Option<&[f32]> = bias.as_ref().map(|b| b.storage());
        // Row r = (a, b, c) of the scores reads bias row (a % ba, b % bb, c % bc).
        let bias_row = |r: usize| -> Option<&[f32]> {
            let (values, [ba, bb, bc, _]) = (bias_values?, bias_dims?);
            let (a, b, c) = (r / (nb * nc), (r / nc) % nb, r % nc);
            let row = ((a % ba) * bb + b % bb) * bc + c % bc;
            Some(&values[row * d..(row + 1) * d])
        };
        let mut out = vec![0f32; input.len()];
        let rows_per_task = (CHUNK / d.max(1)).max(1);
        out.par_chunks_mut(rows_per_task * d)
            .enumerate()
            .for_each(|(task, o)| {
                for (k, row) in o.chunks_mut(d).enumerate() {
                    let r = task * rows_per_task + k;
                    simd::softmax_row(&input[r * d..(r + 1) * d], scale, bias_row(r), row);
                }
            });
        Ok(from_flex(FlexTensor::new(
            burn::tensor::Bytes::from_elems(out),
            Layout::contiguous(scores.layout().shape().clone()),
            DType::F32,
        )))
    }

    /// Whether `B` is flex and every tensor is f32.
    fn all_flex_f32<B: Backend, const D: usize>(tensors: &[&Tensor<B, D>]) -> bool {
        TypeId::of::<B>() == TypeId::of::<Flex>() && tensors.iter().all(|t| t.dtype() == DType::F32)
    }

    /// `t`, copied only if its last axis is strided (the row copies below
    /// read whole rows).
    fn with_contiguous_rows(t: FlexTensor) -> FlexTensor {
        if t.layout().strides()[3] == 1 {
            t
        } else {
            t.to_contiguous()
        }
    }

    /// Offset of element `index` of a flex tensor in its storage.
    fn offset(layout: &Layout, index: [usize; 4]) -> usize {
        let start = layout.start_offset() as isize;
        let strides = layout.strides();
        (start
            + (0..4)
                .map(|i| index[i] as isize * strides[i])
                .sum::<isize>()) as usize
    }

    pub(super) fn merge_heads<B: Backend>(
        blocks: Vec<Tensor<B, 4>>,
    ) -> Result<Tensor<B, 3>, Vec<Tensor<B, 4>>> {
        if blocks.is_empty() || !all_flex_f32(&blocks.iter().collect::<Vec<_>>()) {
            return Err(blocks);
        }
        let [n, h, _, hd] = blocks[0].dims();
        if blocks.iter().any(|b| {
            let [bn, bh, _, bhd] = b.dims();
            (bn, bh, bhd) != (n, h, hd)
        }) {
            return Err(blocks);
        }
        let blocks: Vec<FlexTensor> = blocks
            .into_iter()
            .map(|b| {
                with_contiguous_rows(
                    to_flex(b).unwrap_or_else(|_| unreachable!("checked: flex f32")),
                )
            })
            .collect();
        // Token t of the output is row t - first[i] of block i.
        let mut first = Vec::with_capacity(blocks.len());
        let mut total = 0;
        for b in &blocks {
            first.push(total);
            total += b.layout().shape()[2];
        }
        let width = h * hd;
        let mut out = vec![0f32; n * total * width];
        if width > 0 {
            out.par_chunks_mut(width).enumerate().for_each(|(row, o)| {
                let (sample, token) = (row / total, row % total);
                let i = first.partition_point(|&f| f <= token) - 1;
                let (block, r) = (&blocks[i], token - first[i]);
                let values: &[f32] = block.storage();
                for (head, o) in o.chunks_exact_mut(hd).enumerate() {
                    let at = offset(block.layout(), [sample, head, r, 0]);
                    o.copy_from_slice(&values[at..at + hd]);
                }
            });
        }
        Ok(from_flex(FlexTensor::new(
            burn::tensor::Bytes::from_elems(out),
            Layout::contiguous(vec![n, total, width].into()),
            DType::F32,
        )))
    }

    pub(super) fn write_rows<B: Backend>(
        buffer: Tensor<B, 4>,
        at: usize,
        rows: Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>)> {
        if !all_flex_f32(&[&buffer, &rows]) {
            return Err((buffer, rows));
        }
        let mut target = to_flex(buffer).unwrap_or_else(|_| unreachable!("checked: flex f32"));
        let whole = target.layout().is_contiguous()
            && target.layout().start_offset() == 0
            && target.layout().num_elements() * 4 == target.bytes().len();
        if !whole || !target.is_unique() {
            return Err((from_flex(target), rows));
        }
        let rows = with_contiguous_rows(
            to_flex(rows).unwrap_or_else(|_| unreachable!("checked: flex f32")),
        );
        let [n, h, c, hd] = target.layout().shape().dims::<4>();
        let t = rows.layout().shape()[2];
        let source: &[f32] = rows.storage();
        let dest = target
            .try_storage_mut::<f32>()
            .expect("checked: nothing else holds the buffer");
        for sample in 0..n {
            for head in 0..h {
                for r in 0..t {
                    let from = offset(rows.layout(), [sample, head, r, 0]);
                    let to = ((sample * h + head) * c + at + r) * hd;
                    dest[to..to + hd].copy_from_slice(&source[from..from + hd]);
                }
            }
        }
        Ok(from_flex(target))
    }

    /// The row kernels, compiled for AVX-512 and AVX2 and chosen at run time.
    mod simd {
        use super::exp;

        #[inline(always)]
        fn x_sigmoid_any(input: &[f32], alpha: f32, out: &mut [f32]) {
            for (o, &x) in out.iter_mut().zip(input) {
                // flex's sigmoid: 1 / (1 + e^-a) for a >= 0, e^a / (1 + e^a) below.
                let a = alpha * x;
                let e = exp(-a.abs());
                let s = if a >= 0.0 {
                    1.0 / (1.0 + e)
                } else {
                    e / (1.0 + e)
                };
                *o = x * s;
            }
        }

        /// Lanes of the running maxima and sums (one AVX-512 vector).
        const LANES: usize = 16;

        /// `out = softmax(input * scale + bias)`: one pass for the scaled
        /// scores and their maximum, one for the exponentials and their
        /// sum, one to normalise (maxima and sums kept per lane, so each
        /// pass vectorises).
        #[inline(always)]
        fn softmax_any(input: &[f32], scale: f32, bias: Option<&[f32]>, out: &mut [f32]) {
            let mut maxima = [f32::NEG_INFINITY; LANES];
            let scaled = |o: &mut [f32], x: &[f32], b: Option<&[f32]>, m: &mut [f32]| {
                for j in 0..o.len() {
                    let v = x[j] * scale + b.map_or(0.0, |b| b[j]);
                    o[j] = v;
                    m[j] = if v > m[j] { v } else { m[j] };
                }
            };
            let full = out.len() / LANES * LANES;
            let (body, tail) = out.split_at_mut(full);
            for (c, o) in body.chunks_exact_mut(LANES).enumerate() {
                let at = c * LANES..(c + 1) * LANES;
                scaled(o, &input[at.clone()], bias.map(|b| &b[at]), &mut maxima);
            }
            let mut tail_max = [f32::NEG_INFINITY; LANES];
            scaled(
                tail,
                &input[full..],
                bias.map(|b| &b[full..]),
                &mut tail_max[..tail.len()],
            );
            let max = maxima
                .iter()
                .chain(&tail_max)
                .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            let mut sums = [0f32; LANES];
            for o in out.chunks_mut(LANES) {
                for (s, v) in sums.iter_mut().zip(o.iter_mut()) {
                    *v = exp(*v - max);
                    *s += *v;
                }
            }
            let inv = 1.0 / sums.iter().sum::<f32>();
            for o in out.iter_mut() {
                *o *= inv;
            }
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn x_sigmoid_avx512(input: &[f32], alpha: f32, out: &mut [f32]) {
            x_sigmoid_any(input, alpha, out)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn x_sigmoid_avx2(input: &[f32], alpha: f32, out: &mut [f32]) {
            x_sigmoid_any(input, alpha, out)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        unsafe fn softmax_avx512(input: &[f32], scale: f32, bias: Option<&[f32]>, out: &mut [f32]) {
            softmax_any(input, scale, bias, out)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn softmax_avx2(input: &[f32], scale: f32, bias: Option<&[f32]>, out: &mut [f32]) {
            softmax_any(input, scale, bias, out)
        }

        /// `x * sigmoid(alpha * x)` of `input` into `out`.
        pub(super) fn x_sigmoid(input: &[f32], alpha: f32, out: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (checked above).
                    return unsafe { x_sigmoid_avx512(input, alpha, out) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked above).
                    return unsafe { x_sigmoid_avx2(input, alpha, out) };
                }
            }
            x_sigmoid_any(input, alpha, out)
        }

        /// One row: `out = softmax(input * scale + bias)`.
        pub(super) fn softmax_row(
            input: &[f32],
            scale: f32,
            bias: Option<&[f32]>,
            out: &mut [f32],
        ) {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (checked above).
                    return unsafe { softmax_avx512(input, scale, bias, out) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked above).
                    return unsafe { softmax_avx2(input, scale, bias, out) };
                }
            }
            softmax_any(input, scale, bias, out)
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::tensor::activation;
    use burn::tensor::{Distribution, TensorData};

    type B = crate::backend::CpuBackend;

    #[test]
    fn exp_is_within_two_ulp_of_libm_and_exact_at_the_edges() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, libm) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((ours - libm) / libm).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    fn close<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, tol: f32) {
        let (a, b) = (
            a.into_data().to_vec::<f32>().unwrap(),
            b.into_data().to_vec::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= tol * y.abs().max(1e-6) || (x.is_nan() && y.is_nan()),
                "{x} vs {y}"
            );
        }
    }

    #[test]
    fn fused_softmax_and_silu_match_burns_ops() {
        let device = Default::default();
        let scores = Tensor::<B, 4>::random([2, 3, 5, 37], Distribution::Normal(0.0, 4.0), &device);
        // A causal bias shared by every sample and head, and a per-sample key mask.
        let causal: Vec<f32> = (0..5 * 37)
            .map(|i| {
                if i % 37 > i / 37 + 32 {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let causal = Tensor::<B, 4>::from_data(TensorData::new(causal, [1, 1, 5, 37]), &device);
        let keys: Vec<f32> = (0..2 * 37)
            .map(|i| if i == 40 { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let keys = Tensor::<B, 4>::from_data(TensorData::new(keys, [2, 1, 1, 37]), &device);
        for bias in [None, Some(causal), Some(keys)] {
            let fused = scaled_softmax(scores.clone(), 0.125, bias.as_ref())
                .unwrap_or_else(|_| panic!("the CPU backend takes the fused path"));
            let mut plain = scores.clone() * 0.125;
            if let Some(b) = &bias {
                plain = plain + b.clone();
            }
            let plain = activation::softmax(plain, 3);
            close(fused.clone(), plain, 1e-6);
            if bias.is_some() {
                let probs = fused.into_data().to_vec::<f32>().unwrap();
                let masked = probs.iter().filter(|&&p| p == 0.0).count();
                assert!(masked > 0, "masked keys get probability exactly 0");
            }
        }
        let x = Tensor::<B, 3>::random([3, 7, 41], Distribution::Normal(0.0, 6.0), &device);
        close(silu(x.clone()), activation::silu(x.clone()), 1e-6);
        let plain = x.clone() * activation::sigmoid(x.clone() * 1.702);
        close(quick_gelu(x), plain, 1e-6);
    }

    #[test]
    fn a_bias_of_another_shape_is_handed_back() {
        let device = Default::default();
        let scores = Tensor::<B, 4>::zeros([1, 2, 3, 4], &device);
        let odd = Tensor::<B, 4>::zeros([1, 2, 3, 1], &device);
        assert!(scaled_softmax(scores, 1.0, Some(&odd)).is_err());
        let empty = Tensor::<B, 4>::zeros([1, 2, 3, 0], &device);
        let out = scaled_softmax(empty, 1.0, None).unwrap_or_else(|_| panic!("fast path"));
        assert_eq!(out.dims(), [1, 2, 3, 0], "no keys: nothing to normalise");
    }

    #[test]
    fn merged_head_blocks_equal_burns_permute_and_concatenation() {
        let device = Default::default();
        let block = |t: usize| Tensor::<B, 4>::random([2, 3, t, 4], Distribution::Default, &device);
        // A contiguous block, a strided one (heads and tokens swapped in) and a sliced one.
        let blocks = vec![
            block(5),
            Tensor::<B, 4>::random([2, 1, 3, 4], Distribution::Default, &device).swap_dims(1, 2),
            block(6).slice([0..2, 0..3, 2..6, 0..4]),
        ];
        let plain: Vec<Tensor<B, 3>> = blocks
            .iter()
            .map(|x| {
                let [n, h, t, hd] = x.dims();
                x.clone().swap_dims(1, 2).reshape([n, t, h * hd])
            })
            .collect();
        let merged = merge_heads(blocks);
        assert_eq!(merged.dims(), [2, 5 + 1 + 4, 12]);
        close(merged, Tensor::cat(plain, 1), 0.0);
    }
}
