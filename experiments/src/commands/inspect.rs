//! `sdrpn inspect`: write every intermediate tensor of one prompt to a
//! safetensors file (for debugging and parity checks).

use super::common::DeviceArgs;
use super::generate::PromptArgs;
use crate::host::HostKind;
use anyhow::Context;
use burn::tensor::backend::Backend;
use clap::Args;
use sdrpn_core::backend::BackendJob;
use sdrpn_llava::preprocess::load_rgb;
use sdrpn_llava::session::LlavaSession;
use sdrpn_qwen::QwenSession;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Arguments of `sdrpn inspect`.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// Checkpoint folder: llava-hf LLaVA-1.5 or HF Qwen2.5-VL (by config.json's model_type)
    #[arg(long)]
    model: PathBuf,
    /// Image file
    #[arg(long)]
    image: PathBuf,
    /// Prompt text (LLaVA: the user message for vicuna_v1, the whole prompt
    /// for raw; Qwen2.5-VL: the user message, put through the checkpoint's
    /// chat template with its default system prompt and the generation prompt)
    #[arg(long)]
    prompt: String,
    /// Greedy tokens to generate after the prompt
    #[arg(long, default_value_t = 8)]
    max_new_tokens: usize,
    /// Output safetensors file
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    prompt_args: PromptArgs,
    #[command(flatten)]
    device: DeviceArgs,
}

impl BackendJob for InspectArgs {
    type Output = anyhow::Result<usize>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let image = load_rgb(&self.image)?;
        let context = || format!("cannot load the model in {}", self.model.display());
        let mut meta: BTreeMap<String, String> = [
            ("prompt", self.prompt.clone()),
            ("image", self.image.display().to_string()),
            ("model", self.model.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let out = match HostKind::of(&self.model)? {
            HostKind::Llava => {
                let session =
                    LlavaSession::<B>::load(&self.model, &device, self.prompt_args.options())
                        .with_context(context)?;
                let p = &self.prompt_args;
                meta.insert("template".into(), format!("{:?}", p.template));
                meta.insert("tokenization".into(), format!("{:?}", p.tokenization));
                meta.insert("image_mode".into(), format!("{:?}", p.image_mode));
                session.inspect(&image, &self.prompt, self.max_new_tokens)?
            }
            HostKind::Qwen => {
                let session = QwenSession::<B>::load(&self.model, &device).with_context(context)?;
                let rendered = session.tokenizer.render(&self.prompt)?;
                meta.insert("rendered_prompt".into(), rendered);
                session.inspect(&image, &self.prompt, self.max_new_tokens)?
            }
        };
        out.save(&self.out, meta)?;
        Ok(out.tensors.len())
    }
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let out = args.out.clone();
    let device = args.device.clone();
    let n = device.run(args)?;
    println!("wrote {n} tensors to {}", out.display());
    Ok(())
}
