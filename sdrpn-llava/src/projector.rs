//! The multimodal projector: Linear + GELU + Linear.

use crate::config::{Activation, LlavaConfig};
use crate::nn::activate;
use crate::weights::TensorLoader;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Maps vision features to the language model's width.
#[derive(Module, Debug)]
pub struct Projector<B: Backend> {
    linear_1: Linear<B>,
    linear_2: Linear<B>,
    act: Activation,
}

impl<B: Backend> Projector<B> {
    /// Loads `multi_modal_projector.linear_{1,2}`.
    pub fn load(loader: &mut TensorLoader<B>, cfg: &LlavaConfig) -> Self {
        let (dv, d) = (cfg.vision.hidden_size, cfg.text.hidden_size);
        Self {
            linear_1: loader.linear("multi_modal_projector.linear_1", dv, d, cfg.projector_bias),
            linear_2: loader.linear("multi_modal_projector.linear_2", d, d, cfg.projector_bias),
            act: cfg.projector_act,
        }
    }

    /// # Shapes
    /// - `features`: `[N, P, Dv]` -> `[N, P, D]`
    pub fn forward(&self, features: Tensor<B, 3>) -> Tensor<B, 3> {
        self.linear_2
            .forward(activate(self.linear_1.forward(features), self.act))
    }
}
