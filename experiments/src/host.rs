//! Which host model a checkpoint folder holds, from its `config.json`
//! `model_type`: the commands pick the host with no flag.

use anyhow::{bail, Context};
use burn::tensor::backend::Backend;
use sdrpn_llava::session::{LlavaSession, PromptOptions};
use sdrpn_qwen::QwenSession;
use sdrpn_train::trainer::TrainHost;
use std::path::Path;
use std::sync::Arc;

/// The host models this build can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// LLaVA-1.5 (`model_type` "llava").
    Llava,
    /// Qwen2.5-VL (`model_type` "qwen2_5_vl").
    Qwen,
}

impl HostKind {
    /// The method preset that fits the checkpoint in `dir`: its host and
    /// depth (LLaVA: 32 layers 7B, 40 13B; Qwen2.5-VL: 28 layers 7B, 36 3B;
    /// up to 8: tiny), by [`sdrpn_train::SdrpnConfig::preset_for_model`].
    pub fn preset(dir: &Path) -> anyhow::Result<sdrpn_train::SdrpnConfig> {
        let (model_type, layers) = match Self::of(dir)? {
            Self::Llava => (
                "llava",
                sdrpn_llava::LlavaConfig::from_dir(dir)?.text.num_layers,
            ),
            Self::Qwen => (
                "qwen2_5_vl",
                sdrpn_qwen::QwenConfig::from_dir(dir)?.text.num_layers,
            ),
        };
        Ok(sdrpn_train::SdrpnConfig::preset_for_model(
            model_type, layers,
        )?)
    }

    /// ViCrop's base box side in source pixels for the checkpoint in `dir`
    /// (its `bbox_size`, `run.py`:41-46): LLaVA's vision input side (336
    /// for LLaVA-1.5), 224 for Qwen2.5-VL (which has no fixed input side).
    pub fn vicrop_box(dir: &Path) -> anyhow::Result<f64> {
        Ok(match Self::of(dir)? {
            Self::Llava => sdrpn_llava::LlavaConfig::from_dir(dir)?.vision.image_size as f64,
            Self::Qwen => 224.0,
        })
    }

    /// The host of the checkpoint in `dir`.
    pub fn of(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (is --model a checkpoint folder?)",
                path.display()
            )
        })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        match json.get("model_type").and_then(|v| v.as_str()) {
            Some("llava") => Ok(Self::Llava),
            Some("qwen2_5_vl") => Ok(Self::Qwen),
            Some(other) => bail!(
                "{}: model_type {other:?} is not supported (llava for LLaVA-1.5, qwen2_5_vl for Qwen2.5-VL)",
                path.display()
            ),
            None => bail!(
                "{}: no \"model_type\" string; expected \"llava\" or \"qwen2_5_vl\"",
                path.display()
            ),
        }
    }
}

/// Work to do with a loaded host, whichever kind it is.
pub trait HostJob<B: Backend> {
    /// What the job returns.
    type Output;
    /// Runs the job on `host`.
    fn run<H: TrainHost<B>>(self, host: H) -> anyhow::Result<Self::Output>;
}

/// How Qwen2.5-VL prompts are sized: at each image's own resolution
/// (evaluation, inference), or padded to a square of this side (labelling
/// and training, as the reference does; LLaVA ignores it).
pub type QwenSquare = Option<u32>;

/// The side of the square the reference labels and trains Qwen2.5-VL on
/// (576 tokens: `make_pseudo_label_natural.py:58-71`).
pub const QWEN_LABEL_SIDE: u32 = 672;

/// Loads the host of the checkpoint in `model` (LLaVA with `prompt`,
/// Qwen2.5-VL with `qwen_square`) and runs `job` on it.
pub fn with_host<B: Backend, J: HostJob<B>>(
    model: &Path,
    device: &B::Device,
    prompt: PromptOptions,
    qwen_square: QwenSquare,
    job: J,
) -> anyhow::Result<J::Output> {
    match HostKind::of(model)? {
        HostKind::Llava => job.run(load_llava::<B>(model, device, prompt)?),
        HostKind::Qwen => {
            let session = load_qwen::<B>(model, device)?;
            match qwen_square {
                Some(side) => job.run(session.with_square(side)?),
                None => job.run(session),
            }
        }
    }
}

/// The host twice over one loaded model: as labels and training see it,
/// and as evaluation sees it (LLaVA: the same; Qwen2.5-VL: padded to a
/// square for labels and training, each image's own size for evaluation).
pub struct HostViews<H> {
    /// For labelling and training.
    pub train: Arc<H>,
    /// For evaluation and inference.
    pub eval: Arc<H>,
}

/// Work that needs both [`HostViews`] of a host, whichever kind it is.
pub trait HostViewsJob<B: Backend> {
    /// What the job returns.
    type Output;
    /// Runs the job on the views of one loaded host.
    fn run<H: TrainHost<B>>(self, views: HostViews<H>) -> anyhow::Result<Self::Output>;
}

/// Loads the host of the checkpoint in `model` once (LLaVA with `prompt`;
/// Qwen2.5-VL with training prompts on a `qwen_square` px square) and runs
/// `job` on its [`HostViews`].
pub fn with_host_views<B: Backend, J: HostViewsJob<B>>(
    model: &Path,
    device: &B::Device,
    prompt: PromptOptions,
    qwen_square: u32,
    job: J,
) -> anyhow::Result<J::Output> {
    match HostKind::of(model)? {
        HostKind::Llava => {
            let host = Arc::new(load_llava::<B>(model, device, prompt)?);
            job.run(HostViews {
                train: host.clone(),
                eval: host,
            })
        }
        HostKind::Qwen => {
            let eval = load_qwen::<B>(model, device)?;
            let train = eval.clone().with_square(qwen_square)?;
            job.run(HostViews {
                train: Arc::new(train),
                eval: Arc::new(eval),
            })
        }
    }
}

fn load_llava<B: Backend>(
    model: &Path,
    device: &B::Device,
    prompt: PromptOptions,
) -> anyhow::Result<LlavaSession<B>> {
    LlavaSession::<B>::load(model, device, prompt).with_context(|| load_context(model))
}

fn load_qwen<B: Backend>(model: &Path, device: &B::Device) -> anyhow::Result<QwenSession<B>> {
    QwenSession::<B>::load(model, device).with_context(|| load_context(model))
}

fn load_context(model: &Path) -> String {
    format!("cannot load the model in {}", model.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_comes_from_model_type() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        assert_eq!(
            HostKind::of(&root.join("sdrpn-llava/tests/fixtures/tiny-llava")).unwrap(),
            HostKind::Llava
        );
        assert_eq!(
            HostKind::of(&root.join("sdrpn-qwen/tests/fixtures/tiny-qwen-tied")).unwrap(),
            HostKind::Qwen
        );
        let e = HostKind::of(&root.join("no-such-dir"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json"), "{e}");
    }
}
