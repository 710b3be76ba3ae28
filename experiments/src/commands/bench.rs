//! `sdrpn bench ...`: benchmarks that print numbers.

use burn::nn::transformer::{TransformerEncoderConfig, TransformerEncoderInput};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use clap::{Args, Subcommand};
use sdrpn_core::backend::{run_on, BackendJob, CpuKind, DeviceSpec};
use std::time::Instant;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Forward pass of a small transformer on each CPU backend (ndarray vs flex).
    Backends(BackendsArgs),
    /// Vision, prefill and decode times of a random LLaVA or Qwen2.5-VL model of a given config,
    /// LLaVA's two-pass SD-RPN cost and peak memory.
    Model(super::bench_model::ModelArgs),
    /// GFLOP/s of the models' matrix products next to this host's measured GEMM peak.
    Gemm(super::bench_gemm::GemmArgs),
    /// SD-RPN's two-pass answer next to the baseline answer, per RoI mode, prefix reuse on and off.
    TwoPass(super::bench_two_pass::TwoPassArgs),
    /// Samples per second of padded batches (B = 1, 4, 8) for the baseline, SD-RPN and labelling.
    Batch(super::bench_batch::BatchArgs),
}

/// The median of `v` (the upper one of an even count).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Peak resident memory of this process (Linux), in MiB.
pub(super) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Arguments of `sdrpn bench backends`.
#[derive(Debug, Args)]
pub struct BackendsArgs {
    /// Model width.
    #[arg(long, default_value_t = 512)]
    d_model: usize,
    /// Number of encoder layers.
    #[arg(long, default_value_t = 6)]
    layers: usize,
    /// Number of heads.
    #[arg(long, default_value_t = 8)]
    heads: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Devices to compare (default: every CPU backend compiled in).
    #[arg(long = "device", value_parser = super::parse_device)]
    devices: Vec<DeviceSpec>,
}

/// Median forward time of the transformer, in seconds.
struct TransformerForward<'a>(&'a BackendsArgs);

impl BackendJob for TransformerForward<'_> {
    type Output = f64;
    fn run<B: Backend>(self, device: B::Device) -> f64 {
        let a = self.0;
        B::seed(&device, 0);
        let model = TransformerEncoderConfig::new(a.d_model, 4 * a.d_model, a.heads, a.layers)
            .with_dropout(0.0)
            .with_norm_first(true)
            .init::<B>(&device);
        let x = Tensor::<B, 3>::random(
            [1, a.seq, a.d_model],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let mut times = Vec::with_capacity(a.iters);
        for i in 0..=a.iters {
            let start = Instant::now();
            let y = model.forward(TransformerEncoderInput::new(x.clone()));
            // Read back to force lazy backends to finish.
            let _ = y.sum().into_data();
            if i > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    }
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Gemm(args) => super::bench_gemm::run(args),
        BenchCommand::TwoPass(args) => super::bench_two_pass::run(args),
        BenchCommand::Batch(args) => super::bench_batch::run(args),
        BenchCommand::Model(args) => super::bench_model::run(args),
        BenchCommand::Backends(args) => {
            let devices = if args.devices.is_empty() {
                let mut v = Vec::new();
                if cfg!(feature = "ndarray") {
                    v.push(DeviceSpec::Cpu(Some(CpuKind::NdArray)));
                }
                if cfg!(feature = "flex") {
                    v.push(DeviceSpec::Cpu(Some(CpuKind::Flex)));
                }
                v
            } else {
                args.devices.clone()
            };
            let flops = 2.0
                * args.layers as f64
                * args.seq as f64
                * (12.0 * (args.d_model * args.d_model) as f64
                    + 2.0 * (args.seq * args.d_model) as f64);
            println!(
                "transformer forward: {} layers, d_model {}, {} heads, seq {}, median of {} ({} threads available)",
                args.layers,
                args.d_model,
                args.heads,
                args.seq,
                args.iters,
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
            );
            for spec in devices {
                let secs = run_on(&spec, TransformerForward(&args))?;
                println!(
                    "{spec:<12} {:>9.2} ms  {:>7.1} GFLOP/s  {:>8.0} tokens/s",
                    secs * 1e3,
                    flops / secs / 1e9,
                    args.seq as f64 / secs
                );
            }
            Ok(())
        }
    }
}
