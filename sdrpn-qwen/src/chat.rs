//! The checkpoint's chat template and tokenizer: a user message with one
//! image rendered as HF's `apply_chat_template(messages,
//! add_generation_prompt=True)` renders it (Jinja with `trim_blocks` and
//! `lstrip_blocks`), the image placeholder expanded to the image's merged
//! tokens as the processor does, then tokenised with `tokenizer.json`.

use crate::error::{QwenError, Result};
use minijinja::{context, Environment};
use sdrpn_llava::tokenizer::read_tokenizer;
use sdrpn_llava::LlavaError;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// The text of the image placeholder token.
pub const IMAGE_PAD: &str = "<|image_pad|>";

/// Where a checkpoint keeps its chat template, in the order HF's processor
/// looks: `chat_template.jinja`, `chat_template.json`, then the tokenizer
/// config's `chat_template` (a string, or a list of named templates whose
/// `default` is taken).
fn find_template(dir: &Path) -> Result<(PathBuf, String)> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        let text = std::fs::read_to_string(&jinja).map_err(|e| LlavaError::io(&jinja, e))?;
        return Ok((jinja, text));
    }
    for name in ["chat_template.json", "tokenizer_config.json"] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| LlavaError::io(&path, e))?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| QwenError::json(&path, e.to_string()))?;
        match json.get("chat_template") {
            Some(Value::String(t)) => return Ok((path, t.clone())),
            Some(Value::Array(named)) => {
                let default = named.iter().find_map(|t| {
                    (t.get("name")?.as_str()? == "default")
                        .then(|| t.get("template")?.as_str().map(str::to_string))?
                });
                if let Some(t) = default {
                    return Ok((path, t));
                }
            }
            _ => {}
        }
    }
    Err(QwenError::Template {
        path: dir.to_path_buf(),
        reason: "no chat template (looked in chat_template.jinja, chat_template.json and tokenizer_config.json)".into(),
    })
}

/// The tokenizer and chat template of a Qwen2.5-VL checkpoint.
#[derive(Clone)]
pub struct QwenTokenizer {
    inner: Tokenizer,
    template: String,
    template_path: PathBuf,
    image_token: u32,
    eos: Vec<u32>,
}

impl QwenTokenizer {
    /// Loads `tokenizer.json` and the chat template from `dir`;
    /// `image_token` is the model's `<|image_pad|>` id (from its config).
    /// The end-of-answer ids are `generation_config.json`'s `eos_token_id`
    /// (HF's `generate` stops on them), else `<|im_end|>`.
    pub fn from_dir(dir: &Path, image_token: u32) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(LlavaError::Tokenizer(format!("{} does not exist", path.display())).into());
        }
        let inner = read_tokenizer(&path)?;
        match inner.id_to_token(image_token).as_deref() {
            Some(IMAGE_PAD) => {}
            other => {
                return Err(QwenError::invalid(
                    "image_token_id",
                    format!(
                    "config.json says {image_token}, which {} names {other:?}, not {IMAGE_PAD:?}",
                    path.display()
                ),
                ))
            }
        }
        let (template_path, template) = find_template(dir)?;
        let eos = Self::eos_ids(dir, &inner)?;
        let tokenizer = Self {
            inner,
            template,
            template_path,
            image_token,
            eos,
        };
        tokenizer.render("check")?;
        Ok(tokenizer)
    }

    fn eos_ids(dir: &Path, inner: &Tokenizer) -> Result<Vec<u32>> {
        let path = dir.join("generation_config.json");
        if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| LlavaError::io(&path, e))?;
            let json: Value =
                serde_json::from_str(&text).map_err(|e| QwenError::json(&path, e.to_string()))?;
            let ids: Vec<u32> = match json.get("eos_token_id") {
                Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_u64())
                    .map(|x| x as u32)
                    .collect(),
                _ => Vec::new(),
            };
            if !ids.is_empty() {
                return Ok(ids);
            }
        }
        inner
            .token_to_id("<|im_end|>")
            .map(|id| vec![id])
            .ok_or_else(|| {
                QwenError::invalid(
                    "tokenizer",
                    format!(
                        "{} has no <|im_end|> token and no generation_config.json names the end-of-answer ids",
                        dir.display()
                    ),
                )
            })
    }

    /// The ids that end an answer.
    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    /// The `<|image_pad|>` id.
    pub fn image_token(&self) -> u32 {
        self.image_token
    }

    /// The prompt text for a user `message` about one image: the chat
    /// template with its default system prompt and the generation prompt,
    /// with a single image placeholder.
    pub fn render(&self, message: &str) -> Result<String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        let fail = |e: minijinja::Error| QwenError::Template {
            path: self.template_path.clone(),
            reason: e.to_string(),
        };
        env.add_template("chat", &self.template).map_err(fail)?;
        let messages = serde_json::json!([{
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": message}],
        }]);
        let text = env
            .get_template("chat")
            .and_then(|t| {
                t.render(context! { messages => messages, add_generation_prompt => true })
            })
            .map_err(fail)?;
        if text.matches(IMAGE_PAD).count() != 1 {
            return Err(QwenError::Template {
                path: self.template_path.clone(),
                reason: format!(
                    "the rendered prompt holds {} image placeholders, not one: {text:?}",
                    text.matches(IMAGE_PAD).count()
                ),
            });
        }
        Ok(text)
    }

    /// Token ids of a rendered prompt, its image placeholder expanded to
    /// `image_tokens` copies (the processor's rule).
    pub fn encode_prompt(&self, prompt: &str, image_tokens: usize) -> Result<Vec<u32>> {
        let expanded = prompt.replace(IMAGE_PAD, &IMAGE_PAD.repeat(image_tokens));
        let ids = self
            .inner
            .encode(expanded.as_str(), true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| LlavaError::Tokenizer(format!("cannot encode {prompt:?}: {e}")))?;
        let found = ids.iter().filter(|&&t| t == self.image_token).count();
        if found != image_tokens {
            return Err(LlavaError::Tokenizer(format!(
                "the tokenizer gave {found} {IMAGE_PAD} ids for {image_tokens} placeholders: it does not treat {IMAGE_PAD} as one special token"
            ))
            .into());
        }
        Ok(ids)
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| LlavaError::Tokenizer(format!("cannot decode {ids:?}: {e}")).into())
    }
}
