//! VQA accuracy as lmms-eval scores TextVQA.
//!
//! Reference: `lmms_eval/tasks/textvqa/utils.py` (`textvqa_process_results`)
//! and `EvalAIAnswerProcessor` in
//! `lmms_eval/tasks/_task_utils/vqa_eval_metric.py` (itself a copy of the
//! MMF/Pythia processor of the EvalAI VQA evaluation).
//!
//! # Normalisation ([`normalize`]), applied to the prediction and every answer
//!
//! 1. Lower-case; delete every `,` and `?`; replace `'s` by ` 's`; strip;
//!    replace `\n` and `\t` by a space; strip again.
//! 2. Punctuation: for each of `; / [ ] " { } ( ) = + \ _ - > < @ ` , ? !`
//!    (in that order): if the string *as it was after step 1* contains the
//!    character followed by a space or preceded by a space, or contains a
//!    digit-comma-digit sequence, delete every occurrence of it; otherwise
//!    replace every occurrence by a space. The decision is taken once per
//!    character on the whole string, never per occurrence.
//! 3. Periods: delete each `.` that is not followed by a decimal digit, but
//!    only the first 32 such periods (later ones are kept).
//! 4. Lower-case again, split on whitespace, map `none`/`zero`..`ten` to
//!    `0`..`10`, drop the articles `a`/`an`/`the`, then replace each word found
//!    in the contraction table, and join with single spaces.
//!
//! # Reference quirks kept on purpose
//!
//! * The period regex is `(?!<=\d)(\.)(?!\d)`: the first group is a negative
//!   *look-ahead* for the text `<=` plus a digit (a typo for a look-behind),
//!   which can never match in front of a `.`, so the rule is just "delete a
//!   period unless a digit follows". The limit of 32 comes from passing
//!   `re.UNICODE` (= 32) as the positional `count` argument of `Pattern.sub`.
//! * Step 1 already deleted every `,`, so the digit-comma-digit test of step 2
//!   can never fire on this path (VQAv2's processor differs; we keep
//!   TextVQA's).
//! * `:`, `'`, `%`, `$`, `#`, `&`, `*`, `~`, `^`, `|` are not punctuation here
//!   and survive; `,` and `?` in the step-2 list are already gone.
//! * The contraction keys `Id've`, `I'dve`, `Im`, `Ive` contain capitals and
//!   never match after lower-casing; `somebody'd` maps to `somebodyd`
//!   (reversed in the original table). Since `'s` became ` 's` in step 1,
//!   keys such as `let's`/`she's` never match either.
//! * "Digit" means any Unicode decimal digit (Python's `\d`), and
//!   "whitespace" is Python's, see [`super::pytext`].
//!
//! # Score ([`vqa_accuracy`])
//!
//! For each of the n ground-truth answers i, count how many of the *other*
//! n-1 normalised answers equal the normalised prediction and take
//! `min(1, count / 3)`; the score is the mean of those n values. lmms-eval
//! takes that mean with `statistics.mean`, which is exact (rational) and
//! rounds once, so we do the same: with 10 answers, 0/1/2/3/4+ matching
//! answers give exactly the doubles nearest to 0/0.3/0.6/0.9/1.0.

use super::pytext;

/// Characters handled by the punctuation rule, in the reference's order.
const PUNCTUATIONS: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// How many periods the reference's `PERIOD_STRIP.sub` removes at most.
pub const PERIOD_STRIP_LIMIT: usize = 32;

const ARTICLES: [&str; 3] = ["a", "an", "the"];

const NUMBER_MAP: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

/// The EvalAI contraction table, verbatim (including its dead and odd keys).
const CONTRACTIONS: [(&str, &str); 120] = [
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

fn lookup<'a>(table: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    table.iter().find(|(k, _)| *k == key).map(|&(_, v)| v)
}

/// EvalAI answer normalisation (TextVQA path); see the module docs.
pub fn normalize(answer: &str) -> String {
    // word_tokenize, then newline/tab folding.
    let s = pytext::lower(answer)
        .replace([',', '?'], "")
        .replace("'s", " 's");
    let s = pytext::strip(&s).replace(['\n', '\t'], " ");
    let s = process_punctuation(pytext::strip(&s));
    process_digit_article(&s)
}

/// Python `re.search(r"(?<=\d)(\,)+(?=\d)", s)`: a digit, one or more commas,
/// a digit.
fn has_digit_comma_digit(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == ',' && i > 0 && pytext::is_decimal(chars[i - 1]) {
            let mut j = i;
            while j < chars.len() && chars[j] == ',' {
                j += 1;
            }
            if j < chars.len() && pytext::is_decimal(chars[j]) {
                return true;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    false
}

/// Steps 2 and 3 of the normalisation: punctuation, then periods.
fn process_punctuation(in_text: &str) -> String {
    let comma_between_digits = has_digit_comma_digit(in_text);
    let mut out = in_text.to_owned();
    for p in PUNCTUATIONS {
        let mut buf = [0u8; 4];
        let p_str: &str = p.encode_utf8(&mut buf);
        let spaced =
            in_text.contains(&format!("{p_str} ")) || in_text.contains(&format!(" {p_str}"));
        out = if spaced || comma_between_digits {
            out.replace(p, "")
        } else {
            out.replace(p, " ")
        };
    }
    strip_periods(&out)
}

/// Delete a `.` unless a decimal digit follows it, for the first
/// [`PERIOD_STRIP_LIMIT`] such periods. The look-ahead sees the text before
/// any deletion (as `re.sub` does).
fn strip_periods(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut removed = 0;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let digit_follows = chars.peek().is_some_and(|&n| pytext::is_decimal(n));
        if c == '.' && !digit_follows && removed < PERIOD_STRIP_LIMIT {
            removed += 1;
        } else {
            out.push(c);
        }
    }
    out
}

/// Step 4: numbers, articles, contractions.
fn process_digit_article(in_text: &str) -> String {
    let lowered = pytext::lower(in_text);
    let words: Vec<&str> = pytext::split(&lowered)
        .map(|w| lookup(&NUMBER_MAP, w).unwrap_or(w))
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| lookup(&CONTRACTIONS, w).unwrap_or(w))
        .collect();
    words.join(" ")
}

/// VQA accuracy of `prediction` against the human `answers` (10 for
/// TextVQA); see the module docs. No answers score 0.
pub fn vqa_accuracy<S: AsRef<str>>(prediction: &str, answers: &[S]) -> f64 {
    let pred = normalize(prediction);
    let gts: Vec<String> = answers.iter().map(|a| normalize(a.as_ref())).collect();
    let per_answer: Vec<f64> = (0..gts.len())
        .map(|i| {
            let matches = gts
                .iter()
                .enumerate()
                .filter(|&(j, gt)| j != i && *gt == pred)
                .count();
            (matches as f64 / 3.0).min(1.0)
        })
        .collect();
    exact_mean(&per_answer)
}

/// The mean of non-negative finite values, computed exactly and rounded once
/// to nearest-even, like Python's `statistics.mean` on floats. Falls back to
/// a plain sum when the values span too many binary orders of magnitude for
/// the 128-bit accumulator (never the case for VQA's 0, 1/3, 2/3, 1).
fn exact_mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let naive = || values.iter().sum::<f64>() / values.len() as f64;
    // Decompose each value as mantissa * 2^exponent.
    let parts: Vec<(u64, i32)> = values
        .iter()
        .filter(|v| **v != 0.0)
        .map(|&v| decompose(v))
        .collect();
    if values.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return naive();
    }
    let Some(min_exp) = parts.iter().map(|&(_, e)| e).min() else {
        return 0.0;
    };
    let mut sum: u128 = 0;
    for &(mantissa, exp) in &parts {
        let shift = exp - min_exp;
        if shift > 60 {
            return naive();
        }
        let Some(next) = sum.checked_add(u128::from(mantissa) << shift) else {
            return naive();
        };
        sum = next;
    }
    div_round(sum, values.len() as u128, min_exp)
}

/// `v = mantissa * 2^exponent` for a positive finite double.
fn decompose(v: f64) -> (u64, i32) {
    let bits = v.to_bits();
    let biased = ((bits >> 52) & 0x7FF) as i32;
    let fraction = bits & ((1u64 << 52) - 1);
    if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1u64 << 52), biased - 1075)
    }
}

/// `num / den * 2^exp`, correctly rounded to the nearest double (ties to
/// even). Assumes the result is a normal double.
fn div_round(num: u128, den: u128, exp: i32) -> f64 {
    if num == 0 {
        return 0.0;
    }
    let mut q = num / den;
    let mut r = num % den;
    let mut exp = exp;
    let mut sticky = false;
    // Bring the quotient to exactly 64 significant bits.
    if q >= 1u128 << 64 {
        let extra = 128 - q.leading_zeros() - 64;
        sticky = q & ((1u128 << extra) - 1) != 0;
        q >>= extra;
        exp += extra as i32;
    } else {
        while q < 1u128 << 63 {
            q <<= 1;
            r <<= 1;
            if r >= den {
                q += 1;
                r -= den;
            }
            exp -= 1;
        }
    }
    sticky |= r != 0;
    // Round 64 bits to 53, ties to even.
    let low = q & 0x7FF;
    let mut mantissa = (q >> 11) as u64;
    exp += 11;
    let half = 0x400;
    if low > half || (low == half && (sticky || mantissa & 1 == 1)) {
        mantissa += 1;
        if mantissa == 1u64 << 53 {
            mantissa >>= 1;
            exp += 1;
        }
    }
    // mantissa < 2^53 converts exactly; the power of two is built exactly.
    mantissa as f64 * pow2(exp)
}

fn pow2(exp: i32) -> f64 {
    let biased = exp + 1023;
    if (1..=2046).contains(&biased) {
        f64::from_bits((biased as u64) << 52)
    } else {
        2f64.powi(exp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_table() {
        let cases: &[(&str, &str)] = &[
            // Step 1: lower-case, drop "," and "?", split off "'s", strip.
            ("  Coca-Cola  ", "coca cola"),
            ("1,000", "1000"),
            ("What?", "what"),
            ("John's", "john 's"),
            ("line\none\ttab", "line 1 tab"),
            // Step 2: a punctuation char next to a space is deleted...
            ("rock - paper", "rock paper"),
            // ...and the decision holds for every occurrence in the string.
            ("a-b - c", "ab c"),
            // Without a neighbouring space it becomes a space everywhere.
            ("a-b-c", "b c"),
            ("(555)", "555"),
            ("x/y", "x y"),
            ("e=mc", "e mc"),
            ("hi!", "hi"),
            ("\"quoted\"", "quoted"),
            ("@home", "home"),
            ("snake_case", "snake case"),
            ("back\\slash", "back slash"),
            // ":", "'", "%", "$" and friends are not punctuation here.
            ("10:30", "10:30"),
            ("50%", "50%"),
            ("$5", "$5"),
            ("#1 & co*", "#1 & co*"),
            ("rock 'n' roll", "rock 'n' roll"),
            // Step 3: periods go unless a digit follows.
            ("3.14", "3.14"),
            ("St. Louis.", "st louis"),
            ("v.2", "v.2"),
            ("end.", "end"),
            ("..5", ".5"),
            // \d is Unicode: an Arabic-Indic digit protects the period.
            ("x.\u{663}", "x.\u{663}"),
            // Step 4: numbers, articles, contractions.
            ("The One", "1"),
            ("an apple a day", "apple day"),
            ("None", "0"),
            ("ten four", "10 4"),
            ("eleven", "eleven"),
            ("dont", "don't"),
            ("Dont", "don't"),
            ("yall'll", "y'all'll"),
            ("somebody'd", "somebodyd"),
            // Capitalised keys never fire after lower-casing.
            ("Im", "im"),
            ("Ive", "ive"),
            // "'s" is split off first, so these keys never fire either.
            ("she's", "she 's"),
            ("let's go", "let 's go"),
            ("", ""),
            ("   ", ""),
            ("the", ""),
        ];
        for &(input, want) in cases {
            assert_eq!(normalize(input), want, "input {input:?}");
        }
    }

    #[test]
    fn only_first_32_periods_are_stripped() {
        let dots = ".".repeat(40);
        assert_eq!(
            normalize(&format!("a{dots}b")),
            format!("a{}b", ".".repeat(8))
        );
        // Periods followed by digits do not count towards the limit.
        let protected = ".1".repeat(5);
        let input = format!("{protected}{}", ". ".repeat(34));
        assert_eq!(normalize(&input), format!("{protected} . ."));
    }

    #[test]
    fn digit_comma_digit_rule_is_dead_on_textvqa_path() {
        // Called directly it deletes punctuation everywhere...
        assert_eq!(process_punctuation("1,2 a-b"), "12 ab");
        assert_eq!(process_punctuation("1, 2 a-b"), "1 2 a b");
        // ...but normalize() has deleted the commas before it runs.
        assert_eq!(normalize("1,2 x-y"), "12 x y");
    }

    #[test]
    fn accuracy_by_number_of_matching_answers() {
        // (matching answers out of 10, expected score)
        let cases: &[(usize, f64)] = &[
            (0, 0.0),
            (1, 0.3),
            (2, 0.6),
            (3, 0.9),
            (4, 1.0),
            (7, 1.0),
            (10, 1.0),
        ];
        for &(k, want) in cases {
            let answers: Vec<String> = (0..10)
                .map(|i| {
                    if i < k {
                        "yes".into()
                    } else {
                        format!("other{i}")
                    }
                })
                .collect();
            let got = vqa_accuracy("yes", &answers);
            assert_eq!(got.to_bits(), want.to_bits(), "{k} matches: {got}");
        }
    }

    #[test]
    fn accuracy_table() {
        let ten = |a: &str, b: &str, k: usize| -> Vec<String> {
            (0..10)
                .map(|i| if i < k { a } else { b }.to_string())
                .collect()
        };
        let cases: &[(&str, Vec<String>, f64)] = &[
            // Normalisation makes these equal.
            ("Coca-Cola.", ten("coca cola", "pepsi", 10), 1.0),
            ("  The Two ", ten("2", "two", 10), 1.0),
            ("1,000", ten("1000", "x", 2), 0.6),
            // A spaced hyphen is deleted, an unspaced one becomes a space.
            ("coca - cola", ten("coca-cola", "x", 10), 1.0),
            // Here the decisions differ: "xy z" against "x y z".
            ("x-y - z", ten("x-y z", "q", 10), 0.0),
            ("yes", vec![], 0.0),
            // Fewer answers: the leave-one-out mean over what is there.
            ("a1", vec!["a1".into(), "b".into()], 1.0 / 6.0),
            (
                "red",
                vec!["red".into(), "red".into(), "red".into(), "red".into()],
                1.0,
            ),
        ];
        for (pred, answers, want) in cases {
            let got = vqa_accuracy(pred, answers);
            assert_eq!(got.to_bits(), want.to_bits(), "{pred:?}: {got}");
        }
    }

    #[test]
    fn exact_mean_matches_python_statistics_mean() {
        let third = 1.0 / 3.0;
        let two_thirds = 2.0 / 3.0;
        let cases: &[(Vec<f64>, f64)] = &[
            (vec![third; 3], third),
            ([vec![0.0], vec![third; 9]].concat(), 0.3),
            ([vec![third; 2], vec![two_thirds; 8]].concat(), 0.6),
            ([vec![two_thirds; 3], vec![1.0; 7]].concat(), 0.9),
            (vec![0.1, 0.2, 0.3], 0.2),
            (vec![0.1; 10], 0.1),
            (vec![1.0, 2.0], 1.5),
            (vec![0.0, 0.0], 0.0),
        ];
        for (values, want) in cases {
            let got = exact_mean(values);
            assert_eq!(got.to_bits(), want.to_bits(), "{values:?}: {got}");
        }
    }
}
