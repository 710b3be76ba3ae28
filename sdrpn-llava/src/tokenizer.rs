//! The tokenizer (`tokenizer.json` through the `tokenizers` crate) and the
//! two ways of tokenising a prompt with an image.
//!
//! - `llava` (the original LLaVA repo's `tokenizer_image_token`): split the
//!   prompt at `<image>`, tokenise each chunk with BOS, keep only the first
//!   BOS (every chunk loses its first token when the first chunk starts
//!   with BOS), put the image in each gap.
//! - `hf` (the llava-hf processor's): `<image>` is a special token of the
//!   vocabulary; each one is expanded to the image's N token ids.
//!
//! Both give the full sequence with N copies of the image-token id per image.

use crate::error::{LlavaError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokenizers::Tokenizer;

/// The image placeholder in prompts.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// How a prompt with images is tokenised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tokenization {
    /// The original LLaVA repo's rule (default: what SD-RPN was built on).
    #[default]
    Llava,
    /// The llava-hf processor's rule.
    Hf,
}

impl std::str::FromStr for Tokenization {
    type Err = LlavaError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "llava" => Ok(Tokenization::Llava),
            "hf" => Ok(Tokenization::Hf),
            other => Err(LlavaError::invalid(
                "tokenization",
                format!("{other:?} (expected llava or hf)"),
            )),
        }
    }
}

/// Reads a `tokenizer.json`, telling a file that is not JSON from JSON of
/// another shape (a config, a vocabulary list) from a tokenizer the
/// `tokenizers` library cannot build.
pub fn read_tokenizer(path: &Path) -> Result<Tokenizer> {
    let fail = |why: String| LlavaError::Tokenizer(format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    let missing: Vec<&str> = ["model", "normalizer", "pre_tokenizer", "decoder"]
        .into_iter()
        .filter(|k| json.get(k).is_none())
        .collect();
    if !json.is_object() || json.get("model").is_none_or(|m| !m.is_object()) {
        return Err(fail(format!(
            "valid JSON, but not a `tokenizers` tokenizer.json (lacks {}): expected the file HF tokenizers saves (tokenizer.save), not tokenizer_config.json or a vocabulary",
            if missing.is_empty() { "a \"model\" object".to_string() } else { missing.join(", ") }
        )));
    }
    text.parse::<Tokenizer>().map_err(|e| {
        fail(format!(
            "not a tokenizer the `tokenizers` library can build: {e}"
        ))
    })
}

/// A LLaMA tokenizer with LLaVA's image token.
#[derive(Clone)]
pub struct LlavaTokenizer {
    inner: Tokenizer,
    bos: Option<u32>,
    eos: u32,
    image_token: u32,
}

impl LlavaTokenizer {
    /// Loads `tokenizer.json` from a checkpoint folder. `image_token` is the
    /// model's image-token id (from its config).
    pub fn from_dir(dir: &Path, image_token: u32) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(LlavaError::Tokenizer(format!(
                "{} does not exist",
                path.display()
            )));
        }
        let inner = read_tokenizer(&path)?;
        let eos = inner
            .token_to_id("</s>")
            .ok_or_else(|| LlavaError::Tokenizer(format!("{}: no </s> token", path.display())))?;
        Ok(Self {
            bos: inner.token_to_id("<s>"),
            eos,
            image_token,
            inner,
        })
    }

    /// The end-of-sequence id.
    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// The beginning-of-sequence id, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The image-token id.
    pub fn image_token(&self) -> u32 {
        self.image_token
    }

    /// Ids of `text` with the tokenizer's special tokens (BOS) added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| LlavaError::Tokenizer(format!("cannot encode {text:?}: {e}")))
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| LlavaError::Tokenizer(format!("cannot decode {ids:?}: {e}")))
    }

    /// Tokenises a prompt holding `<image>` placeholders; each image becomes
    /// `image_tokens` copies of the image-token id.
    pub fn encode_prompt(
        &self,
        prompt: &str,
        mode: Tokenization,
        image_tokens: usize,
    ) -> Result<Vec<u32>> {
        let ids = match mode {
            Tokenization::Llava => {
                let chunks: Vec<Vec<u32>> = prompt
                    .split(IMAGE_PLACEHOLDER)
                    .map(|c| self.encode(c))
                    .collect::<Result<_>>()?;
                let skip =
                    usize::from(self.bos.is_some() && chunks[0].first() == self.bos.as_ref());
                let mut ids = Vec::new();
                if skip == 1 {
                    ids.push(chunks[0][0]);
                }
                for (i, chunk) in chunks.iter().enumerate() {
                    if i > 0 {
                        ids.extend(std::iter::repeat_n(self.image_token, image_tokens));
                    }
                    ids.extend(chunk.iter().skip(skip));
                }
                ids
            }
            Tokenization::Hf => {
                let raw = self.encode(prompt)?;
                let mut ids = Vec::with_capacity(raw.len() + image_tokens);
                for id in raw {
                    if id == self.image_token {
                        ids.extend(std::iter::repeat_n(self.image_token, image_tokens));
                    } else {
                        ids.push(id);
                    }
                }
                let placeholders = prompt.matches(IMAGE_PLACEHOLDER).count();
                let images =
                    ids.iter().filter(|&&t| t == self.image_token).count() / image_tokens.max(1);
                if images != placeholders {
                    return Err(LlavaError::Tokenizer(format!(
                        "the tokenizer does not treat {IMAGE_PLACEHOLDER} as one special token (found {images} image tokens for {placeholders} placeholders); use --tokenization llava"
                    )));
                }
                ids
            }
        };
        Ok(ids)
    }
}
