//! The error type of `sdrpn-core`.

use thiserror::Error;

/// Everything that can go wrong in the method core. Messages name the input
/// that was wrong and how, so the CLI can show them as they are.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    /// A tensor or slice had the wrong size or shape.
    #[error("{what}: expected shape {expected}, got {got}")]
    Shape {
        /// Which input was wrong.
        what: String,
        /// The shape that was expected, in words.
        expected: String,
        /// The shape that was given.
        got: String,
    },
    /// A map contained NaN (or another non-finite value).
    #[error("{what} contains a non-finite value (NaN or infinity) at index {index}")]
    NonFinite {
        /// Which map.
        what: String,
        /// The first offending index.
        index: usize,
    },
    /// A head-selection string such as `"14:24,13,26;2:all"` did not parse.
    #[error("invalid head selection {spec:?}: {reason}")]
    HeadSelection {
        /// The string given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A layer or head index is outside the host model.
    #[error("{what} {index} is out of range (the model has {limit})")]
    OutOfRange {
        /// `"layer"` or `"head"`.
        what: String,
        /// The index asked for.
        index: usize,
        /// The count available.
        limit: usize,
    },
    /// A configuration value is invalid.
    #[error("invalid {name}: {reason}")]
    Config {
        /// The name of the setting.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A device could not be selected or started.
    #[error("{0}")]
    Device(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, CoreError>;

impl CoreError {
    /// Shorthand for [`CoreError::Shape`].
    pub fn shape(
        what: impl Into<String>,
        expected: impl Into<String>,
        got: impl std::fmt::Debug,
    ) -> Self {
        CoreError::Shape {
            what: what.into(),
            expected: expected.into(),
            got: format!("{got:?}"),
        }
    }

    /// Shorthand for [`CoreError::Config`].
    pub fn config(name: impl Into<String>, reason: impl Into<String>) -> Self {
        CoreError::Config {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

/// Fails with [`CoreError::NonFinite`] naming `what` at the first NaN or
/// infinite value of `values`.
pub fn ensure_finite(what: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(CoreError::NonFinite {
            what: what.to_string(),
            index,
        }),
        None => Ok(()),
    }
}
