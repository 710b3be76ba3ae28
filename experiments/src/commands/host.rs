//! Which host model a checkpoint folder holds, from its `config.json`
//! `model_type`: the commands pick the host with no flag.

use anyhow::{bail, Context};
use std::path::Path;

/// The host models this build can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// LLaVA-1.5 (`model_type` "llava").
    Llava,
    /// Qwen2.5-VL (`model_type` "qwen2_5_vl").
    Qwen,
}

impl HostKind {
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
