//! Arguments and helpers shared by the model commands.

use anyhow::Context;
use clap::Args;
use sdrpn_core::backend::{
    run_on_devices, run_on_with, BackendJob, DeviceSpec, MultiDeviceJob, Precision,
};

/// Where to run.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// cpu, cpu:ndarray, cpu:flex, wgpu, wgpu:N, cuda, cuda:N
    #[arg(long, default_value = "cpu", value_parser = super::parse_device)]
    pub device: DeviceSpec,
    /// Float precision: f32 (CPU), f16 or bf16 (GPU backends that support them)
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    pub dtype: Precision,
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    s.parse::<Precision>().map_err(|e| e.to_string())
}

impl DeviceArgs {
    /// Runs a job that returns a result on the chosen device.
    pub fn run<T, J: BackendJob<Output = anyhow::Result<T>>>(&self, job: J) -> anyhow::Result<T> {
        run_on_with(&self.device, self.dtype, job)
            .with_context(|| format!("cannot start device {}", self.device))?
    }
}

/// Where to train: one device, or several of one backend.
#[derive(Debug, Clone, Args)]
pub struct TrainDeviceArgs {
    /// cpu, cpu:ndarray, cpu:flex, wgpu, wgpu:N, cuda, cuda:N; several,
    /// comma-separated (cuda:0,cuda:1,...; wgpu:0,wgpu:1,...): data-parallel
    /// training, each batch split evenly across them, the same result as one
    /// device with the same --batch
    #[arg(long = "device", default_value = "cpu", value_parser = super::parse_device, value_delimiter = ',')]
    pub devices: Vec<DeviceSpec>,
    /// Float precision: f32 (CPU), f16 or bf16 (GPU backends that support them)
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    pub dtype: Precision,
}

impl TrainDeviceArgs {
    /// One device.
    pub fn single(device: DeviceArgs) -> Self {
        Self {
            devices: vec![device.device],
            dtype: device.dtype,
        }
    }

    /// Runs a job that returns a result on the chosen devices.
    pub fn run<T, J: MultiDeviceJob<Output = anyhow::Result<T>>>(
        &self,
        job: J,
    ) -> anyhow::Result<T> {
        let names: Vec<String> = self.devices.iter().map(|d| d.to_string()).collect();
        run_on_devices(&self.devices, self.dtype, job)
            .with_context(|| format!("cannot start device {}", names.join(",")))?
    }
}

/// Which method settings to use: a preset or a TOML file, plus overrides.
#[derive(Debug, Clone, Default, Args)]
pub struct MethodArgs {
    /// Preset: llava-1.5-7b, llava-1.5-13b, qwen2.5-vl-7b, qwen2.5-vl-3b or tiny (default: chosen from the model's host and size)
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// Method config file (TOML; see `sdrpn config --preset NAME` for a template)
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Branch layer K of the RPN
    #[arg(long)]
    pub branch_layer: Option<usize>,
    /// Number of twig layers T
    #[arg(long)]
    pub twig_layers: Option<usize>,
    /// Grounding heads, e.g. "14:24,13,26" (layers separated by ';')
    #[arg(long)]
    pub grounding_heads: Option<String>,
    /// Sink heads, e.g. "2:all"
    #[arg(long)]
    pub sink_heads: Option<String>,
    /// RoI threshold t on the blurred RPN map
    #[arg(long)]
    pub threshold: Option<f64>,
}

impl MethodArgs {
    /// The overrides given.
    pub fn overrides(&self) -> sdrpn_train::config::Overrides {
        sdrpn_train::config::Overrides {
            branch_layer: self.branch_layer,
            twig_layers: self.twig_layers,
            grounding_heads: self.grounding_heads.clone(),
            sink_heads: self.sink_heads.clone(),
            threshold: self.threshold,
        }
    }

    /// The config: `--config`, else `--preset`, else `fallback`, with overrides applied.
    pub fn resolve(
        &self,
        fallback: impl FnOnce() -> anyhow::Result<sdrpn_train::SdrpnConfig>,
    ) -> anyhow::Result<sdrpn_train::SdrpnConfig> {
        let mut config = match (&self.config, &self.preset) {
            (Some(path), _) => sdrpn_train::SdrpnConfig::load(path)?,
            (None, Some(name)) => sdrpn_train::SdrpnConfig::preset(name)?,
            (None, None) => fallback()?,
        };
        config.apply(&self.overrides())?;
        Ok(config)
    }
}

/// ViCrop's settings on the command line (`--method vicrop-rel` or `vicrop-grad`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ViCropArgs {
    /// ViCrop's attention layer, 0-based (default: 14 of 32 as ViCrop's
    /// LLaVA-1.5-7B, 22 of 36, else the same share of the model's depth)
    #[arg(long)]
    pub vicrop_layer: Option<usize>,
    /// ViCrop's base box side in source pixels (default: the LLaVA model's
    /// vision input side, 336 for LLaVA-1.5; 224 for Qwen2.5-VL)
    #[arg(long)]
    pub vicrop_box: Option<f64>,
}

impl ViCropArgs {
    /// The settings for the checkpoint in `model`.
    pub fn spec(&self, model: &std::path::Path) -> anyhow::Result<crate::eval::ViCropSpec> {
        crate::eval::ViCropSpec::for_model(model, self.vicrop_layer, self.vicrop_box)
    }
}
