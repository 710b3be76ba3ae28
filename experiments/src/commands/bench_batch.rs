//! `sdrpn bench batch`: samples per second of padded batches against one
//! sample at a time, on a random LLaVA model of a given config: the
//! baseline answer, SD-RPN's two passes (a random RPN), and labelling's
//! tapped generation (attention rows of two layers kept at every step).
//! Every batch holds questions of different lengths about one image.

use super::bench::median;
use super::bench_two_pass::RandomLlavaArgs;
use burn::tensor::backend::Backend;
use clap::Args;
use sdrpn_core::backend::BackendJob;
use sdrpn_core::host::{AnswerOptions, RpnHost};
use sdrpn_core::roi::RoiConfig;
use sdrpn_train::batch::{generate_batch, PaddedBatch};
use sdrpn_train::two_pass::{TwoPass, TwoPassOptions};
use sdrpn_train::two_pass_batch::{answer_baseline_batch, answer_batch_with_roi};
use std::time::Instant;

/// Arguments of `sdrpn bench batch`.
#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    #[command(flatten)]
    model: RandomLlavaArgs,
    /// Batch sizes to measure (1 runs each sample through the batch-1 path)
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    batch: Vec<usize>,
    /// Greedy answer tokens per sample
    #[arg(long, default_value_t = 8)]
    new_tokens: usize,
    /// Timed rounds after one warm-up round (medians are reported)
    #[arg(long, default_value_t = 2)]
    iters: usize,
    #[command(flatten)]
    device: super::common::DeviceArgs,
}

const CASES: [&str; 3] = ["baseline", "sdrpn (random RPN)", "label (taps, 2 layers)"];

/// Questions of different lengths (cycled).
const QUESTIONS: [&str; 4] = [
    "What is written on the small sign next to the door?",
    "How many windows?",
    "Which colour is the car parked in front of the building on the left side of the street?",
    "Is it day or night?",
];

/// Per batch size, per case: milliseconds per batch of each timed round.
type Timings = Vec<(usize, Vec<Vec<f64>>)>;

impl BackendJob for BatchArgs {
    type Output = anyhow::Result<Timings>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        if self.batch.contains(&0) {
            anyhow::bail!("--batch sizes must be at least 1");
        }
        let (session, rpn, branch, image) = self.model.build::<B>(&device)?;
        let answer = AnswerOptions {
            max_new_tokens: self.new_tokens,
            stop_strings: Vec::new(),
        };
        let options = TwoPassOptions {
            branch,
            roi: RoiConfig::default(),
            answer: answer.clone(),
            reuse_prefix_cache: true,
        };
        let layers = session.num_layers();
        let keep = [layers / 2, layers - 1];
        let mut out = Vec::new();
        for &b in &self.batch {
            let questions: Vec<(&image::RgbImage, &str)> = (0..b)
                .map(|i| (&image, QUESTIONS[i % QUESTIONS.len()]))
                .collect();
            let mut rounds = vec![Vec::new(); CASES.len()];
            for round in 0..=self.iters {
                for (case, times) in rounds.iter_mut().enumerate() {
                    let t = Instant::now();
                    match (case, b) {
                        (0, 1) => drop(session.answer_baseline(&image, questions[0].1, &answer)?),
                        (0, _) => drop(answer_baseline_batch(&session, &questions, &answer)?),
                        (1, 1) => {
                            drop(session.answer_with_roi(&rpn, &image, questions[0].1, &options)?)
                        }
                        (1, _) => {
                            drop(answer_batch_with_roi(&session, &rpn, &questions, &options)?)
                        }
                        _ => {
                            let prompts = questions
                                .iter()
                                .map(|(i, q)| session.prepare(i, q))
                                .collect::<Result<Vec<_>, _>>()?;
                            let refs: Vec<_> = prompts.iter().collect();
                            let batch = PaddedBatch::of_prompts(&refs)?;
                            generate_batch(&session, &batch, &answer, &keep, |_, _, _| Ok(()))?;
                        }
                    }
                    if round > 0 {
                        times.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
            }
            out.push((b, rounds));
        }
        Ok(out)
    }
}

pub fn run(args: BatchArgs) -> anyhow::Result<()> {
    let args = BatchArgs {
        iters: args.iters.max(1),
        ..args
    };
    let (device, iters, config) = (args.device.clone(), args.iters, args.model.config.clone());
    let timings = device.run(args)?;
    println!(
        "batched answering: {} (random weights) on {} ({}), {} threads, median of {iters} rounds",
        config.display(),
        device.device,
        device.dtype,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<24} {:>5} {:>10} {:>10} {:>8}",
        "case", "batch", "ms/batch", "samples/s", "vs B=1"
    );
    let rate = |b: usize, times: &[f64]| b as f64 * 1e3 / median(times.to_vec());
    for (case, name) in CASES.iter().enumerate() {
        let base = timings
            .iter()
            .find(|(b, _)| *b == 1)
            .map(|(_, r)| rate(1, &r[case]));
        for (b, rounds) in &timings {
            let r = rate(*b, &rounds[case]);
            let vs = base.map_or("-".into(), |one| format!("{:.2}x", r / one));
            println!(
                "{:<24} {:>5} {:>10.1} {:>10.3} {:>8}",
                name,
                b,
                median(rounds[case].clone()),
                r,
                vs
            );
        }
    }
    Ok(())
}
