//! The error type of `sdrpn-qwen`.

use sdrpn_core::CoreError;
use sdrpn_llava::LlavaError;
use std::path::PathBuf;
use thiserror::Error;

/// What can go wrong loading or running Qwen2.5-VL. Every message names the
/// file, tensor or setting at fault.
#[derive(Debug, Error)]
pub enum QwenError {
    /// A JSON file (config, preprocessor or tokenizer config) is malformed
    /// or holds a value this model does not support.
    #[error("{path}: {reason}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The checkpoint's chat template could not be read or rendered.
    #[error("chat template of {path}: {reason}")]
    Template {
        /// The file holding it.
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
    /// Loading files, tensors, tokenizer or images (shared with LLaVA).
    #[error(transparent)]
    Host(#[from] LlavaError),
    /// An error of the method core.
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, QwenError>;

impl QwenError {
    /// Shorthand for [`QwenError::Invalid`].
    pub fn invalid(name: impl Into<String>, reason: impl Into<String>) -> Self {
        QwenError::Invalid {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`QwenError::Json`].
    pub fn json(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        QwenError::Json {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
