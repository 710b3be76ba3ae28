//! The CLIP ViT vision tower (pre-LN, quick_gelu, class token, learned
//! position embeddings), as HF `CLIPVisionModel` computes it.

use crate::config::{Activation, ClipVisionConfig};
use crate::nn::{activate, load_layer_norm, merge_heads, scaled_softmax_f32, split_heads};
use crate::weights::TensorLoader;
use burn::module::{Module, Param};
use burn::nn::{LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Multi-head self-attention without a mask.
#[derive(Module, Debug)]
pub struct ClipAttention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    out_proj: Linear<B>,
    num_heads: usize,
    head_dim: usize,
}

impl<B: Backend> ClipAttention<B> {
    /// # Shapes
    /// - `x`: `[N, S, D]` -> `[N, S, D]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let (h, hd) = (self.num_heads, self.head_dim);
        let q = split_heads(self.q_proj.forward(x.clone()), h, hd);
        let k = split_heads(self.k_proj.forward(x.clone()), h, hd);
        let v = split_heads(self.v_proj.forward(x), h, hd);
        let probs = scaled_softmax_f32(q.matmul(k.swap_dims(2, 3)), (hd as f64).powf(-0.5), None);
        self.out_proj.forward(merge_heads(probs.matmul(v)))
    }
}

/// One pre-LN encoder layer.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer<B: Backend> {
    layer_norm1: LayerNorm<B>,
    self_attn: ClipAttention<B>,
    layer_norm2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
    act: Activation,
}

impl<B: Backend> ClipEncoderLayer<B> {
    /// # Shapes
    /// - `x`: `[N, S, D]` -> `[N, S, D]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        let h = activate(
            self.fc1.forward(self.layer_norm2.forward(x.clone())),
            self.act,
        );
        x + self.fc2.forward(h)
    }
}

/// The vision tower. `post_layernorm` is loaded (it is part of the
/// checkpoint) but LLaVA never applies it.
#[derive(Module, Debug)]
pub struct ClipVisionTower<B: Backend> {
    patch_embedding: Linear<B>,
    class_embedding: Param<Tensor<B, 1>>,
    position_embedding: Param<Tensor<B, 2>>,
    pre_layrnorm: LayerNorm<B>,
    layers: Vec<ClipEncoderLayer<B>>,
    post_layernorm: LayerNorm<B>,
    image_size: usize,
    patch_size: usize,
}

impl<B: Backend> ClipVisionTower<B> {
    /// Loads the tower from `prefix` (`vision_tower.vision_model`).
    pub fn load(loader: &mut TensorLoader<B>, prefix: &str, cfg: &ClipVisionConfig) -> Self {
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        let eps = cfg.layer_norm_eps;
        let positions = cfg.num_patches() + 1;
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let lp = format!("{prefix}.encoder.layers.{i}");
                let lin = |l: &mut TensorLoader<B>, name: &str, a: usize, b: usize| {
                    l.linear(&format!("{lp}.{name}"), a, b, true)
                };
                ClipEncoderLayer {
                    layer_norm1: load_layer_norm(loader, &format!("{lp}.layer_norm1"), d, eps),
                    self_attn: ClipAttention {
                        q_proj: lin(loader, "self_attn.q_proj", d, d),
                        k_proj: lin(loader, "self_attn.k_proj", d, d),
                        v_proj: lin(loader, "self_attn.v_proj", d, d),
                        out_proj: lin(loader, "self_attn.out_proj", d, d),
                        num_heads: cfg.num_heads,
                        head_dim: d / cfg.num_heads,
                    },
                    layer_norm2: load_layer_norm(loader, &format!("{lp}.layer_norm2"), d, eps),
                    fc1: lin(loader, "mlp.fc1", d, cfg.intermediate_size),
                    fc2: lin(loader, "mlp.fc2", cfg.intermediate_size, d),
                    act: cfg.hidden_act,
                }
            })
            .collect();
        Self {
            patch_embedding: loader.linear_stored_as(
                &format!("{prefix}.embeddings.patch_embedding"),
                &[d, 3, p, p],
                3 * p * p,
                d,
                false,
            ),
            class_embedding: loader.param(&format!("{prefix}.embeddings.class_embedding"), [d]),
            position_embedding: loader.param(
                &format!("{prefix}.embeddings.position_embedding.weight"),
                [positions, d],
            ),
            pre_layrnorm: load_layer_norm(loader, &format!("{prefix}.pre_layrnorm"), d, eps),
            layers,
            post_layernorm: load_layer_norm(loader, &format!("{prefix}.post_layernorm"), d, eps),
            image_size: cfg.image_size,
            patch_size: p,
        }
    }

    /// Hidden state number `state` in HF numbering (0 = embeddings after
    /// pre-LN, i = output of encoder layer i); only layers up to it run.
    ///
    /// # Shapes
    /// - `pixels`: `[N, 3, S, S]` -> `[N, 1 + (S/p)^2, D]`
    pub fn hidden_state(&self, pixels: Tensor<B, 4>, state: usize) -> Tensor<B, 3> {
        let [n, c, s, _] = pixels.dims();
        let p = self.patch_size;
        let g = s / p;
        // Non-overlapping patches flattened in (channel, row, col) order, as the conv weight.
        let patches = pixels
            .reshape([n, c, g, p, g, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([n, g * g, c * p * p]);
        let embedded = self.patch_embedding.forward(patches);
        let d = embedded.dims()[2];
        let cls = self
            .class_embedding
            .val()
            .reshape([1, 1, d])
            .expand([n, 1, d]);
        let x =
            Tensor::cat(vec![cls, embedded], 1) + self.position_embedding.val().unsqueeze::<3>();
        let x = self.pre_layrnorm.forward(x);
        self.layers
            .iter()
            .take(state)
            .fold(x, |x, layer| layer.forward(x))
    }

    /// Input side in pixels.
    pub fn image_size(&self) -> usize {
        self.image_size
    }
}
