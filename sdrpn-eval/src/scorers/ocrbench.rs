//! OCRBench substring matching.
//!
//! Reference: `ocrbench_process_results` in
//! `lmms_eval/tasks/ocrbench/utils.py`, in the version that folds full-width
//! ASCII (`_fold_fullwidth_ascii`, with `test/eval/test_ocrbench.py`); the
//! benchmark score is the number of matching questions out of 1000.
//!
//! The prediction is stripped first. A question matches when any of its
//! answers, normalised, is a substring of the prediction, normalised the same
//! way:
//!
//! * **HME100k** (`dataset == "HME100k"`, exact spelling): strip, then turn
//!   `\n` into a space, then delete every ASCII space. Case-sensitive and
//!   width-sensitive; tabs and other whitespace inside are kept.
//! * **Everything else**: fold full-width ASCII (U+FF01..U+FF5E become
//!   U+0021..U+007E, the ideographic space U+3000 becomes a space; nothing
//!   else: no NFKC, so "①", "²", "Ⅳ", "㎏" stay), then lower-case, strip,
//!   and turn `\n` into a space. Internal whitespace is *not* collapsed.
//!
//! # Quirks kept on purpose
//!
//! * A substring test: "1" matches inside "10", and an empty answer matches
//!   anything.
//! * Older lmms-eval versions lower-cased the prediction *before* the
//!   HME100k branch (so an HME100k answer with a capital could never match)
//!   and had no full-width folding; this module follows the newer code, which
//!   is what EVAL.md describes.

use super::pytext;

/// The OCRBench subset scored case-sensitively with spaces removed.
pub const HME100K: &str = "HME100k";

/// Full-width ASCII (U+FF01..U+FF5E) to ASCII, U+3000 to a space.
pub fn fold_fullwidth(s: &str) -> String {
    s.chars()
        .map(|c| match c as u32 {
            cp @ 0xFF01..=0xFF5E => char::from_u32(cp - 0xFEE0).unwrap_or(c),
            0x3000 => ' ',
            _ => c,
        })
        .collect()
}

fn normalize_hme(s: &str) -> String {
    pytext::strip(s).replace('\n', " ").replace(' ', "")
}

fn normalize_default(s: &str) -> String {
    let lowered = pytext::lower(&fold_fullwidth(s));
    pytext::strip(&lowered).replace('\n', " ")
}

/// Whether the prediction contains any answer, under the rules for
/// `dataset` (see the module docs).
pub fn ocrbench_match<S: AsRef<str>>(
    prediction: &str,
    answers: &[S],
    dataset: Option<&str>,
) -> bool {
    let pred = pytext::strip(prediction);
    let normalize: fn(&str) -> String = if dataset == Some(HME100K) {
        normalize_hme
    } else {
        normalize_default
    };
    let predict = normalize(pred);
    answers
        .iter()
        .any(|answer| predict.contains(normalize(answer.as_ref()).as_str()))
}

/// 1.0 for a match, 0.0 otherwise.
pub fn ocrbench_score<S: AsRef<str>>(
    prediction: &str,
    answers: &[S],
    dataset: Option<&str>,
) -> f64 {
    if ocrbench_match(prediction, answers, dataset) {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_table() {
        let cases: &[(&str, &str)] = &[
            ("\u{ff12}\u{ff15}\u{ff19}\u{ff10}", "2590"),
            ("\u{ff21}\u{ff5a}", "Az"),
            ("\u{ff01}\u{ff5e}", "!~"),
            ("a\u{3000}b", "a b"),
            // Not folded: outside U+FF01..U+FF5E, and no NFKC.
            ("\u{ff00}\u{ff5f}\u{ff61}", "\u{ff00}\u{ff5f}\u{ff61}"),
            (
                "\u{2460}\u{b2}\u{2163}\u{338f}",
                "\u{2460}\u{b2}\u{2163}\u{338f}",
            ),
            ("\u{a0}", "\u{a0}"),
        ];
        for &(input, want) in cases {
            assert_eq!(fold_fullwidth(input), want, "{input:?}");
        }
    }

    #[test]
    fn match_table() {
        let hme = Some(HME100K);
        let cases: &[(&str, &[&str], Option<&str>, bool)] = &[
            // Case-insensitive substring.
            ("The Olive project", &["Olive"], None, true),
            ("OLIVE", &["olive"], Some("IIIT5K"), true),
            ("1", &["10"], None, false),
            ("10", &["1"], None, true),
            ("olives", &["olive"], None, true),
            // Any answer of the list.
            ("cat", &["dog", "CAT"], None, true),
            ("cat", &["dog", "bird"], None, false),
            ("anything", &[""], None, true),
            ("anything", &[], None, false),
            // Full-width folding, both directions, ideographic space too.
            ("\u{ff12}\u{ff15}\u{ff19}\u{ff10}", &["2590"], None, true),
            ("2590", &["\u{ff12}\u{ff15}\u{ff19}\u{ff10}"], None, true),
            (
                "\u{ff42}\u{ff4f}\u{ff54}\u{ff48}\u{3000}\u{ff53}\u{ff49}\u{ff44}\u{ff45}\u{ff53}",
                &["both sides"],
                None,
                true,
            ),
            ("\u{ff22}\u{ff2f}\u{ff34}\u{ff28}", &["both"], None, true),
            // Only full-width ASCII is folded.
            ("\u{2460}", &["1"], None, false),
            ("\u{b2}", &["2"], None, false),
            ("\u{2163}", &["IV"], None, false),
            ("\u{338f}", &["kg"], None, false),
            // Whitespace: stripped, "\n" becomes " ", runs are kept.
            ("  new\nyork  ", &["new york"], None, true),
            ("new  york", &["new york"], None, false),
            ("new york", &[" new york\n"], None, true),
            ("new\tyork", &["new york"], None, false),
            // HME100k: spaces removed on both sides, case-sensitive...
            ("x ^ { 2 } + 1", &["x^{2}+1"], hme, true),
            ("x^{2}+1", &["x ^ {2}\n+ 1"], hme, true),
            ("\\Frac { a } { b }", &["\\frac{a}{b}"], hme, false),
            ("\\frac{A}{b}", &["\\frac{A}{b}"], hme, true),
            // ...width-sensitive, and tabs survive.
            ("\u{ff58}\u{ff0b}\u{ff11}", &["x+1"], hme, false),
            ("x\t+1", &["x+1"], hme, false),
            // The dataset name is matched exactly.
            ("\\Frac{a}{b}", &["\\frac{a}{b}"], Some("hme100k"), true),
        ];
        for &(pred, answers, dataset, want) in cases {
            assert_eq!(
                ocrbench_match(pred, answers, dataset),
                want,
                "{pred:?} {answers:?} {dataset:?}"
            );
        }
    }

    #[test]
    fn score_is_zero_or_one() {
        assert_eq!(ocrbench_score("abc", &["b"], None), 1.0);
        assert_eq!(ocrbench_score("abc", &["d"], None), 0.0);
    }
}
