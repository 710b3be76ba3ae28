//! # sdrpn-eval: scoring and benchmark loading without Burn
//!
//! Everything an evaluation needs that is not a model: the benchmark loaders
//! ([`benchmarks`]: the lmms-eval Parquet mirrors, LLaVA question files, the
//! Parquet writer the synthetic and testbed data use), the scorers with
//! lmms-eval's exact rules ([`scorers`], `docs/EVAL.md`), and the Python string
//! semantics both rely on ([`pytext`]). No Burn and no other sdrpn crate: it
//! builds and tests in seconds, so predictions can be scored without compiling
//! a backend (`cargo test -p sdrpn-eval`).

pub mod benchmarks;
pub mod pytext;
pub mod scorers;
