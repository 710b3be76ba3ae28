//! Conversation templates.

use crate::error::{LlavaError, Result};
use crate::tokenizer::IMAGE_PLACEHOLDER;
use serde::{Deserialize, Serialize};

/// The system prompt of LLaVA's `vicuna_v1` template.
pub const VICUNA_SYSTEM: &str = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// How a question becomes a prompt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// `{system} USER: <image>\n{question} ASSISTANT:`
    #[default]
    VicunaV1,
    /// The prompt string exactly as given.
    Raw,
}

impl std::str::FromStr for Template {
    type Err = LlavaError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "vicuna_v1" => Ok(Template::VicunaV1),
            "raw" => Ok(Template::Raw),
            other => Err(LlavaError::invalid(
                "template",
                format!("{other:?} (expected vicuna_v1 or raw)"),
            )),
        }
    }
}

impl Template {
    /// The prompt for `text`. With `vicuna_v1`, `text` is the user's message;
    /// `<image>\n` is put in front unless it already holds a placeholder.
    pub fn render(self, text: &str) -> String {
        match self {
            Template::Raw => text.to_string(),
            Template::VicunaV1 => {
                let user = if text.contains(IMAGE_PLACEHOLDER) {
                    text.to_string()
                } else {
                    format!("{IMAGE_PLACEHOLDER}\n{text}")
                };
                format!("{VICUNA_SYSTEM} USER: {user} ASSISTANT:")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vicuna_prompt_is_llavas() {
        assert_eq!(
            Template::VicunaV1.render("What is this?"),
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhat is this? ASSISTANT:"
        );
        assert_eq!(Template::Raw.render("x <image>"), "x <image>");
    }
}
