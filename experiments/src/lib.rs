//! # experiments: the `sdrpn` command line and everything around it
//!
//! Benchmark scorers ([`scorers`]), loaders, experiment configs and the
//! subcommands of the `sdrpn` binary ([`commands`]).

pub mod benchmarks;
pub mod commands;
pub mod eval;
pub mod eval_provenance;
pub mod experiment;
pub mod heatmap;
pub mod progress;
pub mod pytext;
pub mod scorers;
pub mod synthetic;
pub mod testbed;
