//! The error type of `sdrpn-train`.

use sdrpn_core::CoreError;
use sdrpn_llava::LlavaError;
use std::path::PathBuf;
use thiserror::Error;

/// What can go wrong labelling or training. Messages name the file, record
/// or setting at fault.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file has the wrong format.
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A setting is invalid.
    #[error("invalid {name}: {reason}")]
    Config {
        /// The setting.
        name: String,
        /// Why.
        reason: String,
    },
    /// An error of the LLaVA host or the loaders it shares.
    #[error(transparent)]
    Llava(#[from] LlavaError),
    /// An error of any host model, described with its causes.
    #[error("{0}")]
    Host(String),
    /// An error of the method core.
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    /// A host model's error (any host's error type), with its causes.
    pub fn host(error: &dyn std::error::Error) -> Self {
        TrainError::Host(describe(error))
    }

    /// Shorthand for [`TrainError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`TrainError::Format`].
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        TrainError::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`TrainError::Config`].
    pub fn config(name: impl Into<String>, reason: impl Into<String>) -> Self {
        TrainError::Config {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

/// Writes `bytes` to `path` atomically (a temp file in the same folder, then rename).
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    // A name of this process and call: two writers of one file (shard
    // workers recording a shared provenance.json) never share a temp file.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}-{call}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// An error and all its sources, joined with ": " (for one-line reports).
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}
