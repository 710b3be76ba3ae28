//! `sdrpn experiment CONFIG`: run an experiment config end to end.

use super::common::DeviceArgs;
use crate::experiment::{run_experiment, slug, ExperimentConfig};
use burn::tensor::backend::Backend;
use clap::Args;
use sdrpn_core::backend::BackendJob;
use std::path::PathBuf;

/// Arguments of `sdrpn experiment`.
#[derive(Debug, Clone, Args)]
pub struct ExperimentArgs {
    /// Experiment config (TOML), e.g. experiments/configs/main-table-7b.toml
    pub config: PathBuf,
    /// Output folder (default: experiments-out/<name>)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Samples per padded batch in labelling and evaluation (overrides the
    /// config's `batch`; results equal batch 1 up to float rounding)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: Option<u64>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

struct Job {
    config: ExperimentConfig,
    out: PathBuf,
}

impl BackendJob for Job {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        run_experiment::<B>(&self.config, &self.out, &device, &mut |line| {
            eprintln!("{line}")
        })?;
        Ok(())
    }
}

pub fn run(args: ExperimentArgs) -> anyhow::Result<()> {
    let mut config = ExperimentConfig::load(&args.config)?;
    if let Some(b) = args.batch {
        config.batch = b as usize;
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("experiments-out").join(slug(&config.name)));
    args.device.run(Job {
        config,
        out: out.clone(),
    })?;
    let table = std::fs::read_to_string(out.join("results.md"))?;
    println!("{table}");
    println!("(also {})", out.join("results.csv").display());
    Ok(())
}
