//! `sdrpn generate`: answer a question about an image (the plain baseline),
//! with the host the checkpoint's `config.json` names (LLaVA-1.5 or
//! Qwen2.5-VL).

use super::common::DeviceArgs;
use crate::host::HostKind;
use anyhow::Context;
use burn::tensor::backend::Backend;
use clap::Args;
use sdrpn_core::backend::BackendJob;
use sdrpn_llava::preprocess::{load_rgb, ImageMode};
use sdrpn_llava::prompt::Template;
use sdrpn_llava::session::{AnswerOptions, LlavaSession, PromptOptions};
use sdrpn_llava::tokenizer::Tokenization;
use sdrpn_qwen::QwenSession;
use std::path::PathBuf;

/// Arguments of `sdrpn generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Checkpoint folder (config.json, safetensors, tokenizer.json): llava-hf
    /// LLaVA-1.5 or HF Qwen2.5-VL, told apart by config.json's model_type
    #[arg(long)]
    pub model: PathBuf,
    /// Image file (png, jpeg, webp, ...)
    #[arg(long)]
    pub image: PathBuf,
    /// The question (for Qwen2.5-VL the user message, put through the
    /// checkpoint's chat template)
    #[arg(long)]
    pub question: String,
    /// Most new tokens
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Prompt construction flags (LLaVA only, except `--stop`: Qwen2.5-VL
/// prompts follow the checkpoint's chat template and image processor).
#[derive(Debug, Clone, Args)]
pub struct PromptArgs {
    /// Conversation template: vicuna_v1 or raw
    #[arg(long, default_value = "vicuna_v1")]
    pub template: Template,
    /// Tokenisation: llava (original repo) or hf (llava-hf processor)
    #[arg(long, default_value = "llava")]
    pub tokenization: Tokenization,
    /// Image preprocessing: pad (original LLaVA) or crop (HF processor)
    #[arg(long, default_value = "pad")]
    pub image_mode: ImageMode,
    /// Stop the answer at this string (repeatable)
    #[arg(long = "stop")]
    pub stop_strings: Vec<String>,
}

impl PromptArgs {
    /// The prompt options.
    pub fn options(&self) -> PromptOptions {
        PromptOptions {
            template: self.template,
            tokenization: self.tokenization,
            image_mode: self.image_mode,
        }
    }
}

impl BackendJob for GenerateArgs {
    type Output = anyhow::Result<String>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let image = load_rgb(&self.image)?;
        let options = AnswerOptions {
            max_new_tokens: self.max_new_tokens,
            stop_strings: self.prompt.stop_strings.clone(),
        };
        let context = || format!("cannot load the model in {}", self.model.display());
        match HostKind::of(&self.model)? {
            HostKind::Llava => {
                let session = LlavaSession::<B>::load(&self.model, &device, self.prompt.options())
                    .with_context(context)?;
                Ok(session.answer(&image, &self.question, &options)?)
            }
            HostKind::Qwen => {
                let session = QwenSession::<B>::load(&self.model, &device).with_context(context)?;
                Ok(session.answer(&image, &self.question, &options)?)
            }
        }
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let device = args.device.clone();
    let answer = device.run(args)?;
    println!("{answer}");
    Ok(())
}
