//! # sdrpn-train: self-distillation of the RPN
//!
//! Stage A ([`label`]): pseudo-label maps from the frozen model's own
//! attention, stored in resumable shards ([`label_store`]). Stage B
//! ([`trainer`]): the RPN trained with burn-train on labels built on the fly
//! from those maps. Two-pass inference ([`two_pass`]) answers with the
//! trained RPN. All three are written once over the host trait
//! ([`sdrpn_core::host::RpnHost`]). The method's settings, presets and
//! overrides live in [`config`].

pub mod batch;
pub mod config;
pub mod error;
pub mod label;
pub mod label_store;
pub mod lock;
pub mod pickle;
pub mod provenance;
pub mod questions;
pub mod released_labels;
pub mod released_rpn;
pub mod render;

pub use config::SdrpnConfig;
pub use error::{Result, TrainError};
pub mod dataset;
pub mod step;
pub mod trainer;
pub mod two_pass;
pub mod two_pass_batch;
pub mod vicrop;

#[cfg(test)]
pub(crate) mod test_backend {
    pub type B = sdrpn_core::backend::CpuBackend;
}
