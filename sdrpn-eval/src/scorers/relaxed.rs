//! ChartQA relaxed accuracy.
//!
//! Reference: `relaxed_correctness` in `lmms_eval/tasks/chartqa/utils.py`
//! (taken from Qwen-VL's `evaluate_vqa.py`), scored 1.0/0.0 and averaged.
//!
//! Both the prediction and the target go through `_to_float`: when the text
//! ends with `%`, every trailing `%` is removed and the rest parsed and
//! divided by 100; otherwise the text is parsed as is. Parsing is Python's
//! `float()` ([`parse_python_float`]); a failure gives "not a number".
//!
//! * If the prediction is a number and the target is a number that is
//!   *truthy* (not ±0; NaN is truthy), the answer is right when
//!   `|pred - target| / |target| <= 0.05`, in IEEE doubles.
//! * Otherwise the answer is right when `pred.lower() == target.lower()`:
//!   an exact, case-insensitive comparison of the unparsed strings, without
//!   any stripping.
//!
//! # Reference quirks kept on purpose
//!
//! * The `%` rule applies to **both** sides ("50%" as a target is 0.5), and a
//!   percentage is compared with its own scale: "50" against "50%" is wrong.
//! * Floating point: 1.05 against 1 fails (relative change
//!   0.050000000000000044), 105 against 100 passes (exactly 0.05).
//! * A target of 0 (or "0%", "-0") falls back to the string comparison, so
//!   "0.0" against "0" is wrong.
//! * A NaN target is truthy: nothing is ever within tolerance of it, not even
//!   "nan" (no string fallback). An infinite target likewise never matches.
//! * `float()` accepts surrounding whitespace, `_` between digits, "12.",
//!   ".5", "1e2", "inf"/"infinity"/"nan" in any case with a sign, and any
//!   Unicode decimal digit ("１２" is 12); it rejects "1,000", "$100",
//!   "0x10", "1e", "." and internal spaces.
//!
//! With several answers, any one matching counts (ChartQA has one).

use std::borrow::Cow;

use super::pytext;

/// The tolerated relative change.
pub const MAX_RELATIVE_CHANGE: f64 = 0.05;

/// ASCII whitespace as CPython's `Py_ISSPACE` (what `float()` strips after
/// mapping non-ASCII whitespace to spaces).
fn is_ascii_py_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{0b}' | '\u{0c}' | '\r')
}

/// Parse `text` exactly as Python's `float(text)` does, `None` where Python
/// raises `ValueError`.
///
/// Steps, as CPython: non-ASCII whitespace becomes a space and non-ASCII
/// decimal digits become ASCII digits (any other non-ASCII character is an
/// error); ASCII whitespace is stripped from both ends; underscores are
/// allowed only between two digits and then removed; the rest must be
/// `[sign] (digits [. [digits]] | . digits) [(e|E) [sign] digits]` or
/// `[sign] (inf | infinity | nan)` in any case. The value is the correctly
/// rounded double (overflow gives ±inf).
pub fn parse_python_float(text: &str) -> Option<f64> {
    let mut ascii = String::with_capacity(text.len());
    for c in text.chars() {
        if (c as u32) < 127 {
            ascii.push(c);
        } else if pytext::is_space(c) {
            ascii.push(' ');
        } else {
            ascii.push(char::from(b'0' + pytext::decimal_value(c)?));
        }
    }
    let trimmed = ascii.trim_matches(is_ascii_py_space);
    let body: Cow<str> = if trimmed.contains('_') {
        Cow::Owned(remove_underscores(trimmed)?)
    } else {
        Cow::Borrowed(trimmed)
    };
    parse_ascii_float(&body)
}

/// `_Py_string_to_number_with_underscores`: each `_` must sit between two
/// ASCII digits.
fn remove_underscores(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'_' {
            let before = i.checked_sub(1).map(|j| bytes[j]);
            let after = bytes.get(i + 1).copied();
            if !before.is_some_and(|c| c.is_ascii_digit())
                || !after.is_some_and(|c| c.is_ascii_digit())
            {
                return None;
            }
        } else {
            out.push(char::from(b));
        }
    }
    Some(out)
}

/// The grammar check and conversion of an ASCII, trimmed, underscore-free
/// string.
fn parse_ascii_float(s: &str) -> Option<f64> {
    let (negative, unsigned) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = unsigned.to_ascii_lowercase();
    if lower == "inf" || lower == "infinity" {
        return Some(if negative {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    if lower == "nan" {
        return Some(if negative { -f64::NAN } else { f64::NAN });
    }
    let bytes = unsigned.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < bytes.len() && bytes[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let int_digits = digits(&mut i);
    let mut frac_digits = 0;
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        frac_digits = digits(&mut i);
    }
    if int_digits + frac_digits == 0 {
        return None;
    }
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        i += 1;
        if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return None;
        }
    }
    if i != bytes.len() {
        return None;
    }
    // The grammar is a subset of what Rust's (correctly rounding) parser
    // accepts, so this cannot fail.
    s.parse::<f64>().ok()
}

/// `_to_float`: the percentage rule, then `float()`.
fn to_float(text: &str) -> Option<f64> {
    if text.ends_with('%') {
        parse_python_float(text.trim_end_matches('%')).map(|v| v / 100.0)
    } else {
        parse_python_float(text)
    }
}

/// Whether `prediction` is relaxed-correct for `target`; see the module docs.
pub fn relaxed_correctness(prediction: &str, target: &str) -> bool {
    match (to_float(prediction), to_float(target)) {
        // `t != 0.0` is Python truthiness: false for ±0, true for NaN.
        (Some(p), Some(t)) if t != 0.0 => (p - t).abs() / t.abs() <= MAX_RELATIVE_CHANGE,
        _ => pytext::lower(prediction) == pytext::lower(target),
    }
}

/// 1.0 when the prediction is relaxed-correct for any answer, else 0.0.
pub fn relaxed_accuracy<S: AsRef<str>>(prediction: &str, answers: &[S]) -> f64 {
    if answers
        .iter()
        .any(|a| relaxed_correctness(prediction, a.as_ref()))
    {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_table() {
        // (text, Python's float(text) or None for ValueError)
        let cases: &[(&str, Option<f64>)] = &[
            ("12.", Some(12.0)),
            (".5", Some(0.5)),
            ("1e2", Some(100.0)),
            ("1E-2", Some(0.01)),
            ("+.5e-3", Some(0.0005)),
            ("1.e5", Some(100000.0)),
            ("00012", Some(12.0)),
            ("-0", Some(-0.0)),
            ("1_000", Some(1000.0)),
            ("1e1_0", Some(1e10)),
            ("1_0e1_0", Some(1e11)),
            ("0_0.0_0", Some(0.0)),
            (" 5 ", Some(5.0)),
            ("\t5\n", Some(5.0)),
            ("5\u{85}", Some(5.0)),
            ("\u{a0}5", Some(5.0)),
            ("5\u{3000}", Some(5.0)),
            ("\u{ff11}\u{ff12}", Some(12.0)),
            ("\u{661}\u{662}.\u{665}", Some(12.5)),
            ("inf", Some(f64::INFINITY)),
            ("-Infinity", Some(f64::NEG_INFINITY)),
            ("iNfInItY", Some(f64::INFINITY)),
            ("1e400", Some(f64::INFINITY)),
            ("1e-400", Some(0.0)),
            ("0.1", Some(0.1)),
            ("1,000", None),
            ("$100", None),
            ("5%", None),
            ("1_e5", None),
            ("1__0", None),
            ("_1", None),
            ("1_", None),
            ("1._5", None),
            ("1_.5", None),
            ("1e+_5", None),
            ("in_f", None),
            ("infinit", None),
            ("infinityy", None),
            ("1e", None),
            ("e5", None),
            (".", None),
            (".e5", None),
            ("", None),
            ("   ", None),
            ("0x10", None),
            ("+-1", None),
            ("--1", None),
            ("1 000", None),
            ("1\u{0}", None),
            // U+001C is Python whitespace for str.strip() but not for float().
            ("5\u{1c}", None),
            ("\u{1c}5", None),
            ("\u{b2}", None),
            ("\u{2212}5", None),
            ("\u{7f}", None),
        ];
        for &(text, want) in cases {
            let got = parse_python_float(text);
            assert_eq!(
                got.map(f64::to_bits),
                want.map(f64::to_bits),
                "{text:?}: {got:?}"
            );
        }
        for text in ["nan", "NaN", "+nan", "-NAN", " nan "] {
            assert!(
                parse_python_float(text).is_some_and(f64::is_nan),
                "{text:?}"
            );
        }
    }

    #[test]
    fn relaxed_correctness_table() {
        let cases: &[(&str, &str, bool)] = &[
            // 5% tolerance, in binary floating point.
            ("105", "100", true),
            ("95", "100", true),
            ("106", "100", false),
            ("1.05", "1", false),
            ("1.04", "1", true),
            // |0.95 - 1| is 0.050000000000000044 in doubles.
            ("0.95", "1", false),
            ("12.", "12", true),
            ("1e2", "100", true),
            ("1_000", "1000", true),
            // Unparseable prediction: string comparison.
            ("1,000", "1000", false),
            ("$100", "100", false),
            ("1,000", "1,000", true),
            // The "%" rule divides by 100, on both sides.
            ("50%", "0.5", true),
            ("50%", "50", false),
            ("0.5", "50%", true),
            ("50", "50%", false),
            ("50%%", "0.5", true),
            ("50 %", "0.5", true),
            ("%", "%", true),
            // Target 0 falls back to the (case-insensitive) string compare.
            ("0", "0", true),
            ("0.0", "0", false),
            ("0", "0%", false),
            ("0%", "0%", true),
            ("-0", "0", false),
            // Non-numeric: exact, case-insensitive, no stripping.
            ("Yes", "yes", true),
            ("Yes", "yes ", false),
            ("STRASSE", "straße", false),
            ("\u{130}", "i\u{307}", true),
            // NaN targets are truthy and never within tolerance.
            ("nan", "nan", false),
            ("5", "nan", false),
            ("inf", "inf", false),
            ("inf", "5", false),
            // Unicode digits parse.
            ("\u{ff11}\u{ff10}\u{ff10}", "100", true),
            // A numeric prediction against a non-numeric target.
            ("3", "three", false),
        ];
        for &(pred, target, want) in cases {
            assert_eq!(
                relaxed_correctness(pred, target),
                want,
                "{pred:?} vs {target:?}"
            );
        }
    }

    #[test]
    fn accuracy_over_answers() {
        assert_eq!(relaxed_accuracy("42", &["40"]), 1.0);
        assert_eq!(relaxed_accuracy("42", &["30", "41"]), 1.0);
        assert_eq!(relaxed_accuracy("42", &["30"]), 0.0);
        assert_eq!(relaxed_accuracy::<&str>("42", &[]), 0.0);
    }
}
