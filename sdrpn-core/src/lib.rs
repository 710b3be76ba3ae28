//! # sdrpn-core: the SD-RPN method, host-agnostic
//!
//! Everything of the method that does not need a particular host model
//! (SPEC sections 2 to 4): attention aggregation, sink denoising,
//! pseudo-labels, the RPN scoring head and its losses, RoI box extraction
//! and crop geometry. It takes tensors and plain structs and returns tensors
//! and plain structs; a host model plugs in through [`host::RpnHost`].
//!
//! All tensor code is generic over `B: Backend`; [`backend`] is the only
//! module that names a concrete backend.

pub mod attention;
pub mod backend;
pub mod blur;
pub mod cache;
pub mod components;
pub mod crop;
pub mod denoise;
pub mod error;
pub mod fast_cpu;
pub mod greedy;
pub mod grid;
pub mod heads;
pub mod host;
pub mod labels;
pub mod loss;
pub mod positions;
pub mod promote;
pub mod readback;
pub mod rng;
pub mod roi;
pub mod rope;
pub mod rpn;
pub mod vicrop;

pub use error::{CoreError, Result};
pub use grid::Grid;
pub use heads::{HeadSelection, ResolvedHeads};
pub use positions::Positions;

#[cfg(test)]
pub(crate) mod test_backend {
    pub type TestBackend = crate::backend::CpuBackend;
    pub fn dev() -> burn::tensor::Device<TestBackend> {
        Default::default()
    }
}
