//! Arguments and helpers shared by the model commands.

use anyhow::Context;
use clap::Args;
use sdrpn_core::backend::{run_on_with, BackendJob, DeviceSpec, Precision};

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
