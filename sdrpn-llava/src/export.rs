//! Writing a model's parameters back in the checkpoint layout they were
//! loaded from (names and PyTorch shapes), by parameter id.

use crate::error::{LlavaError, Result};
use crate::weights::{HostTensor, NamedParam, StoredLayout};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use std::collections::HashMap;

/// Values of one parameter: Burn shape and f32 values.
type Values = (Vec<usize>, Vec<f32>);

struct Collect(HashMap<ParamId, Values>);

impl<B: Backend> ModuleVisitor<B> for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        let values = tensor
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32 parameter values");
        self.0.insert(param.id, (shape, values));
    }
}

/// Every float parameter of `module`, by id.
pub fn param_values<B: Backend, M: Module<B>>(module: &M) -> HashMap<ParamId, Values> {
    let mut collect = Collect(HashMap::new());
    module.visit(&mut collect);
    collect.0
}

/// Puts `values` in checkpoint layout under `names`, in the order of
/// `names`. Every name must find its parameter; parameters without a name
/// (a tied LM head's copy, training-only heads around the model) are left
/// out.
pub fn to_checkpoint_layout(
    mut values: HashMap<ParamId, Values>,
    names: &[NamedParam],
) -> Result<Vec<HostTensor>> {
    let mut out = Vec::with_capacity(names.len());
    for named in names {
        let (shape, v) = values.remove(&named.id).ok_or_else(|| {
            LlavaError::invalid(
                "export",
                format!("parameter {} is not in the model", named.name),
            )
        })?;
        let tensor = match &named.layout {
            StoredLayout::AsIs => (named.name.clone(), shape, v),
            StoredLayout::Transposed { stored } => {
                let [d_in, d_out] = shape[..] else {
                    return Err(LlavaError::invalid(
                        "export",
                        format!("{} is not a matrix: {shape:?}", named.name),
                    ));
                };
                let mut t = vec![0.0f32; v.len()];
                for i in 0..d_in {
                    for o in 0..d_out {
                        t[o * d_in + i] = v[i * d_out + o];
                    }
                }
                (named.name.clone(), stored.clone(), t)
            }
        };
        out.push(tensor);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::config::LlavaConfig;
    use crate::model::Llava;
    use crate::weights::TensorLoader;
    use std::path::Path;

    type B = sdrpn_core::backend::CpuBackend;

    #[test]
    fn export_gives_back_every_tensor_in_checkpoint_layout() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llava");
        let config = LlavaConfig::from_dir(&dir).unwrap();
        let device = Default::default();
        let (model, names) = Llava::<B>::random_named(config.clone(), 5, &device).unwrap();
        let exported = model.export(&names).unwrap();
        // The same seed through a recording loader gives the values in the
        // checkpoint layout directly: names, PyTorch shapes (transposed
        // linears, the patch convolution) and values must all agree.
        let mut loader = TensorLoader::<B>::random(&device, 5)
            .scaled_by_fan_in()
            .recording();
        let _ = Llava::build_for_tests(&mut loader, config);
        let recorded = loader.take_recorded();
        assert_eq!(exported.len(), recorded.len());
        for (e, r) in exported.iter().zip(&recorded) {
            assert_eq!(e.0, r.0);
            assert_eq!(e.1, r.1, "{}", e.0);
            assert_eq!(e.2, r.2, "{}", e.0);
        }
        assert!(exported
            .iter()
            .any(|(n, s, _)| n.ends_with("patch_embedding.weight") && s.len() == 4));
    }
}
