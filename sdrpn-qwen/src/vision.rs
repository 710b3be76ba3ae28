//! Qwen2.5-VL's vision tower as HF computes it: a linear patch embedding
//! of `[3, 2, 14, 14]` patches (an image is its own second frame), 2-D
//! rotary attention in windows except in the full-attention blocks,
//! RMSNorm, SiLU-gated MLPs with biases, and the merger (RMSNorm, then an
//! MLP over each 2x2 square of patches). Tokens run in window order inside
//! the tower and come out in the processor's raster order of merged tokens.

use crate::config::QwenVisionConfig;
use crate::error::{QwenError, Result};
use crate::window::{patch_positions, WindowLayout};
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use sdrpn_core::fast_cpu::merge_heads;
use sdrpn_core::fast_cpu::silu;
use sdrpn_core::rope::Rope;
use sdrpn_llava::nn::{scaled_softmax_f32, RmsNorm};
use sdrpn_llava::weights::TensorLoader;

/// Epsilon of every vision RMSNorm (HF hard-codes 1e-6).
const VISION_EPS: f64 = 1e-6;

/// Windows of one image as index tensors: where each window slot reads
/// from (padded slots read an appended zero row), which keys are padding,
/// and where each token's output sits in the padded layout.
#[derive(Debug, Clone)]
struct AttentionPlan<B: Backend> {
    /// Windows `W` and slots per window `L`.
    windows: usize,
    slots: usize,
    /// `[W*L]` token index per slot (`S` for padding); `None` when no
    /// window is padded (the windows are then consecutive runs of tokens).
    gather: Option<Tensor<B, 1, Int>>,
    /// `[W, 1, 1, L]` additive key mask (`None`: no padding).
    mask: Option<Tensor<B, 4>>,
    /// `[S]` slot of each token (`None` with `gather`).
    scatter: Option<Tensor<B, 1, Int>>,
}

impl<B: Backend> AttentionPlan<B> {
    /// A plan for windows of the given lengths over `S = sum(lengths)` tokens.
    fn new(lengths: &[usize], device: &B::Device) -> Self {
        let tokens: usize = lengths.iter().sum();
        let slots = lengths.iter().copied().max().unwrap_or(0);
        let windows = lengths.len();
        let mut gather = Vec::with_capacity(windows * slots);
        let mut scatter = Vec::with_capacity(tokens);
        let mut mask = Vec::with_capacity(windows * slots);
        let mut start = 0;
        for (w, &len) in lengths.iter().enumerate() {
            for s in 0..slots {
                if s < len {
                    gather.push((start + s) as i64);
                    scatter.push((w * slots + s) as i64);
                    mask.push(0.0f32);
                } else {
                    gather.push(tokens as i64);
                    mask.push(f32::NEG_INFINITY);
                }
            }
            start += len;
        }
        let padded = lengths.iter().any(|&l| l != slots);
        let ints = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(v, [n]), device)
        };
        Self {
            windows,
            slots,
            gather: padded.then(|| ints(gather)),
            mask: padded
                .then(|| Tensor::from_data(TensorData::new(mask, [windows, 1, 1, slots]), device)),
            scatter: padded.then(|| ints(scatter)),
        }
    }

    /// `[S, C]` -> `[W, L, C]` (padding rows zero).
    fn windowed(&self, x: Tensor<B, 2>) -> Tensor<B, 3> {
        let [_, c] = x.dims();
        let Some(gather) = &self.gather else {
            return x.reshape([self.windows, self.slots, c]);
        };
        let padded = Tensor::cat(vec![x.clone(), Tensor::zeros([1, c], &x.device())], 0);
        padded
            .select(0, gather.clone())
            .reshape([self.windows, self.slots, c])
    }

    /// `[W, L, C]` -> `[S, C]` (padding rows dropped).
    fn unwindowed(&self, x: Tensor<B, 3>) -> Tensor<B, 2> {
        let [w, l, c] = x.dims();
        let flat = x.reshape([w * l, c]);
        match &self.scatter {
            Some(scatter) => flat.select(0, scatter.clone()),
            None => flat,
        }
    }
}

/// Everything the blocks of one image share: rotary tables and the two
/// attention plans.
#[derive(Debug, Clone)]
pub struct VisionPass<B: Backend> {
    /// The 2-D rotary of the patches in window order.
    rope: Rope<B>,
    windowed: AttentionPlan<B>,
    full: AttentionPlan<B>,
    /// `[S/4]` position in window order of each merged token (raster order).
    unwindow: Tensor<B, 1, Int>,
    /// `[S]` patch index (processor order) of each window-order slot.
    window_patches: Tensor<B, 1, Int>,
}

/// Self-attention with 2-D rotary positions.
#[derive(Module, Debug)]
pub struct VisionAttention<B: Backend> {
    qkv: Linear<B>,
    proj: Linear<B>,
    num_heads: usize,
}

impl<B: Backend> VisionAttention<B> {
    /// # Shapes
    /// - `x`: `[S, D]` in window order -> `[S, D]`
    fn forward(&self, x: Tensor<B, 2>, pass: &VisionPass<B>, full: bool) -> Tensor<B, 2> {
        let plan = if full { &pass.full } else { &pass.windowed };
        let [s, d] = x.dims();
        let (h, hd) = (self.num_heads, d / self.num_heads);
        let dtype = x.dtype();
        let qkv = self.qkv.forward(x);
        // HF rotates in f32 and casts back.
        let rotate = |t: Tensor<B, 2>| -> Tensor<B, 2> {
            let t = t.cast(DType::F32).reshape([1, s, h, hd]);
            pass.rope.apply(t).cast(dtype).reshape([s, d])
        };
        let q = rotate(qkv.clone().slice([0..s, 0..d]));
        let k = rotate(qkv.clone().slice([0..s, d..2 * d]));
        let v = qkv.slice([0..s, 2 * d..3 * d]);
        let heads = |t: Tensor<B, 2>| {
            plan.windowed(t)
                .reshape([plan.windows, plan.slots, h, hd])
                .swap_dims(1, 2)
        };
        let blocks = attend_in_chunks(heads(q), heads(k), heads(v), plan.mask.as_ref());
        self.proj.forward(plan.unwindowed(merge_heads(blocks)))
    }
}

/// Most attention scores held at once, in elements (16 MiB in f32): a
/// full-attention block over thousands of patches runs a few hundred query
/// rows at a time instead of holding `[H, S, S]` scores.
const SCORE_BUDGET: usize = 1 << 22;

/// Softmax attention of every window, `SCORE_BUDGET` scores at a time
/// (query rows in chunks; each row's softmax is whole, so chunking changes
/// no value). Scores are `q k^T / sqrt(hd)` plus the key `mask`, softmax in
/// f32 as HF does.
///
/// # Shapes
/// - `q`, `k`, `v`: `[W, H, L, hd]`; `mask`: `[W, 1, 1, L]` -> blocks
///   `[W, H, L_i, hd]` of consecutive query rows (`sum L_i = L`)
fn attend_in_chunks<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<&Tensor<B, 4>>,
) -> Vec<Tensor<B, 4>> {
    let [w, h, l, hd] = q.dims();
    let rows = (SCORE_BUDGET / (w * h * l).max(1)).clamp(1, l.max(1));
    let keys = k.swap_dims(2, 3);
    (0..l)
        .step_by(rows)
        .map(|r0| {
            let r1 = (r0 + rows).min(l);
            let q = q.clone().slice([0..w, 0..h, r0..r1, 0..hd]);
            let probs = scaled_softmax_f32(q.matmul(keys.clone()), (hd as f64).powf(-0.5), mask);
            probs.matmul(v.clone())
        })
        .collect()
}

/// SiLU-gated MLP with biases.
#[derive(Module, Debug)]
pub struct VisionMlp<B: Backend> {
    gate_proj: Linear<B>,
    up_proj: Linear<B>,
    down_proj: Linear<B>,
}

impl<B: Backend> VisionMlp<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.down_proj
            .forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}

/// One pre-norm transformer block.
#[derive(Module, Debug)]
pub struct VisionBlock<B: Backend> {
    norm1: RmsNorm<B>,
    attn: VisionAttention<B>,
    norm2: RmsNorm<B>,
    mlp: VisionMlp<B>,
}

/// Applies a `[N, T, D]` RMSNorm to `[S, D]`.
fn norm2d<B: Backend>(norm: &RmsNorm<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let [s, d] = x.dims();
    norm.forward(x.reshape([1, s, d])).reshape([s, d])
}

impl<B: Backend> VisionBlock<B> {
    fn forward(&self, x: Tensor<B, 2>, pass: &VisionPass<B>, full: bool) -> Tensor<B, 2> {
        let x = x.clone() + self.attn.forward(norm2d(&self.norm1, x), pass, full);
        x.clone() + self.mlp.forward(norm2d(&self.norm2, x))
    }
}

/// The patch merger: RMSNorm, then an MLP over each `m x m` square.
#[derive(Module, Debug)]
pub struct PatchMerger<B: Backend> {
    ln_q: RmsNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
    unit: usize,
}

impl<B: Backend> PatchMerger<B> {
    /// # Shapes
    /// - `x`: `[S, Dv]` -> `[S / m^2, D]`
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let [s, d] = x.dims();
        let x = norm2d(&self.ln_q, x).reshape([s / self.unit, d * self.unit]);
        self.fc2.forward(gelu(self.fc1.forward(x)))
    }
}

/// The vision tower.
#[derive(Module, Debug)]
pub struct QwenVisionTower<B: Backend> {
    patch_embed: Linear<B>,
    blocks: Vec<VisionBlock<B>>,
    merger: PatchMerger<B>,
    #[module(skip)]
    config: QwenVisionConfig,
}

impl<B: Backend> QwenVisionTower<B> {
    /// Loads `{prefix}.patch_embed`, `{prefix}.blocks.N`, `{prefix}.merger`.
    pub fn load(loader: &mut TensorLoader<B>, prefix: &str, cfg: &QwenVisionConfig) -> Self {
        let (d, mlp) = (cfg.hidden_size, cfg.intermediate_size);
        let p = cfg.patch_size;
        let unit = cfg.spatial_merge_size * cfg.spatial_merge_size;
        let blocks = (0..cfg.depth)
            .map(|i| {
                let b = format!("{prefix}.blocks.{i}");
                let mut lin = |name: &str, a: usize, c: usize| {
                    loader.linear(&format!("{b}.{name}"), a, c, true)
                };
                let attn = VisionAttention {
                    qkv: lin("attn.qkv", d, 3 * d),
                    proj: lin("attn.proj", d, d),
                    num_heads: cfg.num_heads,
                };
                let mlp = VisionMlp {
                    gate_proj: lin("mlp.gate_proj", d, mlp),
                    up_proj: lin("mlp.up_proj", d, mlp),
                    down_proj: lin("mlp.down_proj", mlp, d),
                };
                VisionBlock {
                    norm1: RmsNorm::load(loader, &format!("{b}.norm1"), d, VISION_EPS),
                    attn,
                    norm2: RmsNorm::load(loader, &format!("{b}.norm2"), d, VISION_EPS),
                    mlp,
                }
            })
            .collect();
        let merged = d * unit;
        Self {
            patch_embed: loader.linear_stored_as(
                &format!("{prefix}.patch_embed.proj"),
                &[d, 3, cfg.temporal_patch_size, p, p],
                cfg.patch_values(),
                d,
                false,
            ),
            blocks,
            merger: PatchMerger {
                ln_q: RmsNorm::load(loader, &format!("{prefix}.merger.ln_q"), d, VISION_EPS),
                fc1: loader.linear(&format!("{prefix}.merger.mlp.0"), merged, merged, true),
                fc2: loader.linear(
                    &format!("{prefix}.merger.mlp.2"),
                    merged,
                    cfg.out_hidden_size,
                    true,
                ),
                unit,
            },
            config: cfg.clone(),
        }
    }

    /// The rotary tables and window plans of a `rows x cols` patch grid.
    pub fn pass(&self, rows: usize, cols: usize, device: &B::Device) -> Result<VisionPass<B>> {
        let cfg = &self.config;
        let m = cfg.spatial_merge_size;
        if rows == 0 || cols == 0 || !rows.is_multiple_of(m) || !cols.is_multiple_of(m) {
            return Err(QwenError::invalid(
                "image grid",
                format!("{rows}x{cols} patches is not a positive multiple of the merge size {m}"),
            ));
        }
        let unit = m * m;
        let layout = WindowLayout::new(rows, cols, m, cfg.merged_window());
        let window_patches: Vec<i64> = layout
            .order
            .iter()
            .flat_map(|&u| (u * unit..(u + 1) * unit).map(|p| p as i64))
            .collect();
        // HF's rot_pos_emb: per patch, [row * inv_freq, col * inv_freq] with
        // inv_freq over half a head (dim = hd/2, hd/4 frequencies); the Rope
        // lays the table out twice (rotate_half layout).
        let hd = cfg.hidden_size / cfg.num_heads;
        let dim = hd / 2;
        let inv: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0 / 10000f32.powf(i as f32 / dim as f32))
            .collect();
        let positions = patch_positions(rows, cols, m);
        let mut angles = Vec::with_capacity(window_patches.len() * dim);
        for &p in &window_patches {
            let (r, c) = positions[p as usize];
            angles.extend(inv.iter().map(|f| r as f32 * f));
            angles.extend(inv.iter().map(|f| c as f32 * f));
        }
        let s = rows * cols;
        let windowed: Vec<usize> = layout.lengths.iter().map(|l| l * unit).collect();
        let inverse: Vec<i64> = layout.inverse().into_iter().map(|i| i as i64).collect();
        let n = inverse.len();
        Ok(VisionPass {
            rope: Rope::from_angles(&angles, [1, s], hd, cfg.num_heads, device),
            windowed: AttentionPlan::new(&windowed, device),
            full: AttentionPlan::new(&[s], device),
            unwindow: Tensor::from_data(TensorData::new(inverse, [n]), device),
            window_patches: Tensor::from_data(TensorData::new(window_patches, [s]), device),
        })
    }

    /// Patch embeddings in the processor's order.
    ///
    /// # Shapes
    /// - `patches`: `[S, 3*2*p*p]` -> `[S, Dv]`
    pub fn embed_patches(&self, patches: Tensor<B, 2>) -> Tensor<B, 2> {
        self.patch_embed.forward(patches)
    }

    /// Encodes one image's flattened patches (the processor's
    /// `pixel_values`) into merged tokens in raster order.
    ///
    /// # Shapes
    /// - `patches`: `[rows*cols, 3*2*p*p]` -> `[rows*cols/4, D]`
    pub fn forward(&self, patches: Tensor<B, 2>, rows: usize, cols: usize) -> Result<Tensor<B, 2>> {
        let [s, values] = patches.dims();
        if s != rows * cols || values != self.config.patch_values() {
            return Err(QwenError::invalid(
                "pixel values",
                format!(
                    "expected [{}, {}] for a {rows}x{cols} patch grid, got [{s}, {values}]",
                    rows * cols,
                    self.config.patch_values()
                ),
            ));
        }
        let pass = self.pass(rows, cols, &patches.device())?;
        let mut h = self
            .embed_patches(patches)
            .select(0, pass.window_patches.clone());
        for (i, block) in self.blocks.iter().enumerate() {
            let full = self.config.fullatt_block_indexes.contains(&i);
            h = block.forward(h, &pass, full);
        }
        Ok(self.merger.forward(h).select(0, pass.unwindow.clone()))
    }
}
