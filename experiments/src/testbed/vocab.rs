//! The testbed model's tokenizer: a closed word-level vocabulary of every
//! word its prompts use (the vicuna_v1 system prompt, the benchmark
//! post-prompt, the questions), each digit its own token so codes are read
//! glyph by glyph. Built and saved with the `tokenizers` crate as a
//! `tokenizer.json` that HF's `PreTrainedTokenizerFast` loads as well.

use super::scene::{Shape, PALETTE};
use anyhow::Context;
use sdrpn_eval::benchmarks::mirrors::SHORT_ANSWER;
use sdrpn_llava::prompt::VICUNA_SYSTEM;
use std::path::Path;
use tokenizers::Tokenizer;

/// Special tokens, in id order from 0.
pub const SPECIALS: [&str; 5] = ["<unk>", "<s>", "</s>", "<pad>", "<image>"];
/// Id of `<image>`.
pub const IMAGE_TOKEN: u32 = 4;
/// Id of `<pad>`.
pub const PAD_TOKEN: u32 = 3;
/// The vocabulary is padded to a multiple of this (as llava-hf pads 32000 to 32064).
const VOCAB_MULTIPLE: usize = 64;

/// The pre-tokenizer's rule after splitting at white space: each digit and
/// each punctuation character is a token of its own; letter runs stay whole.
const SPLIT_PATTERN: &str = r"[0-9]|[^\sA-Za-z0-9]";

/// Splits `text` into pieces by the same rule as the saved tokenizer.
fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        let mut run = String::new();
        for c in word.chars() {
            if c.is_ascii_alphabetic() {
                run.push(c);
            } else {
                if !run.is_empty() {
                    out.push(std::mem::take(&mut run));
                }
                out.push(c.to_string());
            }
        }
        if !run.is_empty() {
            out.push(run);
        }
    }
    out
}

/// Every text the testbed's prompts are made of.
fn corpus() -> Vec<String> {
    let mut texts = vec![
        VICUNA_SYSTEM.to_string(),
        "USER: ASSISTANT:".to_string(),
        SHORT_ANSWER.to_string(),
        "What is written on the ?".to_string(),
        super::pretrain::shape_question(""),
        "0 1 2 3 4 5 6 7 8 9".to_string(),
    ];
    texts.extend(PALETTE.iter().map(|(name, _)| name.to_string()));
    texts.extend(Shape::ALL.iter().map(|s| s.name().to_string()));
    texts
}

/// The words of the vocabulary after the special tokens, sorted.
pub fn words() -> Vec<String> {
    let mut words: Vec<String> = corpus().iter().flat_map(|t| pieces(t)).collect();
    words.sort();
    words.dedup();
    words
}

/// Vocabulary size of the model (padded).
pub fn vocab_size() -> usize {
    (SPECIALS.len() + words().len()).div_ceil(VOCAB_MULTIPLE) * VOCAB_MULTIPLE
}

/// The tokenizer, built in memory.
pub fn build() -> anyhow::Result<Tokenizer> {
    let mut vocab = serde_json::Map::new();
    for (id, token) in SPECIALS
        .iter()
        .map(|s| s.to_string())
        .chain(words())
        .enumerate()
    {
        vocab.insert(token, id.into());
    }
    let added: Vec<serde_json::Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(id, content)| {
            serde_json::json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            })
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"},
            {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN}, "behavior": "Isolated", "invert": false}
        ]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    json.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| anyhow::anyhow!("the testbed tokenizer does not build: {e}"))
}

/// Writes `tokenizer.json`, `tokenizer_config.json` and
/// `special_tokens_map.json` into `dir` (HF loads them as a fast tokenizer).
pub fn save(dir: &Path) -> anyhow::Result<()> {
    let tokenizer = build()?;
    let path = dir.join("tokenizer.json");
    tokenizer
        .save(&path, true)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    let specials = serde_json::json!({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"
    });
    let mut config = specials.clone();
    config["tokenizer_class"] = "PreTrainedTokenizerFast".into();
    config["model_max_length"] = 1024.into();
    config["clean_up_tokenization_spaces"] = false.into();
    for (name, value) in [
        ("tokenizer_config.json", config),
        ("special_tokens_map.json", specials),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(&value)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_tokenise_without_unknown_words_and_codes_split_into_digits() {
        let t = build().unwrap();
        let prompt = format!(
            "{VICUNA_SYSTEM} USER: What is written on the purple triangle?{SHORT_ANSWER} ASSISTANT:"
        );
        let enc = t.encode(prompt.as_str(), true).unwrap();
        let ids = enc.get_ids();
        assert_eq!(ids[0], 1, "BOS first");
        assert!(!ids.contains(&0), "no <unk> in {:?}", enc.get_tokens());
        assert_eq!(enc.get_tokens().last().unwrap(), ":");
        let code = t.encode("47", false).unwrap();
        assert_eq!(code.get_tokens(), ["4", "7"]);
        assert_eq!(t.decode(code.get_ids(), true).unwrap(), "47");
        assert_eq!(t.token_to_id("<image>"), Some(IMAGE_TOKEN));
        assert_eq!(t.token_to_id("<pad>"), Some(PAD_TOKEN));
        assert!(vocab_size() >= SPECIALS.len() + words().len());
        assert_eq!(vocab_size() % 64, 0);
    }

    #[test]
    fn pieces_match_the_saved_rule() {
        assert_eq!(
            pieces("user's questions. USER: 4K?"),
            [
                "user",
                "'",
                "s",
                "questions",
                ".",
                "USER",
                ":",
                "4",
                "K",
                "?"
            ]
        );
    }
}
