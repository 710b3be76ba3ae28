//! The benchmarks we evaluate on, with their generation settings and the
//! lmms-eval mirror each one is read from.

use std::fmt;
use std::str::FromStr;

use super::BenchmarkError;
use crate::scorers::Metric;

/// One evaluation benchmark (see `docs/EVAL.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Benchmark {
    /// TextVQA val (5000), `lmms-lab/textvqa`.
    TextVqa,
    /// DocVQA val, `lmms-lab/DocVQA` config `DocVQA`.
    DocVqa,
    /// InfographicVQA val, `lmms-lab/DocVQA` config `InfographicVQA`.
    InfoVqa,
    /// ChartQA test, `lmms-lab/ChartQA`.
    ChartQa,
    /// OCRBench (1000), `echo840/OCRBench`.
    OcrBench,
    /// V* Bench (191), `lmms-lab/vstar-bench`.
    VStar,
    /// POPE test, `lmms-lab/POPE`.
    Pope,
    /// HR-Bench 4K (800: 200 questions x 4 option rotations),
    /// `DreamMr/HR-Bench` (`hr_bench_4k.parquet`).
    HrBench4k,
    /// HR-Bench 8K (800), `DreamMr/HR-Bench` (`hr_bench_8k.parquet`).
    HrBench8k,
}

impl Benchmark {
    /// Every benchmark, in declaration order.
    pub const ALL: [Benchmark; 9] = [
        Benchmark::TextVqa,
        Benchmark::DocVqa,
        Benchmark::InfoVqa,
        Benchmark::ChartQa,
        Benchmark::OcrBench,
        Benchmark::VStar,
        Benchmark::Pope,
        Benchmark::HrBench4k,
        Benchmark::HrBench8k,
    ];

    /// The name accepted by [`FromStr`] and printed by [`fmt::Display`].
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::TextVqa => "textvqa",
            Benchmark::DocVqa => "docvqa",
            Benchmark::InfoVqa => "infovqa",
            Benchmark::ChartQa => "chartqa",
            Benchmark::OcrBench => "ocrbench",
            Benchmark::VStar => "vstar",
            Benchmark::Pope => "pope",
            Benchmark::HrBench4k => "hrbench4k",
            Benchmark::HrBench8k => "hrbench8k",
        }
    }

    /// The scoring rule.
    pub fn metric(self) -> Metric {
        match self {
            Benchmark::TextVqa => Metric::Vqa,
            Benchmark::DocVqa | Benchmark::InfoVqa => Metric::Anls,
            Benchmark::ChartQa => Metric::Relaxed,
            Benchmark::OcrBench => Metric::Ocrbench,
            Benchmark::VStar => Metric::Vstar,
            Benchmark::Pope => Metric::Pope,
            Benchmark::HrBench4k | Benchmark::HrBench8k => Metric::HrBench,
        }
    }

    /// Greedy generation budget (the `docs/EVAL.md` table). HR-Bench asks
    /// for an option letter like V*: lmms-eval leaves its budget at the
    /// wrapper's 1024, which only a model that never stops would use.
    pub fn max_new_tokens(self) -> usize {
        match self {
            Benchmark::TextVqa | Benchmark::DocVqa | Benchmark::InfoVqa => 32,
            Benchmark::ChartQa
            | Benchmark::VStar
            | Benchmark::Pope
            | Benchmark::HrBench4k
            | Benchmark::HrBench8k => 16,
            Benchmark::OcrBench => 128,
        }
    }

    /// The RPN box threshold for the 7B model (SPEC section 4; HR-Bench:
    /// 0.1, the reference's `examples/A6000/reproduce.sh`).
    pub fn default_threshold(self) -> f64 {
        match self {
            Benchmark::TextVqa | Benchmark::InfoVqa | Benchmark::ChartQa | Benchmark::Pope => 0.15,
            Benchmark::DocVqa | Benchmark::VStar | Benchmark::HrBench4k | Benchmark::HrBench8k => {
                0.10
            }
            Benchmark::OcrBench => 0.05,
        }
    }

    /// The Hugging Face dataset lmms-eval reads (`dataset_path`).
    pub fn hf_dataset(self) -> &'static str {
        match self {
            Benchmark::TextVqa => "lmms-lab/textvqa",
            Benchmark::DocVqa | Benchmark::InfoVqa => "lmms-lab/DocVQA",
            Benchmark::ChartQa => "lmms-lab/ChartQA",
            Benchmark::OcrBench => "echo840/OCRBench",
            Benchmark::VStar => "lmms-lab/vstar-bench",
            Benchmark::Pope => "lmms-lab/POPE",
            Benchmark::HrBench4k | Benchmark::HrBench8k => "DreamMr/HR-Bench",
        }
    }

    /// The dataset config (`dataset_name`), when not the default one. In a
    /// snapshot its files live in a folder of that name.
    pub fn hf_config(self) -> Option<&'static str> {
        match self {
            Benchmark::DocVqa => Some("DocVQA"),
            Benchmark::InfoVqa => Some("InfographicVQA"),
            Benchmark::HrBench4k | Benchmark::HrBench8k => Some("hrbench_version_split"),
            _ => None,
        }
    }

    /// The split evaluated (`test_split`).
    pub fn split(self) -> &'static str {
        match self {
            Benchmark::TextVqa | Benchmark::DocVqa | Benchmark::InfoVqa => "validation",
            Benchmark::ChartQa | Benchmark::OcrBench | Benchmark::VStar | Benchmark::Pope => "test",
            Benchmark::HrBench4k => "hrbench_4k",
            Benchmark::HrBench8k => "hrbench_8k",
        }
    }

    /// The file of the dataset's own release that holds the split, when the
    /// release is not laid out by split (HR-Bench: `hr_bench_4k.parquet`
    /// beside `hr_bench_8k.parquet`).
    pub fn release_file(self) -> Option<&'static str> {
        match self {
            Benchmark::HrBench4k => Some("hr_bench_4k.parquet"),
            Benchmark::HrBench8k => Some("hr_bench_8k.parquet"),
            _ => None,
        }
    }
}

impl fmt::Display for Benchmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Benchmark {
    type Err = BenchmarkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Benchmark::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| BenchmarkError::UnknownBenchmark(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for b in Benchmark::ALL {
            assert_eq!(b.to_string().parse::<Benchmark>().unwrap(), b);
        }
        let names: Vec<String> = Benchmark::ALL.iter().map(|b| b.to_string()).collect();
        assert_eq!(
            names,
            [
                "textvqa",
                "docvqa",
                "infovqa",
                "chartqa",
                "ocrbench",
                "vstar",
                "pope",
                "hrbench4k",
                "hrbench8k"
            ]
        );
        let err = "TextVQA".parse::<Benchmark>().unwrap_err();
        assert!(err.to_string().contains("\"TextVQA\""), "{err}");
    }

    #[test]
    fn settings_table() {
        type Row = (Benchmark, Metric, usize, f64, &'static str);
        let table: &[Row] = &[
            (Benchmark::TextVqa, Metric::Vqa, 32, 0.15, "validation"),
            (Benchmark::DocVqa, Metric::Anls, 32, 0.10, "validation"),
            (Benchmark::InfoVqa, Metric::Anls, 32, 0.15, "validation"),
            (Benchmark::ChartQa, Metric::Relaxed, 16, 0.15, "test"),
            (Benchmark::OcrBench, Metric::Ocrbench, 128, 0.05, "test"),
            (Benchmark::VStar, Metric::Vstar, 16, 0.10, "test"),
            (Benchmark::Pope, Metric::Pope, 16, 0.15, "test"),
            (
                Benchmark::HrBench4k,
                Metric::HrBench,
                16,
                0.10,
                "hrbench_4k",
            ),
            (
                Benchmark::HrBench8k,
                Metric::HrBench,
                16,
                0.10,
                "hrbench_8k",
            ),
        ];
        assert_eq!(table.len(), Benchmark::ALL.len());
        for &(b, metric, tokens, threshold, split) in table {
            assert_eq!(b.metric(), metric, "{b}");
            assert_eq!(b.max_new_tokens(), tokens, "{b}");
            assert_eq!(b.default_threshold(), threshold, "{b}");
            assert_eq!(b.split(), split, "{b}");
        }
    }
}
