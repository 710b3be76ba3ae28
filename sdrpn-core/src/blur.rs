//! The 3x3 Gaussian blur applied to the RoI map before thresholding (SPEC 4).

use crate::error::{CoreError, Result};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// The normalised 1-D Gaussian kernel of width 3: `exp(-x^2 / (2 sigma^2))`
/// at x = -1, 0, 1, divided by its sum. For sigma 1:
/// `[0.27407, 0.45186, 0.27407]`.
pub fn gaussian_kernel3(sigma: f64) -> [f32; 3] {
    let side = (-0.5 / (sigma * sigma)).exp();
    let total = 1.0 + 2.0 * side;
    [
        (side / total) as f32,
        (1.0 / total) as f32,
        (side / total) as f32,
    ]
}

/// Blurs each `R x C` map with a separable 3x3 Gaussian (rows, then
/// columns) with reflect padding (`x[-1] = x[1]`, `x[R] = x[R-2]`).
///
/// # Shapes
/// - `maps`: `[N, R, C]` with `R, C >= 2` -> `[N, R, C]`
pub fn gaussian_blur3<B: Backend>(maps: Tensor<B, 3>, sigma: f64) -> Result<Tensor<B, 3>> {
    let [_, r, c] = maps.dims();
    if r < 2 || c < 2 {
        return Err(CoreError::shape(
            "RoI map for blurring",
            "at least 2x2 (reflect padding needs a neighbour)",
            [r, c],
        ));
    }
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(CoreError::config(
            "blur sigma",
            format!("must be positive, got {sigma}"),
        ));
    }
    let k = gaussian_kernel3(sigma);
    Ok(blur_along(blur_along(maps, 1, k), 2, k))
}

/// Convolves along `dim` (1 or 2) with a 3-tap kernel and reflect padding.
fn blur_along<B: Backend>(x: Tensor<B, 3>, dim: usize, k: [f32; 3]) -> Tensor<B, 3> {
    let len = x.dims()[dim];
    let padded = Tensor::cat(
        vec![
            x.clone().narrow(dim, 1, 1),
            x.clone(),
            x.narrow(dim, len - 2, 1),
        ],
        dim,
    );
    padded.clone().narrow(dim, 0, len) * k[0]
        + padded.clone().narrow(dim, 1, len) * k[1]
        + padded.narrow(dim, 2, len) * k[2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::{dev, TestBackend as B};

    #[test]
    fn kernel_matches_the_spec() {
        let k = gaussian_kernel3(1.0);
        for (a, b) in k.iter().zip([0.27407f32, 0.45186, 0.27407]) {
            assert!((a - b).abs() < 1e-5);
        }
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn reflect_padding_lights_the_border_from_column_one() {
        // A single hot cell at (row 1, col 1) of a 3x3 map.
        let mut v = [0.0f32; 9];
        v[4] = 1.0;
        let x = Tensor::<B, 1>::from_floats(v, &dev()).reshape([1, 3, 3]);
        let out = gaussian_blur3(x, 1.0)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let [s, m, _] = gaussian_kernel3(1.0);
        // Columns 0 and 2 both see the hot column 1 twice (once through the
        // reflected pad), so their weight is 2s; column 1 gets m.
        let w = |d: usize| if d == 1 { m } else { 2.0 * s };
        for row in 0..3 {
            for col in 0..3 {
                let want = w(if row == 1 { 1 } else { 0 }) * w(if col == 1 { 1 } else { 0 });
                assert!(
                    (out[row * 3 + col] - want).abs() < 1e-6,
                    "({row},{col}) {} vs {want}",
                    out[row * 3 + col]
                );
            }
        }
    }

    #[test]
    fn constant_maps_stay_constant() {
        let x = Tensor::<B, 3>::ones([2, 4, 5], &dev()) * 0.3;
        let out = gaussian_blur3(x, 1.0)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(out.iter().all(|v| (v - 0.3).abs() < 1e-6));
    }

    #[test]
    fn rejects_maps_too_small_to_reflect() {
        assert!(gaussian_blur3(Tensor::<B, 3>::zeros([1, 1, 4], &dev()), 1.0).is_err());
    }
}
