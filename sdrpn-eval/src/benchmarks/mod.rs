//! Benchmark data loaders: the lmms-eval Parquet mirrors and LLaVA-style
//! question files, turned into [`Sample`]s whose prompts and answers are
//! exactly what lmms-eval gives the model and the scorer (`docs/EVAL.md`).
//!
//! * [`Benchmark`]: the seven benchmarks, their metric, token budget, RPN
//!   threshold and mirror ([`benchmark`]).
//! * [`load`]: one Parquet file or a folder of them (a downloaded Hugging
//!   Face snapshot is narrowed to the right config and split, [`files`]);
//!   per-benchmark columns and prompt rules in [`mirrors`], V*'s option
//!   parsing in [`vstar`], the Python string semantics in [`crate::pytext`].
//! * [`load_llava_jsonl`]: `{"question_id","image","text","category"}` lines
//!   with an image folder and an optional answers file ([`llava`]).
//! * [`decode_image`]: any embedded or on-disk image to 8-bit RGB.
//!
//! Whole-input problems (missing column, not a Parquet file, unreadable
//! folder) are [`BenchmarkError`]s naming the file; a malformed row is never
//! fatal and is listed in [`Loaded::skipped`] with its index and reason.

pub mod benchmark;
pub mod error;
pub mod files;
pub mod llava;
pub mod loader;
pub mod mirrors;
pub mod sample;
mod table;
#[cfg(test)]
mod testutil;
use crate::pytext as text;
pub mod vstar;
pub mod writer;

pub use benchmark::Benchmark;
pub use error::BenchmarkError;
pub use llava::load_llava_jsonl;
pub use loader::load;
pub use sample::{decode_image, ImageSource, Loaded, Sample};
