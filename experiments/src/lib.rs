//! # experiments: the `sdrpn` command line and everything around it
//!
//! Benchmark scorers ([`scorers`]), loaders, experiment configs and the
//! subcommands of the `sdrpn` binary ([`commands`]).

pub mod commands;
pub mod heatmap;
pub mod progress;
pub mod scorers;
