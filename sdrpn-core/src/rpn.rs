//! The region proposal network: twig layers on top of the frozen prefix and
//! a q.k scoring head (SPEC 3).
//!
//! ```text
//! h (output of base layer K-1, detached)
//!   -> twig layers 0..T-2 (whole decoder layers of the host)
//!   -> twig norm (initialised from the LM's final norm; absent on hosts
//!      whose reference head skips it, Qwen2.5-VL)
//!   -> head norm (input norm of the last twig layer)
//!   -> q = Wq u[query], k_i = Wk u[visual_i]   (q/k projections of the last twig layer)
//!   -> s_i = mean over heads of <q_h, k_ih> / sqrt(head_dim)   (no softmax)
//! ```
//!
//! Key heads are repeated for grouped-query hosts as their attention does
//! (query head `h` reads key head `h / (H / Hkv)`). LLaVA's head has no
//! RoPE (SPEC 3); Qwen2.5-VL's reference head rotates q and k at their
//! token positions with the host's M-RoPE ([`HeadRotary`]).

use crate::error::CoreError;
use crate::positions::Positions;
use crate::rope::Rope;
use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// A decoder layer of the host used as a twig layer: causal self-attention
/// over the whole prompt with the host's own positional encoding.
pub trait TwigLayer<B: Backend>: Module<B> {
    /// # Shapes
    /// - `x`: `[N, T, D]` -> `[N, T, D]`; causal mask, rotary `positions`
    ///   (`T` tokens, as the host gave them with the frozen prefix).
    fn forward_twig(&self, x: Tensor<B, 3>, positions: &Positions) -> Tensor<B, 3>;
}

/// A normalisation layer of the host (RMSNorm for LLaMA).
pub trait TwigNorm<B: Backend>: Module<B> {
    /// # Shapes
    /// - `x`: `[N, T, D]` -> `[N, T, D]`
    fn forward_norm(&self, x: Tensor<B, 3>) -> Tensor<B, 3>;
}

/// Configuration of the scoring head.
#[derive(Config, Debug)]
pub struct RpnHeadConfig {
    /// Model width `D`.
    pub d_model: usize,
    /// Number of attention heads of the projections.
    pub num_heads: usize,
    /// Width of one head; `num_heads * head_dim` is the projection width.
    pub head_dim: usize,
    /// Whether the q/k projections have a bias (LLaMA: no).
    #[config(default = false)]
    pub bias: bool,
}

impl RpnHeadConfig {
    /// A head with freshly initialised projections.
    pub fn init<B: Backend>(&self, device: &B::Device) -> RpnHead<B> {
        let proj = || {
            LinearConfig::new(self.d_model, self.num_heads * self.head_dim)
                .with_bias(self.bias)
                .init(device)
        };
        RpnHead {
            q_proj: proj(),
            k_proj: proj(),
            num_heads: self.num_heads,
            num_kv_heads: self.num_heads,
            head_dim: self.head_dim,
            rotary: None,
        }
    }
}

/// RoPE applied to the head's queries and keys at their token positions.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadRotary {
    /// RoPE base.
    pub theta: f64,
    /// Multimodal sections (`None`: 1-D positions).
    pub sections: Option<Vec<usize>>,
}

/// Multi-head scaled dot product of the query token against the visual
/// tokens, averaged over heads. No RoPE, no softmax.
#[derive(Module, Debug)]
pub struct RpnHead<B: Backend> {
    /// Query projection (the last twig layer's `q_proj`).
    pub q_proj: Linear<B>,
    /// Key projection (the last twig layer's `k_proj`).
    pub k_proj: Linear<B>,
    /// Number of (query) heads.
    pub num_heads: usize,
    /// Number of key heads (`num_heads` unless grouped-query).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RoPE on q and k (`None`: none, as for LLaVA).
    #[module(skip)]
    pub rotary: Option<HeadRotary>,
}

impl<B: Backend> RpnHead<B> {
    /// Scores (logits) of the visual tokens.
    ///
    /// # Shapes
    /// - `query`: `[N, D]` normalised states of the query token
    /// - `visual`: `[N, P, D]` normalised states of the visual tokens
    /// - `positions`: rotary positions of the query (1 token per sample) and
    ///   of the visual tokens (`P` per sample), used when the head has RoPE
    /// - returns `[N, P]`
    pub fn forward(
        &self,
        query: Tensor<B, 2>,
        visual: Tensor<B, 3>,
        positions: Option<(&Positions, &Positions)>,
    ) -> Tensor<B, 2> {
        let [n, p, _] = visual.dims();
        let (h, hkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let device = visual.device();
        let mut q = self.q_proj.forward(query).reshape([n, 1, h, hd]);
        let mut k = self.k_proj.forward(visual).reshape([n, p, hkv, hd]);
        if let (Some(rot), Some((pq, pk))) = (&self.rotary, positions) {
            let sections = rot.sections.as_deref();
            q = Rope::new(hd, h, rot.theta, pq, sections, &device).apply(q);
            k = Rope::new(hd, hkv, rot.theta, pk, sections, &device).apply(k);
        }
        if hkv != h {
            k = k
                .reshape([n, p, hkv, 1, hd])
                .expand([n, p, hkv, h / hkv, hd])
                .reshape([n, p, h, hd]);
        }
        let q = q.swap_dims(1, 2);
        let k = k.permute([0, 2, 3, 1]);
        // [N, H, 1, P] -> mean over heads -> [N, P]
        let s = q.matmul(k).reshape([n, h, p]).mean_dim(1).reshape([n, p]);
        s.div_scalar((hd as f64).sqrt())
    }
}

/// The RPN: twig layers, twig norm, head norm and scoring head.
/// `L` and `N` are the host's decoder-layer and norm modules.
#[derive(Module, Debug)]
pub struct Rpn<B: Backend, L, N> {
    /// Whole twig layers (T-1 of them), initialised from base layers K..K+T-2.
    pub twig_layers: Vec<L>,
    /// Twig norm, initialised from the LM's final norm (`None` on hosts
    /// whose reference head skips it).
    pub twig_norm: Option<N>,
    /// The last twig layer's input norm.
    pub head_norm: N,
    /// The last twig layer's q/k projections.
    pub head: RpnHead<B>,
}

impl<B: Backend, L: TwigLayer<B>, N: TwigNorm<B>> Rpn<B, L, N> {
    /// Scores of the visual tokens for each sample.
    ///
    /// Sequences may be right-padded to a common length: attention is
    /// causal, so padding after the query token changes nothing.
    ///
    /// # Shapes
    /// - `hidden`: `[N, T, D]`, output of base layer K-1 (detach it when training)
    /// - `positions`: the rotary positions of those `T` tokens
    /// - `query_index`: `[N]` position of each sample's query token
    /// - `visual_index`: `[N, P]` positions of each sample's visual tokens
    /// - returns logits `[N, P]`
    pub fn forward(
        &self,
        hidden: Tensor<B, 3>,
        positions: &Positions,
        query_index: Tensor<B, 1, Int>,
        visual_index: Tensor<B, 2, Int>,
    ) -> Tensor<B, 2> {
        let [n, _, d] = hidden.dims();
        let [_, p] = visual_index.dims();
        let g = self
            .twig_layers
            .iter()
            .fold(hidden, |x, layer| layer.forward_twig(x, positions));
        let g = match &self.twig_norm {
            Some(norm) => norm.forward_norm(g),
            None => g,
        };
        let u = self.head_norm.forward_norm(g);
        let head_positions = self
            .head
            .rotary
            .as_ref()
            .map(|rot| head_positions(positions, &query_index, &visual_index, rot));
        let q_idx = query_index.reshape([n, 1, 1]).expand([n, 1, d]);
        let query = u.clone().gather(1, q_idx).reshape([n, d]);
        let v_idx = visual_index.reshape([n, p, 1]).expand([n, p, d]);
        let visual = u.gather(1, v_idx);
        self.head
            .forward(query, visual, head_positions.as_ref().map(|(q, k)| (q, k)))
    }

    /// Number of twig layers T (the whole ones plus the head's layer).
    pub fn twig_depth(&self) -> usize {
        self.twig_layers.len() + 1
    }
}

/// The rotary positions of each sample's query token and visual tokens,
/// picked from the prompt's `positions`.
fn head_positions<B: Backend>(
    positions: &Positions,
    query_index: &Tensor<B, 1, Int>,
    visual_index: &Tensor<B, 2, Int>,
    rot: &HeadRotary,
) -> (Positions, Positions) {
    let axes = rot.sections.as_ref().map_or(1, Vec::len);
    let ints = |data: burn::tensor::TensorData| -> Vec<usize> {
        data.convert::<i64>()
            .to_vec::<i64>()
            .expect("index tensors hold integers")
            .into_iter()
            .map(|x| x as usize)
            .collect()
    };
    let q = ints(query_index.clone().into_data());
    let [n, p] = visual_index.dims();
    let v = ints(visual_index.clone().into_data());
    // A batch shares one sequential run; `at` reads sample n of per-sample positions.
    let sample = |i: usize| match positions {
        Positions::Sequential { .. } => 0,
        _ => i,
    };
    let pick = |i: usize, tokens: &[usize]| -> Vec<Vec<i64>> {
        (0..axes)
            .map(|a| {
                tokens
                    .iter()
                    .map(|&t| positions.at(sample(i), t, axes)[a])
                    .collect()
            })
            .collect()
    };
    let query = (0..n).map(|i| pick(i, &q[i..i + 1])).collect();
    let visual = (0..n).map(|i| pick(i, &v[i * p..(i + 1) * p])).collect();
    (Positions::Axes(query), Positions::Axes(visual))
}

/// Checks a branch point `k` and twig depth `t` against a host with
/// `num_layers` decoder layers: twig layers are initialised from base layers
/// `k..k+t`, so `k >= 1`, `t >= 1` and `k + t <= num_layers`.
pub fn check_branch(k: usize, t: usize, num_layers: usize) -> crate::error::Result<()> {
    if k == 0 || t == 0 || k + t > num_layers {
        return Err(CoreError::config(
            "branch",
            format!(
                "branch layer K={k} with T={t} twig layers needs 1 <= K, 1 <= T and K+T <= {num_layers} (the model's layer count)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::{dev, TestBackend as B};
    use burn::module::Param;
    use burn::tensor::TensorData;

    fn linear(weight: Vec<f32>, d_in: usize, d_out: usize) -> Linear<B> {
        let mut l = LinearConfig::new(d_in, d_out)
            .with_bias(false)
            .init::<B>(&dev());
        l.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(weight, [d_in, d_out]),
            &dev(),
        ));
        l
    }

    #[test]
    fn head_is_mean_over_heads_of_scaled_dot_products() {
        // D = 2, two heads of width 1: head 0 reads x0, head 1 reads x1 (identity projections).
        let id = vec![1.0, 0.0, 0.0, 1.0];
        let head = RpnHead {
            q_proj: linear(id.clone(), 2, 2),
            k_proj: linear(id, 2, 2),
            num_heads: 2,
            num_kv_heads: 2,
            head_dim: 1,
            rotary: None,
        };
        let q = Tensor::<B, 2>::from_floats([[2.0, 4.0]], &dev());
        let v = Tensor::<B, 3>::from_floats([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], &dev());
        let s = head
            .forward(q, v, None)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        // (2*1 + 4*0)/2 = 1, (0 + 4)/2 = 2, (2 + 4)/2 = 3; sqrt(head_dim) = 1.
        assert_eq!(s, vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn head_scales_by_sqrt_head_dim() {
        // One head of width 4: s = <q, k> / 2.
        let mut id = vec![0.0; 16];
        for i in 0..4 {
            id[i * 4 + i] = 1.0;
        }
        let head = RpnHead {
            q_proj: linear(id.clone(), 4, 4),
            k_proj: linear(id, 4, 4),
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 4,
            rotary: None,
        };
        let q = Tensor::<B, 2>::from_floats([[1.0, 1.0, 1.0, 1.0]], &dev());
        let v = Tensor::<B, 3>::from_floats([[[1.0, 2.0, 3.0, 4.0]]], &dev());
        assert_eq!(
            head.forward(q, v, None)
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
            vec![5.0]
        );
    }

    fn random_linear(d_in: usize, d_out: usize, seed: u64) -> Linear<B> {
        let mut rng = crate::rng::SplitMix::new(seed);
        let w: Vec<f32> = (0..d_in * d_out).map(|_| rng.next_f32() - 0.5).collect();
        linear(w, d_in, d_out)
    }

    /// A grouped-query head (4 query heads, 2 key heads) equals the
    /// multi-head one whose key projection repeats each key head for the
    /// two query heads that share it.
    #[test]
    fn grouped_query_head_repeats_key_heads_like_the_host() {
        let (d, hd) = (6, 2);
        let gqa = RpnHead {
            q_proj: random_linear(d, 4 * hd, 1),
            k_proj: random_linear(d, 2 * hd, 2),
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: hd,
            rotary: None,
        };
        let k: Vec<f32> = gqa.k_proj.weight.val().into_data().to_vec().unwrap();
        // [d, 2 heads, hd] -> [d, 4 heads, hd]: key head j serves query heads 2j, 2j+1.
        let mut repeated = Vec::new();
        for row in k.chunks(2 * hd) {
            for j in 0..2 {
                for _ in 0..2 {
                    repeated.extend_from_slice(&row[j * hd..(j + 1) * hd]);
                }
            }
        }
        let mha = RpnHead {
            q_proj: gqa.q_proj.clone(),
            k_proj: linear(repeated, d, 4 * hd),
            num_kv_heads: 4,
            ..gqa.clone()
        };
        let mut rng = crate::rng::SplitMix::new(3);
        let mut vals = |n: usize| (0..n).map(|_| rng.next_f32()).collect::<Vec<f32>>();
        let q = Tensor::<B, 2>::from_data(TensorData::new(vals(2 * d), [2, d]), &dev());
        let v = Tensor::<B, 3>::from_data(TensorData::new(vals(2 * 5 * d), [2, 5, d]), &dev());
        let a: Vec<f32> = gqa
            .forward(q.clone(), v.clone(), None)
            .into_data()
            .to_vec()
            .unwrap();
        let b: Vec<f32> = mha.forward(q, v, None).into_data().to_vec().unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    /// With RoPE the score of a query at position a and a key at b depends
    /// only on a - b, and at a = b it equals the unrotated score.
    #[test]
    fn head_rope_scores_depend_on_relative_position() {
        let (d, hd) = (4, 4);
        let mut head = RpnHead {
            q_proj: random_linear(d, hd, 4),
            k_proj: random_linear(d, hd, 5),
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: hd,
            rotary: Some(HeadRotary {
                theta: 100.0,
                sections: None,
            }),
        };
        let q = Tensor::<B, 2>::from_floats([[0.3, -0.2, 0.5, 0.1]], &dev());
        let v = Tensor::<B, 3>::from_floats([[[0.1, 0.4, -0.3, 0.2]]], &dev());
        let score = |head: &RpnHead<B>, a: i64, b: i64| -> f32 {
            let pq = Positions::Axes(vec![vec![vec![a]]]);
            let pk = Positions::Axes(vec![vec![vec![b]]]);
            head.forward(q.clone(), v.clone(), Some((&pq, &pk)))
                .into_data()
                .to_vec::<f32>()
                .unwrap()[0]
        };
        assert!((score(&head, 7, 3) - score(&head, 14, 10)).abs() < 1e-5);
        assert!((score(&head, 7, 3) - score(&head, 3, 7)).abs() > 1e-4);
        let same = score(&head, 5, 5);
        head.rotary = None;
        assert!((same - score(&head, 0, 0)).abs() < 1e-5);
    }

    #[test]
    fn branch_limits() {
        assert!(check_branch(15, 3, 32).is_ok());
        assert!(check_branch(2, 2, 4).is_ok());
        assert!(check_branch(3, 2, 4).is_err());
        assert!(check_branch(0, 1, 4).is_err());
        assert!(check_branch(1, 0, 4).is_err());
    }
}
