//! Errors of the benchmark loaders.
//!
//! Only problems with a whole input are errors (a missing file or column, a
//! file that is not Parquet, an unreadable folder); a malformed row is never
//! fatal and lands in [`super::Loaded::skipped`] instead.

use std::path::PathBuf;

/// Why a benchmark could not be loaded (or an image decoded).
#[derive(Debug, thiserror::Error)]
pub enum BenchmarkError {
    /// A benchmark name that [`super::Benchmark`] does not know.
    #[error("unknown benchmark {0:?} (expected one of textvqa, docvqa, infovqa, chartqa, ocrbench, vstar, pope)")]
    UnknownBenchmark(String),

    /// A file or folder that cannot be read. (The cause is part of the
    /// message, not a `source`, so that error chains do not print it twice.)
    #[error("cannot read {}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    /// A file that the Parquet reader rejects when opening it.
    #[error("{} is not a readable Parquet file: {message}", path.display())]
    NotParquet { path: PathBuf, message: String },

    /// A folder without any `*.parquet` file under it.
    #[error("no *.parquet file under {}", path.display())]
    NoParquetFiles { path: PathBuf },

    /// A Parquet file without a column the benchmark needs.
    #[error(
        "{}: missing column `{expected}` for {benchmark} (columns found: {})",
        path.display(),
        found.join(", ")
    )]
    MissingColumn {
        path: PathBuf,
        benchmark: String,
        expected: String,
        found: Vec<String>,
    },

    /// Any other failure of the Parquet reader on a file.
    #[error("{}: {message}", path.display())]
    Parquet { path: PathBuf, message: String },

    /// An image that cannot be decoded (or whose file cannot be read).
    #[error("cannot decode image {what}: {message}")]
    Image { what: String, message: String },
}
