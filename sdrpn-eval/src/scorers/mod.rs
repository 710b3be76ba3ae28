//! Benchmark scorers, exact to lmms-eval's per-sample scores.
//!
//! Each submodule ports one lmms-eval scoring rule (quirks included, see
//! `docs/EVAL.md`) as pure functions over strings:
//!
//! | metric | benchmarks | module |
//! |---|---|---|
//! | `vqa` | TextVQA | [`vqa`] |
//! | `anls` | DocVQA, InfoVQA | [`anls`] |
//! | `relaxed` | ChartQA | [`relaxed`] |
//! | `ocrbench` | OCRBench | [`ocrbench`] |
//! | `vstar` | V* Bench | [`vstar`] |
//! | `pope` | POPE | [`pope`] |
//! | `hrbench` | HR-Bench 4K, 8K | [`hrbench`] |
//!
//! [`score_sample`] scores one prediction (stripped first, as the harness
//! does) and [`aggregate`] turns per-sample records into the headline
//! number (x100), with a per-category breakdown when records carry a
//! category.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

pub mod anls;
pub mod hrbench;
pub mod ocrbench;
pub mod pope;
use crate::pytext;
pub mod relaxed;
pub mod vqa;
pub mod vstar;

/// A scoring rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// TextVQA VQA accuracy.
    Vqa,
    /// DocVQA / InfoVQA ANLS.
    Anls,
    /// ChartQA relaxed accuracy.
    Relaxed,
    /// OCRBench substring match.
    Ocrbench,
    /// V* letter accuracy.
    Vstar,
    /// POPE yes/no (accuracy, precision, recall, F1).
    Pope,
    /// HR-Bench option letter accuracy, averaged over option rotations.
    HrBench,
}

impl Metric {
    /// Every metric, in declaration order.
    pub const ALL: [Metric; 7] = [
        Metric::Vqa,
        Metric::Anls,
        Metric::Relaxed,
        Metric::Ocrbench,
        Metric::Vstar,
        Metric::Pope,
        Metric::HrBench,
    ];

    /// The name accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            Metric::Vqa => "vqa",
            Metric::Anls => "anls",
            Metric::Relaxed => "relaxed",
            Metric::Ocrbench => "ocrbench",
            Metric::Vstar => "vstar",
            Metric::Pope => "pope",
            Metric::HrBench => "hrbench",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown metric name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownMetric(pub String);

impl fmt::Display for UnknownMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown metric {:?} (expected one of vqa, anls, relaxed, ocrbench, vstar, pope, hrbench)",
            self.0
        )
    }
}

impl std::error::Error for UnknownMetric {}

impl FromStr for Metric {
    type Err = UnknownMetric;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownMetric(s.to_owned()))
    }
}

/// The score of one prediction, in 0..=1 (POPE: its accuracy, 0 or 1).
///
/// `prediction` is stripped of surrounding (Python) whitespace first, as the
/// harness does. `answers` are the ground truths: all human answers for
/// VQA, all accepted answers for ANLS and OCRBench, the single target for
/// ChartQA (any of several counts), the label letter for V*, and "yes"/"no"
/// for POPE (V* and POPE use the first answer), the answer letter followed
/// by the option texts for HR-Bench. `dataset` is the OCRBench source
/// dataset (`"HME100k"` switches rules) and is ignored elsewhere.
pub fn score_sample(
    metric: Metric,
    prediction: &str,
    answers: &[String],
    dataset: Option<&str>,
) -> f64 {
    let pred = pytext::strip(prediction);
    match metric {
        Metric::Vqa => vqa::vqa_accuracy(pred, answers),
        Metric::Anls => anls::anls(pred, answers),
        Metric::Relaxed => relaxed::relaxed_accuracy(pred, answers),
        Metric::Ocrbench => ocrbench::ocrbench_score(pred, answers, dataset),
        Metric::Vstar => vstar::vstar_score(pred, answers),
        Metric::Pope => pope::pope_score(pred, answers),
        Metric::HrBench => hrbench::hrbench_score(pred, answers),
    }
}

/// One scored question: the model output and what it is scored against.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleRecord {
    pub prediction: String,
    pub answers: Vec<String>,
    /// OCRBench source dataset (e.g. `"HME100k"`); HR-Bench: the row's
    /// option rotation (`cycle_category`), which the average runs over.
    pub dataset: Option<String>,
    /// Breakdown key (V*: `direct_attributes` / `relative_position`; POPE:
    /// `adversarial` / `popular` / `random`; OCRBench: question type; ...).
    pub category: Option<String>,
}

impl SampleRecord {
    /// This record's [`score_sample`].
    pub fn score(&self, metric: Metric) -> f64 {
        score_sample(
            metric,
            &self.prediction,
            &self.answers,
            self.dataset.as_deref(),
        )
    }
}

/// Aggregated scores of a set of records.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub metric: Metric,
    /// Number of records.
    pub n: usize,
    /// The headline number, x100: the mean per-sample score for vqa, anls,
    /// relaxed and vstar (V*: the micro average); for hrbench the mean over
    /// option rotations of each rotation's mean; matches / n for OCRBench
    /// (the published "score out of 1000" is [`Summary::score_sum`] when
    /// n = 1000); F1 for POPE. 0 when there are no records.
    pub headline: f64,
    /// The sum of per-sample scores (OCRBench: the raw match count; V*,
    /// ChartQA: the number correct).
    pub score_sum: f64,
    /// POPE accuracy/precision/recall/F1 (POPE only).
    pub pope: Option<pope::PopeStats>,
    /// The same summary per category, for records that have one (empty
    /// inside a category summary).
    pub categories: BTreeMap<String, Summary>,
}

fn summarize(metric: Metric, records: &[&SampleRecord]) -> Summary {
    let n = records.len();
    let score_sum: f64 = records.iter().map(|r| r.score(metric)).sum();
    let mean_x100 = if n == 0 {
        0.0
    } else {
        score_sum / n as f64 * 100.0
    };
    let mean_x100 = if metric == Metric::HrBench {
        hrbench::rotation_mean(
            records
                .iter()
                .map(|r| (r.dataset.as_deref().unwrap_or(""), r.score(metric))),
        ) * 100.0
    } else {
        mean_x100
    };
    let pope = (metric == Metric::Pope).then(|| {
        pope::pope_stats(records.iter().map(|r| {
            let gt = r.answers.first().map_or("", String::as_str);
            (pytext::strip(&r.prediction), gt)
        }))
    });
    let headline = match &pope {
        Some(stats) => stats.f1 * 100.0,
        None => mean_x100,
    };
    Summary {
        metric,
        n,
        headline,
        score_sum,
        pope,
        categories: BTreeMap::new(),
    }
}

/// Score every record and aggregate (see [`Summary`]).
pub fn aggregate(metric: Metric, samples: &[SampleRecord]) -> Summary {
    let all: Vec<&SampleRecord> = samples.iter().collect();
    let mut summary = summarize(metric, &all);
    let mut groups: BTreeMap<&str, Vec<&SampleRecord>> = BTreeMap::new();
    for record in samples {
        if let Some(category) = &record.category {
            groups.entry(category).or_default().push(record);
        }
    }
    summary.categories = groups
        .into_iter()
        .map(|(name, records)| (name.to_owned(), summarize(metric, &records)))
        .collect();
    summary
}

impl fmt::Display for Summary {
    /// One line, e.g. `ocrbench 31.20 (312/1000)` or
    /// `pope F1 85.90 acc 86.97 prec 91.20 rec 81.13 yes 44.70% other 3 (n=9000)`,
    /// then one indented line per category.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.pope, self.metric) {
            (Some(p), _) => write!(
                f,
                "{} F1 {:.2} acc {:.2} prec {:.2} rec {:.2} yes {:.2}% other {} (n={})",
                self.metric,
                p.f1 * 100.0,
                p.accuracy * 100.0,
                p.precision * 100.0,
                p.recall * 100.0,
                p.pred_yes_ratio * 100.0,
                p.other,
                self.n
            )?,
            (None, Metric::Ocrbench | Metric::Vstar | Metric::Relaxed | Metric::HrBench) => write!(
                f,
                "{} {:.2} ({}/{})",
                self.metric, self.headline, self.score_sum, self.n
            )?,
            (None, _) => write!(f, "{} {:.2} (n={})", self.metric, self.headline, self.n)?,
        }
        for (name, summary) in &self.categories {
            write!(f, "\n  [{name}] {summary}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pred: &str, answers: &[&str], category: Option<&str>) -> SampleRecord {
        SampleRecord {
            prediction: pred.to_owned(),
            answers: answers.iter().map(|s| s.to_string()).collect(),
            dataset: None,
            category: category.map(str::to_owned),
        }
    }

    #[test]
    fn metric_names_round_trip() {
        for m in Metric::ALL {
            assert_eq!(m.name().parse::<Metric>(), Ok(m));
            assert_eq!(m.to_string(), m.name());
        }
        for bad in ["VQA", "", "textvqa", "anls ", "f1"] {
            assert_eq!(bad.parse::<Metric>(), Err(UnknownMetric(bad.to_owned())));
        }
    }

    #[test]
    fn score_sample_strips_and_dispatches() {
        let s = |m: Metric, pred: &str, answers: &[&str], dataset: Option<&str>| {
            let answers: Vec<String> = answers.iter().map(|s| s.to_string()).collect();
            score_sample(m, pred, &answers, dataset)
        };
        type Case<'a> = (Metric, &'a str, &'a [&'a str], Option<&'a str>, f64);
        let cases: &[Case] = &[
            (Metric::Vqa, " Yes \n", &["yes"; 10], None, 1.0),
            (Metric::Anls, "\tParis ", &["paris"], None, 1.0),
            // ANLS uses the stripped prediction's raw length: 1 - 1/5.
            (Metric::Anls, "  Pari  ", &["paris"], None, 0.8),
            // The relaxed string fallback does not strip the target, but the
            // prediction is stripped by the harness.
            (Metric::Relaxed, " Yes ", &["yes"], None, 1.0),
            (Metric::Relaxed, "104", &["100"], None, 1.0),
            (Metric::Ocrbench, "x ^ 2", &["x^2"], Some("HME100k"), 1.0),
            (Metric::Ocrbench, "x ^ 2", &["x^2"], None, 0.0),
            (Metric::Vstar, "\n(B)", &["B"], None, 1.0),
            (Metric::Pope, " Yes\n", &["yes"], None, 1.0),
            (Metric::Pope, "Yes.", &["yes"], None, 0.0),
        ];
        for &(m, pred, answers, dataset, want) in cases {
            assert_eq!(s(m, pred, answers, dataset), want, "{m} {pred:?}");
        }
    }

    #[test]
    fn aggregate_vstar_micro_average_and_categories() {
        let mut samples = Vec::new();
        for i in 0..4 {
            let pred = if i < 3 { "A" } else { "B" };
            samples.push(rec(pred, &["A"], Some("direct_attributes")));
        }
        for i in 0..2 {
            let pred = if i < 1 { "C" } else { "D" };
            samples.push(rec(pred, &["C"], Some("relative_position")));
        }
        let s = aggregate(Metric::Vstar, &samples);
        assert_eq!((s.n, s.score_sum), (6, 4.0));
        assert_eq!(s.headline, 4.0 / 6.0 * 100.0);
        assert_eq!(s.categories["direct_attributes"].headline, 75.0);
        assert_eq!(s.categories["relative_position"].headline, 50.0);
        assert_eq!(s.categories.len(), 2);
        assert!(s.categories.values().all(|c| c.categories.is_empty()));
        let shown = s.to_string();
        assert!(shown.starts_with("vstar 66.67 (4/6)"), "{shown}");
        assert!(
            shown.contains("[relative_position] vstar 50.00 (1/2)"),
            "{shown}"
        );
    }

    #[test]
    fn aggregate_ocrbench_counts_matches() {
        let samples: Vec<SampleRecord> = (0..8)
            .map(|i| rec(if i < 3 { "10" } else { "x" }, &["1"], None))
            .collect();
        let s = aggregate(Metric::Ocrbench, &samples);
        assert_eq!((s.n, s.score_sum, s.headline), (8, 3.0, 37.5));
        assert!(s.categories.is_empty());
        assert_eq!(s.to_string(), "ocrbench 37.50 (3/8)");
    }

    #[test]
    fn aggregate_pope_headline_is_f1() {
        let samples = vec![
            rec("Yes", &["yes"], Some("random")),
            rec("no", &["yes"], Some("random")),
            rec("yes", &["no"], Some("popular")),
            rec("No", &["no"], Some("popular")),
            rec("Yes.", &["yes"], Some("popular")),
        ];
        let s = aggregate(Metric::Pope, &samples);
        let p = s.pope.clone().expect("pope stats");
        assert_eq!((p.tp, p.fp, p.tn, p.fn_, p.other), (1, 1, 1, 1, 1));
        assert_eq!(p.accuracy, 0.4);
        assert_eq!(s.score_sum, 2.0);
        assert_eq!(s.headline, p.f1 * 100.0);
        assert_eq!(p.f1, 0.5);
        let popular = &s.categories["popular"];
        assert_eq!(popular.pope.as_ref().map(|p| p.fp), Some(1));
        assert_eq!(popular.headline, 0.0);
    }

    #[test]
    fn aggregate_means_and_empty_input() {
        let samples = vec![rec("a", &["a"], None), rec("ab", &["abcd"], None)];
        let s = aggregate(Metric::Anls, &samples);
        assert_eq!(s.headline, 75.0);
        assert_eq!(s.to_string(), "anls 75.00 (n=2)");
        for m in Metric::ALL {
            let s = aggregate(m, &[]);
            assert_eq!((s.n, s.headline, s.score_sum), (0, 0.0, 0.0), "{m}");
        }
    }
}
