//! `sdrpn bench gemm`: the matrix products the models run, in GFLOP/s, next
//! to the best square product this host and backend reach (its measured
//! GEMM peak), so a slow host shows itself before any model benchmark.

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use clap::Args;
use sdrpn_core::backend::BackendJob;
use std::time::Instant;

/// Arguments of `sdrpn bench gemm`.
#[derive(Debug, Clone, Args)]
pub struct GemmArgs {
    /// Timed repetitions of each product after one warm-up (the median is reported)
    #[arg(long, default_value_t = 5)]
    iters: usize,
    #[command(flatten)]
    device: super::common::DeviceArgs,
}

/// One batched product `[batch, m, k] x [batch, k, n]`.
struct Shape {
    name: &'static str,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
}

impl Shape {
    fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.k * self.n) as f64
    }
}

/// The squares whose best rate is the host's measured peak.
const PEAK: [Shape; 2] = [
    Shape {
        name: "square 1024",
        batch: 1,
        m: 1024,
        k: 1024,
        n: 1024,
    },
    Shape {
        name: "square 2048",
        batch: 1,
        m: 2048,
        k: 2048,
        n: 2048,
    },
];

/// The products of `experiments/bench/mid150m.json` (LLaVA, 631-token
/// prompt, width 768, 12 heads of 64, MLP 2048) and of the Qwen vision
/// tower of `qwen-mid150m.json` (2304 patches, width 512, MLP 1368).
const MODEL: [Shape; 7] = [
    Shape {
        name: "LM q/k/v/o projection",
        batch: 1,
        m: 631,
        k: 768,
        n: 768,
    },
    Shape {
        name: "LM gate/up projection",
        batch: 1,
        m: 631,
        k: 768,
        n: 2048,
    },
    Shape {
        name: "LM down projection",
        batch: 1,
        m: 631,
        k: 2048,
        n: 768,
    },
    Shape {
        name: "LM attention q.k^T",
        batch: 12,
        m: 631,
        k: 64,
        n: 631,
    },
    Shape {
        name: "LM attention p.v",
        batch: 12,
        m: 631,
        k: 631,
        n: 64,
    },
    Shape {
        name: "Qwen vision MLP",
        batch: 1,
        m: 2304,
        k: 512,
        n: 1368,
    },
    Shape {
        name: "LM decode step (1 token)",
        batch: 1,
        m: 1,
        k: 768,
        n: 2048,
    },
];

impl BackendJob for GemmArgs {
    type Output = anyhow::Result<Vec<f64>>;
    /// Median seconds of each product of `PEAK` then `MODEL`.
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        B::seed(&device, 0);
        let iters = self.iters.max(1);
        PEAK.iter()
            .chain(&MODEL)
            .map(|s| {
                let a = Tensor::<B, 3>::random(
                    [s.batch, s.m, s.k],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                );
                let b = Tensor::<B, 3>::random(
                    [s.batch, s.k, s.n],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                );
                let mut times = Vec::with_capacity(iters);
                for i in 0..=iters {
                    B::sync(&device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    let start = Instant::now();
                    let c = a.clone().matmul(b.clone());
                    B::sync(&device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    let elapsed = start.elapsed().as_secs_f64();
                    drop(c);
                    if i > 0 {
                        times.push(elapsed);
                    }
                }
                times.sort_by(f64::total_cmp);
                Ok(times[times.len() / 2])
            })
            .collect()
    }
}

/// Runs `sdrpn bench gemm` and prints a table.
pub fn run(args: GemmArgs) -> anyhow::Result<()> {
    let device = args.device.clone();
    let iters = args.iters.max(1);
    let times = device.run(args)?;
    let rate = |s: &Shape, secs: f64| s.flops() / secs / 1e9;
    let peak = PEAK
        .iter()
        .zip(&times)
        .map(|(s, &t)| rate(s, t))
        .fold(0.0, f64::max);
    println!(
        "matrix products on {} ({}), {} threads, median of {iters}",
        device.device,
        device.dtype,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<26} {:>16} {:>10} {:>10} {:>8}",
        "product", "batch x m x k x n", "ms", "GFLOP/s", "of peak"
    );
    for (s, &secs) in PEAK.iter().chain(&MODEL).zip(&times) {
        let dims = format!("{}x{}x{}x{}", s.batch, s.m, s.k, s.n);
        println!(
            "{:<26} {:>16} {:>10.2} {:>10.1} {:>7.0}%",
            s.name,
            dims,
            secs * 1e3,
            rate(s, secs),
            100.0 * rate(s, secs) / peak
        );
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "measured peak (best square): {peak:.1} GFLOP/s = {:.1} per thread",
        peak / threads as f64
    );
    if let Some(cpu) = cpu_model() {
        println!("host: {cpu}");
    }
    Ok(())
}

/// The CPU's model name, family and model number (Linux `/proc/cpuinfo`):
/// hosts sold under one name differ in how many floating-point operations a
/// core finishes per cycle, which the per-thread peak above shows.
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let field = |key: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    Some(format!(
        "{} (cpu family {}, model {}, flags{}{})",
        field("model name")?,
        field("cpu family").unwrap_or_default(),
        field("model").unwrap_or_default(),
        if info.contains(" avx512f") {
            " avx512f"
        } else {
            ""
        },
        if info.contains(" avx2") { " avx2" } else { "" },
    ))
}
