//! The subcommands of `sdrpn`, one file each.

mod bench;
mod bench_batch;
mod bench_gemm;
mod bench_model;
mod bench_two_pass;
mod common;
mod config;
mod demo;
mod devices;
mod eval;
mod experiment;
mod generate;
mod import_labels;
mod import_rpn;
mod infer;
mod inspect;
mod label;
mod score;
mod testbed;
mod train;

use clap::{Parser, Subcommand};
use sdrpn_core::backend::DeviceSpec;

/// SD-RPN (self-distilled RoI predictors) on LLaVA-1.5, in Rust on Burn.
#[derive(Debug, Parser)]
#[command(name = "sdrpn", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole pipeline on a tiny random model in under two minutes (start here).
    Demo(demo::DemoArgs),
    /// List the compiled-in backends and check which devices can start.
    Devices(devices::DevicesArgs),
    /// Performance benchmarks (programs that print numbers).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Answer a question about an image with LLaVA (no RoI: the baseline).
    Generate(generate::GenerateArgs),
    /// Write every intermediate tensor of one prompt to a safetensors file.
    Inspect(inspect::InspectArgs),
    /// Stage A: pseudo-label maps from the frozen model's own attention.
    Label(label::LabelArgs),
    /// The authors' released pseudo-label pickle into a label folder (for `train`).
    ImportLabels(import_labels::ImportLabelsArgs),
    /// The RPN of the authors' released checkpoint into a run folder (for `infer`, `eval`).
    ImportRpn(import_rpn::ImportRpnArgs),
    /// Stage B: train the RPN on the labels (burn-train).
    Train(train::TrainArgs),
    /// Stage C: answer with the trained RPN (two passes: RoI, then crop).
    Infer(infer::InferArgs),
    /// Score predictions with a benchmark metric (exact to lmms-eval).
    Score(score::ScoreArgs),
    /// Evaluate on a benchmark (baseline or SD-RPN), resumable, scored.
    Eval(eval::EvalArgs),
    /// Run an experiment config: label, train, evaluate, results table.
    Experiment(experiment::ExperimentArgs),
    /// Print a method preset as TOML (a template for --config).
    Config(config::ConfigArgs),
    /// The fine-grained VQA testbed: a micro-LLaVA trained from scratch.
    #[command(subcommand)]
    Testbed(testbed::TestbedCommand),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Demo(a) => demo::run(a),
            Command::Devices(a) => devices::run(a),
            Command::Bench(b) => bench::run(b),
            Command::Generate(a) => generate::run(a),
            Command::Inspect(a) => inspect::run(a),
            Command::Label(a) => label::run(a),
            Command::ImportLabels(a) => import_labels::run(a),
            Command::ImportRpn(a) => import_rpn::run(a),
            Command::Train(a) => train::run(a),
            Command::Infer(a) => infer::run(a),
            Command::Score(a) => score::run(a),
            Command::Eval(a) => eval::run(a),
            Command::Experiment(a) => experiment::run(a),
            Command::Config(a) => config::run(a),
            Command::Testbed(c) => testbed::run(c),
        }
    }
}

/// Parses `--device` values (`cpu`, `cpu:flex`, `wgpu`, `cuda:1`, ...).
pub(crate) fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse::<DeviceSpec>().map_err(|e| e.to_string())
}
