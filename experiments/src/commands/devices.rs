//! `sdrpn devices`: which backends this build has and which devices start.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use clap::Args;
use sdrpn_core::backend::{compiled_backends, run_on, BackendJob, DeviceSpec};

/// Arguments of `sdrpn devices`.
#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Also try these devices (e.g. `cuda:1`, `wgpu:0`); the compiled-in
    /// backends' default devices are always tried.
    #[arg(long = "device", value_parser = super::parse_device)]
    extra: Vec<DeviceSpec>,
}

struct Probe;

impl BackendJob for Probe {
    type Output = String;
    fn run<B: Backend>(self, device: B::Device) -> String {
        let t = Tensor::<B, 1>::from_floats([1.0, 2.0, 3.0], &device);
        let sum = t
            .sum()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default();
        format!("ok ({}, {device:?}, sum check {:?})", B::name(&device), sum)
    }
}

pub fn run(args: DevicesArgs) -> anyhow::Result<()> {
    println!("compiled-in backends: {}", compiled_backends().join(", "));
    let mut specs: Vec<DeviceSpec> = compiled_backends()
        .iter()
        .map(|name| name.parse().expect("backend names parse"))
        .collect();
    specs.extend(args.extra);
    for spec in specs {
        match run_on(&spec, Probe) {
            Ok(msg) => println!("{spec:<12} {msg}"),
            Err(e) => println!("{spec:<12} unavailable: {e}"),
        }
    }
    Ok(())
}
