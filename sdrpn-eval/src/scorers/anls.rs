//! ANLS (Average Normalized Levenshtein Similarity), DocVQA and InfoVQA.
//!
//! Reference: `anls` in `lmms_eval/api/metrics.py` (from Qwen-VL's
//! `infographicsvqa_eval.py`), aggregated with a plain mean.
//!
//! For each ground-truth answer:
//!
//! * both strings are normalised for the distance: strip, lower-case, and
//!   collapse internal whitespace runs to one space (`" ".join(s.split())`);
//! * the Levenshtein distance (over code points) of the normalised strings is
//!   divided by `max(len(gt.upper()), len(pred.upper()))` — the lengths of
//!   the **raw, un-normalised** strings, upper-cased;
//! * when both raw strings are empty the value is 0 (so the answer scores 1).
//!
//! The question scores `1 - min(values)`, or 0 when that is below 0.5
//! (exactly 0.5 is kept). The benchmark score is the mean over questions.
//!
//! # Reference quirks kept on purpose
//!
//! * Raw lengths: extra or surrounding whitespace in either string makes the
//!   denominator larger without changing the distance, which inflates the
//!   score ("Paris" vs an answer stored as `"paris   "` is still 1, but
//!   "Pari" vs `"paris   "` scores 1 - 1/8 instead of 1 - 1/5).
//! * Upper-cased lengths: characters whose upper case is longer count more
//!   (`"ß"` counts 2, `"ŉ"` counts 2), while the lower-cased distance string
//!   may itself be longer than the raw one (`"İ"` lowers to two code points),
//!   which can push a value above 1 (the score is then 0 anyway).
//! * The threshold comparison is `s < 0.5` in binary floating point.
//!
//! With no answers the reference raises; we return 0.

use super::pytext;

/// Scores below this are zeroed (the comparison is strict).
pub const ANLS_THRESHOLD: f64 = 0.5;

/// `" ".join(s.strip().lower().split())` as code points.
fn normalize(s: &str) -> Vec<char> {
    let lowered = pytext::lower(pytext::strip(s));
    let joined = pytext::split(&lowered).collect::<Vec<_>>().join(" ");
    joined.chars().collect()
}

/// Levenshtein distance (unit costs) between two code-point sequences.
pub fn levenshtein(a: &[char], b: &[char]) -> usize {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut prev: Vec<usize> = (0..=short.len()).collect();
    let mut cur = vec![0; short.len() + 1];
    for (i, &cl) in long.iter().enumerate() {
        cur[0] = i + 1;
        for (j, &cs) in short.iter().enumerate() {
            cur[j + 1] = if cl == cs {
                prev[j]
            } else {
                1 + prev[j].min(prev[j + 1]).min(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[short.len()]
}

/// The per-question ANLS score of `prediction` against `answers`.
pub fn anls<S: AsRef<str>>(prediction: &str, answers: &[S]) -> f64 {
    let det = normalize(prediction);
    let det_len = pytext::len(&pytext::upper(prediction));
    let best = answers
        .iter()
        .map(|answer| {
            let answer = answer.as_ref();
            let gt = normalize(answer);
            let length = pytext::len(&pytext::upper(answer)).max(det_len);
            if length == 0 {
                0.0
            } else {
                levenshtein(&gt, &det) as f64 / length as f64
            }
        })
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.min(v)))
        });
    let Some(best) = best else {
        return 0.0;
    };
    let score = 1.0 - best;
    if score < ANLS_THRESHOLD {
        0.0
    } else {
        score
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levenshtein_table() {
        let cases: &[(&str, &str, usize)] = &[
            ("", "", 0),
            ("abc", "", 3),
            ("", "abc", 3),
            ("kitten", "sitting", 3),
            ("flaw", "lawn", 2),
            ("abc", "abc", 0),
            ("ab", "ba", 2),
            ("straße", "strasse", 2),
        ];
        for &(a, b, want) in cases {
            let a: Vec<char> = a.chars().collect();
            let b: Vec<char> = b.chars().collect();
            assert_eq!(levenshtein(&a, &b), want, "{a:?} {b:?}");
            assert_eq!(levenshtein(&b, &a), want, "{b:?} {a:?}");
        }
    }

    #[test]
    fn anls_table() {
        let cases: &[(&str, &[&str], f64)] = &[
            // Exact and case/whitespace-insensitive matches.
            ("Paris", &["paris"], 1.0),
            ("  new   york ", &["New York"], 1.0),
            // One edit in five characters.
            ("Pari", &["paris"], 0.8),
            // Raw-length quirk: trailing spaces in the answer inflate the
            // denominator (8 instead of 5).
            ("Pari", &["paris   "], 0.875),
            // ...and internal whitespace runs too: distance 1, length 11.
            ("new yorc", &["new    york"], 1.0 - 1.0 / 11.0),
            // Upper-cased length: "ß" counts 2, so 1 edit over 7 not 6.
            ("strase", &["straße"], 1.0 - 1.0 / 7.0),
            // Threshold: below 0.5 is zeroed...
            ("abcdef", &["abcxyz1"], 0.0),
            // ...exactly 0.5 is kept (2 edits over 4).
            ("abxy", &["abcd"], 0.5),
            ("abcxy", &["abcde"], 0.6),
            ("abxyz", &["abcde"], 0.0),
            // Best over answers.
            ("1990", &["1989", "1990"], 1.0),
            ("colour", &["color", "hue"], 1.0 - 1.0 / 6.0),
            // Both raw strings empty: value 0, score 1.
            ("", &[""], 1.0),
            // An answer of only whitespace normalises to "" but has length.
            ("", &["   "], 1.0),
            ("x", &[""], 0.0),
            // "İ" lowers to 2 code points: distance 2 over length 1.
            ("x", &["\u{130}"], 0.0),
            ("abc", &[], 0.0),
        ];
        for &(pred, answers, want) in cases {
            let got = anls(pred, answers);
            assert_eq!(got.to_bits(), want.to_bits(), "{pred:?} {answers:?}: {got}");
        }
    }
}
