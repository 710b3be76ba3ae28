//! The LLaMA decoder (Vicuna) as HF computes it: RMSNorm, rotate_half RoPE,
//! causal attention (optionally grouped-query), SiLU-gated MLP, untied head.

use crate::cache::KvCache;
use crate::config::LlamaConfig;
use crate::nn::{scaled_softmax_f32, split_heads, RmsNorm};
use crate::taps::{Captured, Taps};
use crate::weights::TensorLoader;
use burn::backend::Autodiff;
use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use sdrpn_core::fast_cpu::{merge_heads, silu};
use sdrpn_core::rope::Rope;
use sdrpn_core::Positions;
use std::ops::Range;

/// Causal self-attention of one decoder layer.
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    q_proj: Linear<B>,
    /// Key projection (the RPN head reuses it).
    pub k_proj: Linear<B>,
    v_proj: Linear<B>,
    o_proj: Linear<B>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    rope_theta: f64,
    /// Qwen2.5-VL's M-RoPE frequency sections (`None`: 1-D RoPE).
    #[module(skip)]
    mrope_section: Option<Vec<usize>>,
}

/// What every layer of one pass shares: RoPE tables of the pass's positions
/// and the causal mask (built once per pass, not per layer).
#[derive(Debug, Clone)]
pub struct PassContext<B: Backend> {
    /// First position of the pass.
    pub start: usize,
    /// RoPE for the query heads.
    rope_q: Rope<B>,
    /// RoPE for the key heads (`None`: as many as query heads).
    rope_k: Option<Rope<B>>,
    /// `[1 or N, 1, T, S]` causal bias: -inf where a key is in a query's
    /// future or is left padding of a batch, 0 elsewhere (`None` for one
    /// query without padding), added to the scores as HF's additive mask is.
    causal_bias: Option<Tensor<B, 4>>,
}

impl<B: Backend> PassContext<B> {
    /// Context for `positions.len()` new tokens after `start` cached ones,
    /// for `heads` query and `kv_heads` key heads, with rotary `positions`
    /// (and M-RoPE `sections`, see [`Rope::new`]).
    pub fn new(
        (heads, kv_heads, head_dim): (usize, usize, usize),
        (theta, sections): (f64, Option<&[usize]>),
        start: usize,
        positions: &Positions,
        device: &B::Device,
    ) -> Self {
        let len = positions.len();
        let causal_bias = match positions.left_pads() {
            Some(pads) => Some(padded_causal_bias(pads, start, len, device)),
            None => (len > 1).then(|| causal_bias(start, len, device)),
        };
        let rope = |h| Rope::new(head_dim, h, theta, positions, sections, device);
        Self {
            start,
            rope_q: rope(heads),
            rope_k: (kv_heads != heads).then(|| rope(kv_heads)),
            causal_bias,
        }
    }

    /// RoPE for the key heads.
    fn rope_k(&self) -> &Rope<B> {
        self.rope_k.as_ref().unwrap_or(&self.rope_q)
    }
}

/// `[1, 1, T, S]`: -inf where key `j` is in the future of the query at
/// position `start + i` (`j > start + i`), else 0.
fn causal_bias<B: Backend>(start: usize, len: usize, device: &B::Device) -> Tensor<B, 4> {
    let s = start + len;
    let q_pos = Tensor::<B, 1, Int>::arange(start as i64..s as i64, device).reshape([len, 1]);
    let k_pos = Tensor::<B, 1, Int>::arange(0..s as i64, device).reshape([1, s]);
    let future = k_pos.expand([len, s]).greater(q_pos.expand([len, s]));
    Tensor::<B, 2>::zeros([len, s], device)
        .mask_fill(future, f32::NEG_INFINITY)
        .reshape([1, 1, len, s])
}

/// `[N, 1, T, S]`: the causal bias of [`causal_bias`] with sample `n`'s
/// keys `0..pads[n]` (left padding) hidden too. A query on padding keeps
/// its own key, so its softmax row stays finite (its output is never
/// read: real queries cannot see it).
fn padded_causal_bias<B: Backend>(
    pads: &[usize],
    start: usize,
    len: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let s = start + len;
    let mut bias = vec![0f32; pads.len() * len * s];
    for (n, &pad) in pads.iter().enumerate() {
        for i in 0..len {
            let query = start + i;
            let row = &mut bias[(n * len + i) * s..(n * len + i + 1) * s];
            for (j, b) in row.iter_mut().enumerate() {
                if j > query || (j < pad && j != query) {
                    *b = f32::NEG_INFINITY;
                }
            }
        }
    }
    Tensor::from_data(
        burn::tensor::TensorData::new(bias, [pads.len(), 1, len, s]),
        device,
    )
}

impl<B: Backend> LlamaAttention<B> {
    /// The query projection (the RPN head reuses it).
    pub fn q_proj(&self) -> &Linear<B> {
        &self.q_proj
    }

    /// Heads and head width.
    pub fn heads(&self) -> (usize, usize) {
        (self.num_heads, self.head_dim)
    }

    /// Attention over the pass's new positions and everything in `cache`
    /// (if given, the new keys/values are appended to it). Returns the
    /// output and, unless `probs` is [`ProbsUse::Discard`], the post-softmax
    /// probabilities.
    ///
    /// When they are discarded a causal pass over more than [`QUERY_BLOCK`]
    /// tokens runs in blocks of queries, each against only the keys it can
    /// see (about half the products and exponentials of the full square);
    /// the masked scores it skips have probability exactly 0, so the output
    /// is the same.
    ///
    /// # Shapes
    /// - `x`: `[N, T, D]` -> (`[N, T, D]`, `[N, H, T, S]`)
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        pass: &PassContext<B>,
        cache: Option<(&mut KvCache<B>, usize)>,
        probs_use: ProbsUse,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 4>>) {
        let (h, hkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let [n, t, _] = x.dims();
        // RoPE runs on the projections' own `[N, T, H, hd]` layout; the
        // head-major views that follow are strided, which matmul takes as is.
        let q = self.q_proj.forward(x.clone()).reshape([n, t, h, hd]);
        let q = pass.rope_q.apply(q);
        let k = self.k_proj.forward(x.clone()).reshape([n, t, hkv, hd]);
        let k = pass.rope_k().apply(k).swap_dims(1, 2);
        let v = split_heads(self.v_proj.forward(x), hkv, hd);
        let (k, v) = match cache {
            Some((cache, layer)) => {
                let kv = cache.append(layer, k, v);
                (kv.keys, kv.values)
            }
            None => (k, v),
        };
        let s = k.dims()[2];
        let bias = pass.causal_bias.as_ref();
        let blocks = match bias {
            Some(_) if probs_use == ProbsUse::Discard && t > QUERY_BLOCK => {
                (0..t).step_by(QUERY_BLOCK).collect()
            }
            _ => vec![0],
        };
        let mut kept = None;
        let mut contexts = Vec::with_capacity(blocks.len());
        for (i, &r0) in blocks.iter().enumerate() {
            let r1 = blocks.get(i + 1).copied().unwrap_or(t);
            // Queries r0..r1 (positions s - t + r0 ..) see keys 0..end.
            let end = s - t + r1;
            let (q, k, v) = if blocks.len() == 1 {
                (q.clone(), k.clone(), v.clone())
            } else {
                (
                    q.clone().slice([0..n, r0..r1, 0..h, 0..hd]),
                    k.clone().slice([0..n, 0..hkv, 0..end, 0..hd]),
                    v.clone().slice([0..n, 0..hkv, 0..end, 0..hd]),
                )
            };
            let bias = bias.map(|b| {
                let [nb, _, _, _] = b.dims();
                b.clone().slice([0..nb, 0..1, r0..r1, 0..end])
            });
            let mut probs = self.probabilities(q, k, bias.as_ref());
            if probs_use == ProbsUse::Leaf {
                probs = probs.detach().require_grad();
            }
            contexts.push(self.context(probs.clone(), v));
            if probs_use != ProbsUse::Discard {
                kept = Some(probs);
            }
        }
        let out = self.o_proj.forward(merge_heads(contexts));
        (out, kept)
    }

    /// Attention probabilities of token-major queries against head-major
    /// keys. Grouped-query attention copies no keys: query heads
    /// `j*rep..(j+1)*rep` share key head `j` (HF's `repeat_kv` gives the
    /// same products). Over several queries they are viewed `[N, Hkv, rep,
    /// T, hd]` (no copy) against the key head broadcast over `rep`; one
    /// decoded token's few queries are copied to `[N, Hkv, rep, hd]` (one
    /// product per key head is faster than `rep` one-row ones).
    ///
    /// # Shapes
    /// - `q`: `[N, T, H, hd]`, `k`: `[N, Hkv, S, hd]`, `bias`: `[1 or N, 1, T, S]` -> `[N, H, T, S]`
    fn probabilities(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        bias: Option<&Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let (h, hkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let [n, t, _, _] = q.dims();
        let s = k.dims()[2];
        let rep = h / hkv;
        let scores = if rep == 1 {
            q.swap_dims(1, 2).matmul(k.swap_dims(2, 3))
        } else if t == 1 {
            q.reshape([n, hkv, rep, hd])
                .matmul(k.swap_dims(2, 3))
                .reshape([n, h, t, s])
        } else {
            q.reshape([n, t, hkv, rep, hd])
                .permute([0, 2, 3, 1, 4])
                .matmul(k.swap_dims(2, 3).unsqueeze_dim::<5>(2))
                .reshape([n, h, t, s])
        };
        scaled_softmax_f32(scores, (hd as f64).powf(-0.5), bias)
    }

    /// The probabilities' weighted values, the key heads shared as in
    /// [`Self::probabilities`] (probabilities viewed `[N, Hkv, rep*T, S]`).
    ///
    /// # Shapes
    /// - `probs`: `[N, H, T, S]`, `v`: `[N, Hkv, S, hd]` -> `[N, H, T, hd]`
    fn context(&self, probs: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
        let (h, hkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let [n, _, t, s] = probs.dims();
        if h == hkv {
            probs.matmul(v)
        } else {
            probs
                .reshape([n, hkv, (h / hkv) * t, s])
                .matmul(v)
                .reshape([n, h, t, hd])
        }
    }
}

/// What an attention pass does with its post-softmax probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbsUse {
    /// Nothing (a long causal pass then runs in query blocks).
    Discard,
    /// Returns them with the output.
    Keep,
    /// Returns them as an autodiff leaf that the output is computed from:
    /// after `backward` of anything computed from the output,
    /// `probs.grad(&grads)` is its gradient with respect to the
    /// probabilities (HF's `torch.autograd.grad(loss, attentions[l])`), and
    /// backward stops there. Without autodiff the same as `Keep`.
    Leaf,
}

/// Queries per block of a causal pass whose probabilities nobody keeps (see
/// [`LlamaAttention::forward`]).
pub const QUERY_BLOCK: usize = 128;

/// SiLU-gated MLP.
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    gate_proj: Linear<B>,
    up_proj: Linear<B>,
    down_proj: Linear<B>,
}

impl<B: Backend> LlamaMlp<B> {
    /// # Shapes
    /// - `x`: `[N, T, D]` -> `[N, T, D]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.down_proj
            .forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}

/// One decoder layer.
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer<B: Backend> {
    /// Pre-attention norm (the RPN head reuses it).
    pub input_layernorm: RmsNorm<B>,
    /// Self-attention.
    pub self_attn: LlamaAttention<B>,
    post_attention_layernorm: RmsNorm<B>,
    mlp: LlamaMlp<B>,
}

impl<B: Backend> LlamaDecoderLayer<B> {
    fn load(loader: &mut TensorLoader<B>, prefix: &str, cfg: &LlamaConfig) -> Self {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let lin = |l: &mut TensorLoader<B>, name: &str, a: usize, b: usize| {
            l.linear(&format!("{prefix}.{name}"), a, b, false)
        };
        let qkv = |l: &mut TensorLoader<B>, name: &str, b: usize| {
            l.linear(&format!("{prefix}.{name}"), d, b, cfg.attention_bias)
        };
        Self {
            input_layernorm: RmsNorm::load(
                loader,
                &format!("{prefix}.input_layernorm"),
                d,
                cfg.rms_norm_eps,
            ),
            self_attn: LlamaAttention {
                q_proj: qkv(loader, "self_attn.q_proj", cfg.num_heads * hd),
                k_proj: qkv(loader, "self_attn.k_proj", cfg.num_kv_heads * hd),
                v_proj: qkv(loader, "self_attn.v_proj", cfg.num_kv_heads * hd),
                o_proj: lin(loader, "self_attn.o_proj", cfg.num_heads * hd, d),
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_kv_heads,
                head_dim: hd,
                rope_theta: cfg.rope_theta,
                mrope_section: cfg.mrope_section.clone(),
            },
            post_attention_layernorm: RmsNorm::load(
                loader,
                &format!("{prefix}.post_attention_layernorm"),
                d,
                cfg.rms_norm_eps,
            ),
            mlp: LlamaMlp {
                gate_proj: lin(loader, "mlp.gate_proj", d, cfg.intermediate_size),
                up_proj: lin(loader, "mlp.up_proj", d, cfg.intermediate_size),
                down_proj: lin(loader, "mlp.down_proj", cfg.intermediate_size, d),
            },
        }
    }

    /// A pass context for this layer's attention geometry: the tokens at
    /// rotary `positions` after `start` cached ones.
    pub fn pass_context(
        &self,
        start: usize,
        positions: &Positions,
        device: &B::Device,
    ) -> PassContext<B> {
        let attn = &self.self_attn;
        PassContext::new(
            (attn.num_heads, attn.num_kv_heads, attn.head_dim),
            (attn.rope_theta, attn.mrope_section.as_deref()),
            start,
            positions,
            device,
        )
    }

    /// # Shapes
    /// - `x`: `[N, T, D]` -> (`[N, T, D]`, probabilities `[N, H, T, S]`
    ///   unless discarded)
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        pass: &PassContext<B>,
        cache: Option<(&mut KvCache<B>, usize)>,
        probs_use: ProbsUse,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 4>>) {
        let (attn, probs) = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            pass,
            cache,
            probs_use,
        );
        let x = x + attn;
        let out = x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x));
        (out, probs)
    }
}

impl<B: Backend> sdrpn_core::rpn::TwigLayer<B> for LlamaDecoderLayer<B> {
    fn forward_twig(&self, x: Tensor<B, 3>, positions: &Positions) -> Tensor<B, 3> {
        let pass = self.pass_context(0, positions, &x.device());
        self.forward(x, &pass, None, ProbsUse::Discard).0
    }
}

/// The language model: embeddings, decoder layers, final norm, lm_head.
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    embed_tokens: Embedding<B>,
    /// The decoder layers.
    pub layers: Vec<LlamaDecoderLayer<B>>,
    /// The final norm.
    pub norm: RmsNorm<B>,
    lm_head: Linear<B>,
}

impl<B: Backend> LlamaModel<B> {
    /// Loads `language_model.model.*` and `language_model.lm_head` (llava-hf).
    pub fn load(loader: &mut TensorLoader<B>, cfg: &LlamaConfig) -> Self {
        Self::load_at(
            loader,
            cfg,
            "language_model.model",
            "language_model.lm_head",
        )
    }

    /// Loads the decoder stored under `prefix` (`{prefix}.embed_tokens`,
    /// `{prefix}.layers.N`, `{prefix}.norm`) and its head under `head`
    /// (absent when the embeddings are tied).
    pub fn load_at(
        loader: &mut TensorLoader<B>,
        cfg: &LlamaConfig,
        prefix: &str,
        head: &str,
    ) -> Self {
        let (v, d) = (cfg.vocab_size, cfg.hidden_size);
        let embed = loader.param(&format!("{prefix}.embed_tokens.weight"), [v, d]);
        let lm_head = if cfg.tie_word_embeddings {
            // A copy: training would untie it, and exporting skips it.
            Linear {
                weight: Param::from_tensor(embed.val().transpose()),
                bias: None,
            }
        } else {
            loader.linear(head, d, v, false)
        };
        Self {
            embed_tokens: Embedding { weight: embed },
            layers: (0..cfg.num_layers)
                .map(|i| LlamaDecoderLayer::load(loader, &format!("{prefix}.layers.{i}"), cfg))
                .collect(),
            norm: RmsNorm::load(loader, &format!("{prefix}.norm"), d, cfg.rms_norm_eps),
            lm_head,
        }
    }

    /// Token embeddings.
    ///
    /// # Shapes
    /// - `ids`: `[N, T]` -> `[N, T, D]`
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.embed_tokens.forward(ids)
    }

    /// Runs decoder layers `layers` over `h` (positions `start..start+T`),
    /// appending to `cache` when given, and captures what `taps` asks for.
    /// Hidden states are captured in HF numbering (after layer i -> i+1);
    /// index L (after the final norm) is left to [`LlamaModel::final_norm`]'s caller.
    ///
    /// # Shapes
    /// - `h`: `[N, T, D]` -> `[N, T, D]`
    pub fn run_layers(
        &self,
        h: Tensor<B, 3>,
        start: usize,
        layers: Range<usize>,
        cache: Option<&mut KvCache<B>>,
        taps: &Taps,
        captured: &mut Captured<B>,
    ) -> Tensor<B, 3> {
        let [_, t, _] = h.dims();
        let positions = Positions::Sequential { start, len: t };
        self.run_layers_at(h, start, &positions, layers, cache, taps, captured)
    }

    /// [`LlamaModel::run_layers`] with rotary `positions` given by the host
    /// (Qwen2.5-VL's M-RoPE), the new tokens still after `start` cached ones.
    ///
    /// # Shapes
    /// - `h`: `[N, T, D]` -> `[N, T, D]`, `positions.len() == T`
    #[allow(clippy::too_many_arguments)]
    pub fn run_layers_at(
        &self,
        mut h: Tensor<B, 3>,
        start: usize,
        positions: &Positions,
        layers: Range<usize>,
        mut cache: Option<&mut KvCache<B>>,
        taps: &Taps,
        captured: &mut Captured<B>,
    ) -> Tensor<B, 3> {
        let last = self.layers.len();
        if layers.start == 0 && taps.hidden.contains(&0) {
            captured.hidden.insert(0, h.clone());
        }
        let pass = match self.layers.get(layers.start) {
            Some(layer) => layer.pass_context(start, positions, &h.device()),
            None => return h,
        };
        for i in layers {
            let (out, probs) = self.layers[i].forward(
                h,
                &pass,
                cache.as_deref_mut().map(|c| (c, i)),
                match taps.keeps_attention(i) {
                    true => ProbsUse::Keep,
                    false => ProbsUse::Discard,
                },
            );
            h = out;
            if let Some(kept) = probs.and_then(|p| taps.select(i, &p, start)) {
                captured.attention.insert(i, kept);
            }
            if i + 1 < last && taps.hidden.contains(&(i + 1)) {
                captured.hidden.insert(i + 1, h.clone());
            }
        }
        h
    }

    /// [`LlamaModel::run_layers_at`] capturing nothing (what the method's
    /// host trait runs).
    ///
    /// # Shapes
    /// - `h`: `[N, T, D]` -> `[N, T, D]`
    pub fn run_untapped(
        &self,
        h: Tensor<B, 3>,
        start: usize,
        positions: &Positions,
        layers: Range<usize>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let mut captured = Captured::default();
        self.run_layers_at(
            h,
            start,
            positions,
            layers,
            cache,
            &Taps::none(),
            &mut captured,
        )
    }

    /// [`LlamaModel::run_layers_at`] keeping only the post-softmax attention
    /// of `keep`'s layers (all heads and query rows), in that order.
    ///
    /// # Shapes
    /// - `h`: `[N, T, D]` -> (`[N, T, D]`, `[N, H, T, S]` per kept layer)
    pub fn run_keeping(
        &self,
        h: Tensor<B, 3>,
        start: usize,
        positions: &Positions,
        layers: Range<usize>,
        cache: Option<&mut KvCache<B>>,
        keep: &[usize],
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 4>>) {
        let mut captured = Captured::default();
        let taps = Taps::attention_of(keep.iter().copied());
        let h = self.run_layers_at(h, start, positions, layers, cache, &taps, &mut captured);
        let kept = keep
            .iter()
            .filter_map(|l| captured.attention.get(l).cloned())
            .collect();
        (h, kept)
    }

    /// Embeddings of one token per sample.
    ///
    /// # Shapes
    /// - returns `[N, 1, D]`, `N = ids.len()`
    pub fn embed_each(&self, ids: &[u32]) -> Tensor<B, 3> {
        let n = ids.len();
        let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let ids =
            Tensor::<B, 1, Int>::from_data(burn::tensor::TensorData::new(ids, [n]), &self.device());
        self.embed(ids.reshape([n, 1]))
    }

    /// The final norm.
    pub fn final_norm(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        self.norm.forward(h)
    }

    /// Logits of normed hidden states.
    ///
    /// # Shapes
    /// - `h`: `[N, T, D]` -> `[N, T, V]`
    pub fn logits(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        self.lm_head.forward(h)
    }

    /// ViCrop's grad-att ingredients at decoder layer `layer`: its
    /// post-softmax attention `A` over a prompt whose input to that layer is
    /// `h` (at rotary `positions`, no cache), and the gradient `dA` of the
    /// log-probability of the greedy next token (the argmax at the last
    /// position, after the final norm and head) with respect to it: HF's
    /// `torch.autograd.grad(-CrossEntropy(logits[:, -1], argmax),
    /// attentions[layer])`. Burn autodiff through layers `layer..L` on
    /// untracked copies of their weights (no parameter gradients; backward
    /// stops at `A`); layers before `layer` are not run.
    ///
    /// # Shapes
    /// - `h`: `[1, T, D]` -> (`A`, `dA`), both `[1, H, T, T]`
    pub fn attention_gradient(
        &self,
        h: Tensor<B, 3>,
        positions: &Positions,
        layer: usize,
    ) -> sdrpn_core::Result<(Tensor<B, 4>, Tensor<B, 4>)> {
        let Some(first) = self.layers.get(layer) else {
            return Err(sdrpn_core::CoreError::config(
                "attention gradient layer",
                format!(
                    "{layer} is not below the model's {} layers",
                    self.layers.len()
                ),
            ));
        };
        let [n, t, d] = h.dims();
        if n != 1 || positions.len() != t {
            return Err(sdrpn_core::CoreError::config(
                "attention gradient input",
                format!(
                    "one sample of {} positions, got {n} of {t}",
                    positions.len()
                ),
            ));
        }
        let first: LlamaDecoderLayer<Autodiff<B>> = first.clone().train();
        let x = Tensor::<Autodiff<B>, 3>::from_inner(h);
        let pass = first.pass_context(0, positions, &x.device());
        let (mut x, probs) = first.forward(x, &pass, None, ProbsUse::Leaf);
        let probs = probs.expect("a leaf is kept");
        for later in &self.layers[layer + 1..] {
            let later: LlamaDecoderLayer<Autodiff<B>> = later.clone().train();
            x = later.forward(x, &pass, None, ProbsUse::Discard).0;
        }
        let norm: RmsNorm<Autodiff<B>> = self.norm.clone().train();
        let head: Linear<Autodiff<B>> = self.lm_head.clone().train();
        let logits = head.forward(norm.forward(x.slice([0..1, t - 1..t, 0..d])));
        let vocab = logits.dims()[2];
        let log_probs = log_softmax(logits.reshape([1, vocab]), 1);
        let greedy = log_probs.clone().argmax(1);
        let grads = log_probs.gather(1, greedy).sum().backward();
        let grad = probs
            .grad(&grads)
            .unwrap_or_else(|| probs.clone().inner().zeros_like());
        Ok((probs.inner(), grad))
    }

    /// Logits of the last position of the last sample of normed hidden
    /// states `[N, T, D]`, read back to the host (`V` values).
    pub fn last_logits(&self, h: Tensor<B, 3>) -> sdrpn_core::Result<Vec<f32>> {
        let [n, t, d] = h.dims();
        sdrpn_core::readback::floats(self.logits(h.slice([n - 1..n, t - 1..t, 0..d])))
    }

    /// The device the weights live on.
    pub fn device(&self) -> B::Device {
        self.embed_tokens.weight.device()
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    type B = sdrpn_core::backend::CpuBackend;

    fn linear(weight: Tensor<B, 2>) -> Linear<B> {
        Linear {
            weight: Param::from_tensor(weight),
            bias: None,
        }
    }

    fn attention(
        q: &Tensor<B, 2>,
        k: Tensor<B, 2>,
        v: Tensor<B, 2>,
        o: &Tensor<B, 2>,
        kv_heads: usize,
    ) -> LlamaAttention<B> {
        LlamaAttention {
            q_proj: linear(q.clone()),
            k_proj: linear(k),
            v_proj: linear(v),
            o_proj: linear(o.clone()),
            num_heads: 4,
            num_kv_heads: kv_heads,
            head_dim: 4,
            rope_theta: 10000.0,
            mrope_section: None,
        }
    }

    /// `[D, Hkv*hd]` -> `[D, H*hd]`, each key/value head repeated for the
    /// query heads that share it (kv head j serves query heads 2j, 2j+1).
    fn repeat_heads(w: Tensor<B, 2>) -> Tensor<B, 2> {
        let [d, _] = w.dims();
        w.reshape([d, 2, 1, 4])
            .expand([d, 2, 2, 4])
            .reshape([d, 16])
    }

    /// Grouped-query attention (4 query heads sharing 2 key/value heads)
    /// equals multi-head attention whose key/value weights repeat the
    /// shared heads, with the cache and without: RoPE on the key heads and
    /// the head repetition are right.
    #[test]
    fn grouped_query_attention_equals_repeated_multi_head_attention() {
        let device = Default::default();
        let w = |shape: [usize; 2]| {
            Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, 0.3), &device)
        };
        let (q, k, v, o) = (w([16, 16]), w([16, 8]), w([16, 8]), w([16, 16]));
        let gqa = attention(&q, k.clone(), v.clone(), &o, 2);
        let mha = attention(&q, repeat_heads(k), repeat_heads(v), &o, 4);
        let x = Tensor::<B, 3>::random([1, 7, 16], Distribution::Normal(0.0, 1.0), &device);
        let close = |a: Tensor<B, 4>, b: Tensor<B, 4>| {
            let diff: f32 = (a - b).abs().max().into_scalar();
            assert!(diff < 1e-5, "max difference {diff}");
        };

        let whole = PassContext::new(
            (4, 2, 4),
            (10000.0, None),
            0,
            &Positions::prefix(7),
            &device,
        );
        let (out_g, probs_g) = gqa.forward(x.clone(), &whole, None, ProbsUse::Keep);
        let whole_mha = PassContext::new(
            (4, 4, 4),
            (10000.0, None),
            0,
            &Positions::prefix(7),
            &device,
        );
        let (out_m, probs_m) = mha.forward(x.clone(), &whole_mha, None, ProbsUse::Keep);
        close(probs_g.unwrap(), probs_m.unwrap());
        close(out_g.clone().unsqueeze(), out_m.unsqueeze());

        // The same sequence in two passes through the cache: 5 tokens, then 2.
        let mut cache = KvCache::new(1);
        let first = PassContext::new(
            (4, 2, 4),
            (10000.0, None),
            0,
            &Positions::prefix(5),
            &device,
        );
        gqa.forward(
            x.clone().slice([0..1, 0..5, 0..16]),
            &first,
            Some((&mut cache, 0)),
            ProbsUse::Discard,
        );
        let second = PassContext::new(
            (4, 2, 4),
            (10000.0, None),
            5,
            &Positions::Sequential { start: 5, len: 2 },
            &device,
        );
        let (tail, _) = gqa.forward(
            x.slice([0..1, 5..7, 0..16]),
            &second,
            Some((&mut cache, 0)),
            ProbsUse::Discard,
        );
        close(
            tail.unsqueeze(),
            out_g.slice([0..1, 5..7, 0..16]).unsqueeze(),
        );
    }

    /// A long causal pass whose probabilities nobody keeps runs in query
    /// blocks against the keys each block can see: its output equals the
    /// full square's, for multi-head and grouped-query attention, from an
    /// empty cache and after cached positions (blocks then start mid-cache).
    #[test]
    fn query_blocks_give_the_full_attention_output() {
        let device = Default::default();
        let w = |shape: [usize; 2]| {
            Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, 0.3), &device)
        };
        let (q, o) = (w([16, 16]), w([16, 16]));
        let t = 2 * QUERY_BLOCK + 37;
        let x = Tensor::<B, 3>::random([2, 20 + t, 16], Distribution::Normal(0.0, 1.0), &device);
        for kv_heads in [4, 2] {
            let layer = attention(
                &q,
                w([16, 4 * kv_heads]),
                w([16, 4 * kv_heads]),
                &o,
                kv_heads,
            );
            let pass = |start, len| {
                PassContext::new(
                    (4, kv_heads, 4),
                    (10000.0, None),
                    start,
                    &Positions::Sequential { start, len },
                    &device,
                )
            };
            for start in [0, 20] {
                let run = |keep: ProbsUse| {
                    let mut cache = KvCache::new(1);
                    if start > 0 {
                        let head = x.clone().slice([0..2, 0..start, 0..16]);
                        layer.forward(
                            head,
                            &pass(0, start),
                            Some((&mut cache, 0)),
                            ProbsUse::Discard,
                        );
                    }
                    let tail = x.clone().slice([0..2, start..start + t, 0..16]);
                    let (out, probs) =
                        layer.forward(tail, &pass(start, t), Some((&mut cache, 0)), keep);
                    assert_eq!(probs.is_some(), keep == ProbsUse::Keep);
                    out
                };
                let (blocked, full) = (run(ProbsUse::Discard), run(ProbsUse::Keep));
                let diff: f32 = (blocked - full).abs().max().into_scalar();
                assert!(diff < 1e-6, "kv heads {kv_heads}, start {start}: {diff}");
            }
        }
    }
}
