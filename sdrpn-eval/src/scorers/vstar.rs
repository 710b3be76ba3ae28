//! V* Bench letter extraction and accuracy.
//!
//! Reference: `extract_answer_letter`, `vstar_process_results` and
//! `vstar_aggregate_results` in `lmms_eval/tasks/vstar_bench/utils.py`.
//!
//! The response is stripped and upper-cased, then the first rule that
//! matches gives the letter (each rule is a leftmost regex search):
//!
//! 1. `^([A-D])`: the response *starts* with A-D, whatever follows, so
//!    "Blue" is B, "Dog" is D and "Answer: D" is A.
//! 2. `(?:THE\s+)?(?:ANSWER|CHOICE|OPTION)(?:\s+IS)?[\s:]+([A-D])`: the first
//!    "answer"/"choice"/"option" keyword, optionally followed by "is", then
//!    spaces or colons, then A-D, which need not stand alone ("the answer is
//!    blue" is B).
//! 3. `\(([A-D])\)`: a parenthesised letter.
//! 4. `([A-D])\s*(?:\.|\)|])`: A-D followed (after optional whitespace) by
//!    `.`, `)` or `]`, even at the end of a word: "The color is red." is D
//!    because of "D.".
//! 5. `(?:^|\s)([A-D])(?:\s|$)`: a standalone letter.
//! 6. Exactly one A-D character in the whole response.
//! 7. (The reference then tries "first character is A-D", which rule 1
//!    already covered.) Otherwise no letter, which is scored wrong.
//!
//! The score is 1 when the letter equals the stripped, upper-cased label
//! (the first answer), and the benchmark score is the micro average over all
//! questions (lmms-eval's `vstar_overall_acc`), x100.
//!
//! # Reference quirks kept on purpose
//!
//! * Upper-casing is Python's (`"ß"` becomes `"SS"`); `\s` is Python's
//!   whitespace; the patterns run with `re.IGNORECASE`, which after
//!   upper-casing only matters for `İ` (U+0130), which matches the `I` of
//!   "IS".
//! * "The color is red." is D via rule 4, not rule 6 (it has two A-D
//!   letters, C and D).

use super::pytext;

fn is_letter(c: char) -> bool {
    matches!(c, 'A'..='D')
}

/// Case-insensitive equality of `c` (already upper-cased) with an ASCII
/// capital, as Python's `re.IGNORECASE` sees it.
fn ci_eq(c: char, upper_ascii: char) -> bool {
    c == upper_ascii || (upper_ascii == 'I' && c == '\u{130}')
}

/// Match `word` at `at`; returns the index after it.
fn match_word(s: &[char], at: usize, word: &str) -> Option<usize> {
    let mut i = at;
    for w in word.chars() {
        if !s.get(i).is_some_and(|&c| ci_eq(c, w)) {
            return None;
        }
        i += 1;
    }
    Some(i)
}

fn skip_while(s: &[char], mut i: usize, pred: impl Fn(char) -> bool) -> usize {
    while i < s.len() && pred(s[i]) {
        i += 1;
    }
    i
}

/// Rule 2 at keyword position `k`: the letter after the keyword, if any.
fn keyword_tail(s: &[char], k: usize) -> Option<char> {
    let after = ["ANSWER", "CHOICE", "OPTION"]
        .iter()
        .find_map(|w| match_word(s, k, w))?;
    let letter_after_sep = |i: usize| {
        let j = skip_while(s, i, |c| pytext::is_space(c) || c == ':');
        (j > i && s.get(j).is_some_and(|&c| is_letter(c))).then(|| s[j])
    };
    // Greedy `(?:\s+IS)?` first, then without it.
    let ws_end = skip_while(s, after, pytext::is_space);
    if ws_end > after {
        if let Some(letter) = match_word(s, ws_end, "IS").and_then(letter_after_sep) {
            return Some(letter);
        }
    }
    letter_after_sep(after)
}

/// The letter the reference cascade extracts from `response`, if any.
pub fn extract_letter(response: &str) -> Option<char> {
    let upper = pytext::upper(pytext::strip(response));
    let s: Vec<char> = upper.chars().collect();
    let n = s.len();

    // 1. Starts with A-D.
    if s.first().is_some_and(|&c| is_letter(c)) {
        return Some(s[0]);
    }
    // 2. Keyword. The optional leading "THE\s+" never moves the leftmost
    //    match to a different keyword, so the first keyword with a valid
    //    tail decides.
    if let Some(letter) = (0..n).find_map(|k| keyword_tail(&s, k)) {
        return Some(letter);
    }
    // 3. "(X)".
    if let Some(w) = s
        .windows(3)
        .find(|w| w[0] == '(' && is_letter(w[1]) && w[2] == ')')
    {
        return Some(w[1]);
    }
    // 4. "X." / "X)" / "X]", optional whitespace before the mark.
    for (i, &c) in s.iter().enumerate() {
        if is_letter(c) {
            let j = skip_while(&s, i + 1, pytext::is_space);
            if s.get(j).is_some_and(|&m| matches!(m, '.' | ')' | ']')) {
                return Some(c);
            }
        }
    }
    // 5. Standalone letter.
    for (i, &c) in s.iter().enumerate() {
        let before_ok = i == 0 || pytext::is_space(s[i - 1]);
        let after_ok = i + 1 == n || pytext::is_space(s[i + 1]);
        if is_letter(c) && before_ok && after_ok {
            return Some(c);
        }
    }
    // 6. Exactly one A-D anywhere.
    let mut letters = s.iter().copied().filter(|&c| is_letter(c));
    match (letters.next(), letters.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}

/// 1.0 when the extracted letter equals the label (`answers[0]`, stripped and
/// upper-cased), else 0.0.
pub fn vstar_score<S: AsRef<str>>(prediction: &str, answers: &[S]) -> f64 {
    let Some(label) = answers.first() else {
        return 0.0;
    };
    let label = pytext::upper(pytext::strip(label.as_ref()));
    match extract_letter(prediction) {
        Some(letter) if label.chars().eq(std::iter::once(letter)) => 1.0,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_table() {
        let cases: &[(&str, Option<char>)] = &[
            // 1. Leading letter, whatever follows.
            ("A", Some('A')),
            ("b", Some('B')),
            ("  c. red", Some('C')),
            ("Blue", Some('B')),
            ("Answer: D", Some('A')),
            ("Dog", Some('D')),
            // 2. Keyword forms; the letter need not stand alone.
            ("The answer is B", Some('B')),
            ("Option C", Some('C')),
            ("My choice: d", Some('D')),
            ("the answer is blue", Some('B')),
            ("I pick answer:: C", Some('C')),
            ("The answer is: (C)", Some('C')),
            ("Right option is (B)", Some('B')),
            ("The answer IS\tD", Some('D')),
            ("My answerb", None),
            ("Options: (B)", Some('B')),
            ("The answer \u{130}S C", Some('C')),
            // 3. Parenthesised.
            ("It is (C).", Some('C')),
            ("I think (D)", Some('D')),
            // 4. Letter before ".", ")" or "]", even inside a word.
            ("The color is red.", Some('D')),
            ("It's b) green", Some('B')),
            ("Pick [C]", Some('C')),
            ("It is D .", Some('D')),
            // 5. Standalone letter.
            ("I think C is right", Some('C')),
            ("It is\nD", Some('D')),
            // 6. A single A-D anywhere.
            ("Yes", None),
            ("Yellow", None),
            ("Purple", None),
            ("Royal", Some('A')),
            ("Black", Some('B')),
            ("Green or black", None),
            // ß upper-cases to SS; the single A-D is the A.
            ("Stra\u{df}e", Some('A')),
            ("\u{df}", None),
            ("", None),
            ("   ", None),
            ("E", None),
        ];
        for &(response, want) in cases {
            assert_eq!(extract_letter(response), want, "{response:?}");
        }
    }

    #[test]
    fn score_table() {
        let cases: &[(&str, &str, f64)] = &[
            ("A", "A", 1.0),
            ("a", " a ", 1.0),
            ("B", "A", 0.0),
            ("Blue", "B", 1.0),
            ("The color is red.", "A", 0.0),
            ("none of them", "A", 0.0),
            ("", "A", 0.0),
            ("A", "AB", 0.0),
        ];
        for &(pred, label, want) in cases {
            assert_eq!(vstar_score(pred, &[label]), want, "{pred:?} {label:?}");
        }
        assert_eq!(vstar_score::<&str>("A", &[]), 0.0);
    }
}
