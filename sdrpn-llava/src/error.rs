//! The error type of `sdrpn-llava`.

use sdrpn_core::CoreError;
use std::path::PathBuf;
use thiserror::Error;

/// What can go wrong loading or running the host model. Every message names
/// the file, tensor or setting at fault.
#[derive(Debug, Error)]
pub enum LlavaError {
    /// A file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A JSON file (config, index) is malformed or lacks a field.
    #[error("{path}: {reason}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A safetensors file could not be parsed or holds an unsupported dtype.
    #[error("{path}: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The checkpoint does not match the model: missing, unexpected or
    /// wrongly shaped tensors, all listed.
    #[error("checkpoint {dir} does not match the model:{}", format_problems(.missing, .unexpected, .wrong_shape))]
    Checkpoint {
        /// The checkpoint folder.
        dir: PathBuf,
        /// Tensors the model needs that the checkpoint lacks.
        missing: Vec<String>,
        /// Tensors the checkpoint holds that the model does not use.
        unexpected: Vec<String>,
        /// `name: expected [..], found [..]`.
        wrong_shape: Vec<String>,
    },
    /// The tokenizer could not be loaded or failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An image could not be read or is unusable.
    #[error("image {path}: {reason}")]
    Image {
        /// The image file (or a description of an in-memory image).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A setting or input is invalid.
    #[error("invalid {name}: {reason}")]
    Invalid {
        /// The setting or input.
        name: String,
        /// Why.
        reason: String,
    },
    /// An error of the method core.
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, LlavaError>;

impl LlavaError {
    /// Shorthand for [`LlavaError::Invalid`].
    pub fn invalid(name: impl Into<String>, reason: impl Into<String>) -> Self {
        LlavaError::Invalid {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`LlavaError::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LlavaError::Io {
            path: path.into(),
            source,
        }
    }
}

fn format_problems(missing: &[String], unexpected: &[String], wrong_shape: &[String]) -> String {
    let mut out = String::new();
    for (title, list) in [
        ("missing tensors", missing),
        ("unexpected tensors", unexpected),
        ("wrongly shaped tensors", wrong_shape),
    ] {
        if list.is_empty() {
            continue;
        }
        out.push_str(&format!("\n  {} {title}:", list.len()));
        for name in list.iter().take(50) {
            out.push_str(&format!("\n    {name}"));
        }
        if list.len() > 50 {
            out.push_str(&format!("\n    ... and {} more", list.len() - 50));
        }
    }
    out
}
