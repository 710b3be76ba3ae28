//! Reading tensors back to the host whatever the backend's storage dtype
//! (WGPU stores booleans as u32, GPU floats may be f16).

use crate::error::{CoreError, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

/// The values of a float tensor as `f32`, row-major.
pub fn floats<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| CoreError::config("tensor read-back", format!("{e:?}")))
}

/// The values of a bool tensor, row-major.
pub fn bools<B: Backend, const D: usize>(t: Tensor<B, D, Bool>) -> Result<Vec<bool>> {
    Ok(floats(t.float())?.into_iter().map(|v| v != 0.0).collect())
}
