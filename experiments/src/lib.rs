//! # experiments: the `sdrpn` command line and everything around it
//!
//! Experiment configs and their runner ([`experiment`]), evaluation over a
//! host ([`eval`]), the testbed ([`testbed`]) and the subcommands of the
//! `sdrpn` binary ([`commands`]). Scorers and benchmark loaders live in the
//! Burn-free `sdrpn-eval` crate.

pub mod commands;
pub mod data_source;
pub mod eval;
pub mod eval_provenance;
pub mod experiment;
pub mod heatmap;
pub mod host;
pub mod progress;
pub mod synthetic;
pub mod testbed;
