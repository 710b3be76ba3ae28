//! HR-Bench 4K / 8K option extraction and accuracy.
//!
//! Reference: lmms-eval at 75571cf, `lmms_eval/tasks/hrbench/`:
//! `hrbench_process_results` and `hrbench_aggregate_results` in `utils.py`
//! (:56-99), `can_infer_option` / `can_infer_text` / `can_infer` and
//! `get_chat_response` in `hrbench_evals.py` (:42-128).
//!
//! The prediction is stripped; the letter is the first that holds of:
//!
//! 1. [`infer_option`]: a refusal phrase gives `Z`; otherwise, with the
//!    characters `.()[],:;!*#{}` read as spaces, the Python-whitespace tokens
//!    that equal an option letter (case-sensitive) are counted: exactly one
//!    distinct letter gives it (so the article "A" counts as option A, "a"
//!    never does); none but a lone `Z` token gives `Z`.
//! 2. [`infer_text`]: exactly one option whose lower-cased text is a
//!    substring of the lower-cased prediction.
//! 3. lmms-eval then asks a GPT judge. This port has no judge: a prediction
//!    neither rule reads is scored wrong (0), and [`hrbench_letter`] returns
//!    `None` for it, so a run can count how often the judge would have been
//!    asked. (lmms-eval's `VERBOSE` switch, which rejects "A" among more than
//!    three tokens, is taken as unset.)
//!
//! The score is 1 when the letter equals the answer letter, ignoring case.
//! Each reported number (overall and per category, `single` = FSP, `cross` =
//! FCP) is the mean over the four option rotations (`cycle_category` "0" to
//! "3") of each rotation's mean ([`rotation_mean`]), which equals the plain
//! mean when the rotations are equally represented, as in the release.
//!
//! A record carries what the scorer needs in the generic record fields:
//! `answers = [answer letter, text of option A, of B, ...]` and `dataset =`
//! the row's `cycle_category`.

use super::pytext;

/// Replies that lmms-eval reads as a refusal (`Z`, never correct).
const REFUSALS: [&str; 4] = [
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
];

/// The letters of `count` options, in order: A, B, ... (the keys of
/// lmms-eval's options dict, `utils.py`:40-42).
pub fn option_letters(count: usize) -> impl Iterator<Item = String> {
    ('A'..='Z').take(count).map(String::from)
}

/// `can_infer_option`: the option letter the prediction names on its own,
/// `Some("Z")` for a refusal, `None` when it names none or several.
pub fn infer_option(prediction: &str, options: usize) -> Option<String> {
    if prediction.contains("Failed to obtain answer via API") {
        return None;
    }
    if REFUSALS.iter().any(|r| prediction.contains(r)) {
        return Some("Z".into());
    }
    let cleaned: String = prediction
        .chars()
        .map(|c| if ".()[],:;!*#{}".contains(c) { ' ' } else { c })
        .collect();
    let tokens: Vec<&str> = pytext::split(&cleaned).collect();
    let named: Vec<String> = option_letters(options)
        .filter(|l| tokens.contains(&l.as_str()))
        .collect();
    match named.len() {
        1 => named.into_iter().next(),
        0 if tokens.contains(&"Z") => Some("Z".into()),
        _ => None,
    }
}

/// `can_infer_text`: the one option whose lower-cased text appears in the
/// lower-cased prediction, `None` when none or several do.
pub fn infer_text(prediction: &str, options: &[String]) -> Option<String> {
    let lowered = pytext::lower(prediction);
    let mut found = option_letters(options.len())
        .zip(options)
        .filter(|(_, text)| lowered.contains(&pytext::lower(text)));
    match (found.next(), found.next()) {
        (Some((letter, _)), None) => Some(letter),
        _ => None,
    }
}

/// The letter lmms-eval reads from `prediction` without its GPT judge
/// (`can_infer`), `None` when it would have asked the judge.
pub fn hrbench_letter(prediction: &str, options: &[String]) -> Option<String> {
    let prediction = pytext::strip(prediction);
    infer_option(prediction, options.len()).or_else(|| infer_text(prediction, options))
}

/// 1.0 when the letter read from `prediction` is the answer (`answers[0]`,
/// the option texts after it), else 0.0.
pub fn hrbench_score(prediction: &str, answers: &[String]) -> f64 {
    let Some((answer, options)) = answers.split_first() else {
        return 0.0;
    };
    match hrbench_letter(prediction, options) {
        Some(letter) if pytext::lower(&letter) == pytext::lower(answer) => 1.0,
        _ => 0.0,
    }
}

/// `hrbench_aggregate_results`: the mean over rotation groups of each
/// group's mean score (`(group, score)` pairs), 0 for no records.
pub fn rotation_mean<'a>(scores: impl IntoIterator<Item = (&'a str, f64)>) -> f64 {
    let mut groups: std::collections::BTreeMap<&str, (f64, usize)> = Default::default();
    for (group, score) in scores {
        let g = groups.entry(group).or_default();
        g.0 += score;
        g.1 += 1;
    }
    if groups.is_empty() {
        return 0.0;
    }
    groups.values().map(|(s, n)| s / *n as f64).sum::<f64>() / groups.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Vec<String> {
        ["red car", "blue bus", "green", "a dog"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn letters_are_read_as_lmms_eval_reads_them() {
        let o = opts();
        let read = |p: &str| hrbench_letter(p, &o);
        assert_eq!(read("B").as_deref(), Some("B"));
        assert_eq!(read(" (C) green ").as_deref(), Some("C"));
        assert_eq!(read("The answer is D.").as_deref(), Some("D"));
        // The article "A" is option A; lower-case letters are not options.
        assert_eq!(read("A red car").as_deref(), Some("A"));
        assert_eq!(read("b").as_deref(), None);
        // Two letters: the option rule gives up, the text rule decides.
        assert_eq!(read("A or B: the blue bus").as_deref(), Some("B"));
        assert_eq!(read("A or B").as_deref(), None);
        // The same letter twice still counts once.
        assert_eq!(read("C, C").as_deref(), Some("C"));
        // Option text match, case-insensitive; several matches: unread.
        assert_eq!(read("it is GREEN").as_deref(), Some("C"));
        assert_eq!(read("green or a dog").as_deref(), None);
        // Refusals and a lone Z.
        assert_eq!(
            read("Cannot determine the answer, sorry").as_deref(),
            Some("Z")
        );
        assert_eq!(read("Z").as_deref(), Some("Z"));
        assert_eq!(read("Failed to obtain answer via API").as_deref(), None);
    }

    #[test]
    fn scores_compare_letters_ignoring_case() {
        let answers: Vec<String> = std::iter::once("c".to_string()).chain(opts()).collect();
        assert_eq!(hrbench_score("C", &answers), 1.0);
        assert_eq!(hrbench_score("green", &answers), 1.0);
        assert_eq!(hrbench_score("D", &answers), 0.0);
        assert_eq!(hrbench_score("no idea", &answers), 0.0);
        assert_eq!(hrbench_score("C", &[]), 0.0);
    }

    #[test]
    fn the_mean_is_over_rotations() {
        // Rotation "0": 1 of 1 right; "1": 1 of 3 right -> (1 + 1/3) / 2.
        let m = rotation_mean([("0", 1.0), ("1", 1.0), ("1", 0.0), ("1", 0.0)]);
        assert!((m - 2.0 / 3.0).abs() < 1e-12, "{m}");
        assert_eq!(rotation_mean([]), 0.0);
        // Equal groups: the plain mean.
        let m = rotation_mean([("0", 1.0), ("1", 0.0), ("2", 1.0), ("3", 1.0)]);
        assert_eq!(m, 0.75);
    }
}
