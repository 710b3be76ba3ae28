//! `sdrpn inspect`: write every intermediate tensor of one prompt to a
//! safetensors file (for debugging and parity checks).

use super::common::DeviceArgs;
use super::generate::PromptArgs;
use anyhow::Context;
use burn::tensor::backend::Backend;
use clap::Args;
use sdrpn_core::backend::BackendJob;
use sdrpn_llava::preprocess::load_rgb;
use sdrpn_llava::session::LlavaSession;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Arguments of `sdrpn inspect`.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// llava-hf checkpoint folder
    #[arg(long)]
    model: PathBuf,
    /// Image file
    #[arg(long)]
    image: PathBuf,
    /// Prompt text (the user message for vicuna_v1, the whole prompt for raw)
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
        let session = LlavaSession::<B>::load(&self.model, &device, self.prompt_args.options())
            .with_context(|| format!("cannot load the model in {}", self.model.display()))?;
        let out = session.inspect(&image, &self.prompt, self.max_new_tokens)?;
        let meta: BTreeMap<String, String> = [
            ("prompt", self.prompt.clone()),
            ("template", format!("{:?}", self.prompt_args.template)),
            (
                "tokenization",
                format!("{:?}", self.prompt_args.tokenization),
            ),
            ("image_mode", format!("{:?}", self.prompt_args.image_mode)),
            ("image", self.image.display().to_string()),
            ("model", self.model.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
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
