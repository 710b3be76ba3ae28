//! POPE yes/no scoring.
//!
//! Reference: `pope_process_results` and the `pope_aggregate_*` functions in
//! `lmms_eval/tasks/pope/utils.py`.
//!
//! Both the prediction and the ground truth are only lower-cased and
//! stripped (`s.lower().strip()`); there is no first-word rule and no search
//! for "no"/"not" (that is LLaVA's own `eval_pope.py`, not lmms-eval). So
//! "Yes." or "Yes, there is a dog." is neither yes nor no.
//!
//! * Accuracy: a question is right when the normalised prediction equals the
//!   normalised ground truth.
//! * Precision/recall/F1 take "yes" as the positive class and only count
//!   predictions that are exactly "yes" or "no": TP = (yes, yes),
//!   FP = (gt no, pred yes), FN = (gt yes, pred no). Any other prediction is
//!   wrong for accuracy but left out of precision and recall (it is not a
//!   false negative).
//! * A zero denominator gives 0 (precision with no "yes" predictions, recall
//!   with no TP+FN, F1 when precision + recall = 0).
//!
//! # Reference quirks kept on purpose
//!
//! * lmms-eval's `pope_yes_ratio` counts the *ground-truth* "yes" answers,
//!   not the predicted ones, so it describes the data, not the model; it is
//!   kept as [`PopeStats::yes_ratio`], and the model's own ratio is
//!   [`PopeStats::pred_yes_ratio`].

use super::pytext;

/// How a prediction (or ground truth) reads after normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum YesNo {
    Yes,
    No,
    /// Anything else ("yes.", "yes, it is", "", ...).
    Other,
}

/// `s.lower().strip()`.
pub fn normalize(s: &str) -> String {
    pytext::strip(&pytext::lower(s)).to_owned()
}

/// Classify a prediction or ground truth.
pub fn parse(s: &str) -> YesNo {
    match normalize(s).as_str() {
        "yes" => YesNo::Yes,
        "no" => YesNo::No,
        _ => YesNo::Other,
    }
}

/// 1.0 when the normalised prediction equals the normalised ground truth
/// (`answers[0]`), else 0.0.
pub fn pope_score<S: AsRef<str>>(prediction: &str, answers: &[S]) -> f64 {
    match answers.first() {
        Some(gt) if normalize(prediction) == normalize(gt.as_ref()) => 1.0,
        _ => 0.0,
    }
}

/// POPE counts and rates (rates in 0..=1).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PopeStats {
    pub n: usize,
    /// Questions whose prediction equals the ground truth.
    pub correct: usize,
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    pub fn_: usize,
    /// Predictions that are neither "yes" nor "no".
    pub other: usize,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Share of ground-truth "yes" among ground truths that are yes or no
    /// (lmms-eval's `pope_yes_ratio`).
    pub yes_ratio: f64,
    /// Share of "yes" among predictions that are yes or no.
    pub pred_yes_ratio: f64,
}

fn ratio(num: usize, den: usize) -> f64 {
    if den > 0 {
        num as f64 / den as f64
    } else {
        0.0
    }
}

/// Aggregate `(prediction, ground truth)` pairs as lmms-eval does.
pub fn pope_stats<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> PopeStats {
    let mut s = PopeStats::default();
    let (mut gt_yes, mut gt_no, mut pred_yes, mut pred_no) = (0, 0, 0, 0);
    for (pred, gt) in pairs {
        s.n += 1;
        if normalize(pred) == normalize(gt) {
            s.correct += 1;
        }
        let (p, g) = (parse(pred), parse(gt));
        match g {
            YesNo::Yes => gt_yes += 1,
            YesNo::No => gt_no += 1,
            YesNo::Other => {}
        }
        match p {
            YesNo::Yes => pred_yes += 1,
            YesNo::No => pred_no += 1,
            YesNo::Other => s.other += 1,
        }
        match (g, p) {
            (YesNo::Yes, YesNo::Yes) => s.tp += 1,
            (YesNo::No, YesNo::Yes) => s.fp += 1,
            (YesNo::No, YesNo::No) => s.tn += 1,
            (YesNo::Yes, YesNo::No) => s.fn_ += 1,
            _ => {}
        }
    }
    s.accuracy = ratio(s.correct, s.n);
    s.precision = ratio(s.tp, s.tp + s.fp);
    s.recall = ratio(s.tp, s.tp + s.fn_);
    s.f1 = if s.precision + s.recall > 0.0 {
        2.0 * (s.precision * s.recall) / (s.precision + s.recall)
    } else {
        0.0
    };
    s.yes_ratio = ratio(gt_yes, gt_yes + gt_no);
    s.pred_yes_ratio = ratio(pred_yes, pred_yes + pred_no);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let cases: &[(&str, YesNo)] = &[
            ("yes", YesNo::Yes),
            ("Yes", YesNo::Yes),
            ("  YES \n", YesNo::Yes),
            ("no", YesNo::No),
            ("No", YesNo::No),
            ("\tNO", YesNo::No),
            // No punctuation stripping, no first-word rule.
            ("Yes.", YesNo::Other),
            ("No.", YesNo::Other),
            ("Yes, there is a dog.", YesNo::Other),
            ("No, there is not.", YesNo::Other),
            ("There is no dog", YesNo::Other),
            ("yes yes", YesNo::Other),
            ("y", YesNo::Other),
            ("", YesNo::Other),
        ];
        for &(input, want) in cases {
            assert_eq!(parse(input), want, "{input:?}");
        }
    }

    #[test]
    fn score_table() {
        let cases: &[(&str, &str, f64)] = &[
            ("yes", "yes", 1.0),
            ("Yes", "yes", 1.0),
            (" no ", "No", 1.0),
            ("yes", "no", 0.0),
            ("Yes.", "yes", 0.0),
            ("Yes, it is", "yes", 0.0),
            ("", "no", 0.0),
        ];
        for &(pred, gt, want) in cases {
            assert_eq!(pope_score(pred, &[gt]), want, "{pred:?} {gt:?}");
        }
        assert_eq!(pope_score::<&str>("yes", &[]), 0.0);
    }

    #[test]
    fn stats_count_only_clean_answers_for_precision_and_recall() {
        let pairs = [
            ("yes", "yes"),  // TP
            ("Yes", "yes"),  // TP
            ("no", "yes"),   // FN
            ("Yes.", "yes"), // other: wrong, but not a FN
            ("yes", "no"),   // FP
            ("no", "no"),    // TN
            ("No", "no"),    // TN
            ("nope", "no"),  // other
        ];
        let s = pope_stats(pairs);
        assert_eq!((s.n, s.correct), (8, 4));
        assert_eq!((s.tp, s.fp, s.tn, s.fn_, s.other), (2, 1, 2, 1, 2));
        assert_eq!(s.accuracy, 0.5);
        assert_eq!(s.precision, 2.0 / 3.0);
        assert_eq!(s.recall, 2.0 / 3.0);
        assert_eq!(
            s.f1,
            2.0 * (s.precision * s.recall) / (s.precision + s.recall)
        );
        assert_eq!(s.yes_ratio, 0.5);
        assert_eq!(s.pred_yes_ratio, 0.5);
    }

    #[test]
    fn stats_zero_denominators() {
        // Never says yes: precision 0, recall 0, F1 0.
        let s = pope_stats([("no", "yes"), ("no", "no")]);
        assert_eq!(
            (s.precision, s.recall, s.f1, s.accuracy),
            (0.0, 0.0, 0.0, 0.5)
        );
        // Only non-answers: everything 0.
        let s = pope_stats([("maybe", "yes"), ("dunno", "no")]);
        assert_eq!(
            (s.precision, s.recall, s.f1, s.accuracy),
            (0.0, 0.0, 0.0, 0.0)
        );
        assert_eq!(s.pred_yes_ratio, 0.0);
        // Empty input.
        let s = pope_stats([]);
        assert_eq!(s, PopeStats::default());
        // Perfect.
        let s = pope_stats([("yes", "yes"), ("no", "no")]);
        assert_eq!(
            (s.precision, s.recall, s.f1, s.accuracy),
            (1.0, 1.0, 1.0, 1.0)
        );
    }
}
