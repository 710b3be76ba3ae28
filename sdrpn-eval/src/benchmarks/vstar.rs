//! V* Bench prompt: options parsed out of the question text, as lmms-eval.
//!
//! Reference: `vstar_doc_to_text` in `lmms_eval/tasks/vstar_bench/utils.py`
//! (dataset `lmms-lab/vstar-bench`, columns `text`, `label`, `category`,
//! `question_id`, `image`). The mirror's `text` already holds the question,
//! the options as `(A) ...` lines and LLaVA's instruction, e.g.
//!
//! ```text
//! What is the material of the glove?
//! (A) rubber
//! (B) cotton
//! (C) kevlar
//! (D) leather
//! Answer with the option's letter from the given choices directly.
//! ```
//!
//! The reference then does, in Python:
//!
//! 1. `options = re.findall(r"\([A-D]\)\s*([^()]+?)(?=\s*\([A-D]\)|$)", text)`;
//! 2. if any: `question = text.split("(A)")[0].strip()` and the prompt is
//!    `question + "\n" + "\n".join(f"{L}. {o.strip()}")` over the first four
//!    options with letters A, B, C, D *by position*;
//! 3. the post-prompt `"\nAnswer with the option's letter from the given
//!    choices directly."` is appended.
//!
//! The letters are not shuffled: the data's `(A)..(D)` order is kept and the
//! ground truth is the data's `label` letter.
//!
//! # Reference quirks kept on purpose
//!
//! * `$` (no MULTILINE) only matches at the very end (or before a final
//!   `\n`), so the last option runs to the end of the text and swallows the
//!   instruction line: the prompt ends with `"D. leather\nAnswer with the
//!   option's letter from the given choices directly."` followed by the same
//!   instruction again from the post-prompt.
//! * An option containing `(` or `)` cannot match; the regex then finds the
//!   next `(X)` marker, so later options shift up a letter.
//! * When no option is found the text is used unchanged (plus post-prompt).

use super::text;

/// lmms-eval's V* post-prompt (`lmms_eval_specific_kwargs.default`).
pub const VSTAR_POST_PROMPT: &str =
    "\nAnswer with the option's letter from the given choices directly.";

/// The prompt lmms-eval builds from a V* `text` (post-prompt included).
pub fn vstar_prompt(text_field: &str) -> String {
    let options = find_options(text_field);
    let mut prompt = if options.is_empty() {
        text_field.to_owned()
    } else {
        let question = text::strip(text_field.split("(A)").next().unwrap_or(""));
        let lines: Vec<String> = options
            .iter()
            .zip(["A", "B", "C", "D"])
            .map(|(option, letter)| format!("{letter}. {}", text::strip(option)))
            .collect();
        format!("{question}\n{}", lines.join("\n"))
    };
    prompt.push_str(VSTAR_POST_PROMPT);
    prompt
}

/// `re.findall(r"\([A-D]\)\s*([^()]+?)(?=\s*\([A-D]\)|$)", s)`: the captured
/// option texts, unstripped, in order.
pub fn find_options(s: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let byte_at = |i: usize| chars.get(i).map_or(s.len(), |&(b, _)| b);
    let mut found = Vec::new();
    let mut pos = 0;
    while pos < chars.len() {
        match match_option_at(&chars, pos) {
            Some((start, end)) => {
                found.push(&s[byte_at(start)..byte_at(end)]);
                // The match is never empty, so the search resumes at its end.
                pos = end;
            }
            None => pos += 1,
        }
    }
    found
}

/// `\([A-D]\)` at char index `i`.
fn is_marker(chars: &[(usize, char)], i: usize) -> bool {
    matches!(
        chars.get(i..i + 3),
        Some([(_, '('), (_, 'A'..='D'), (_, ')')])
    )
}

/// The lookahead `(?=\s*\([A-D]\)|$)` at char index `i`.
fn lookahead(chars: &[(usize, char)], i: usize) -> bool {
    let mut j = i;
    while j < chars.len() && text::is_space(chars[j].1) {
        j += 1;
    }
    if is_marker(chars, j) {
        return true;
    }
    // Python's `$` without MULTILINE: end of string, or before a final "\n".
    i == chars.len() || (i + 1 == chars.len() && chars[i].1 == '\n')
}

/// The whole pattern anchored at char index `at`: the capture group's char
/// range, trying the greedy `\s*` longest first (backtracking as `re` does)
/// and the lazy `[^()]+?` shortest first.
fn match_option_at(chars: &[(usize, char)], at: usize) -> Option<(usize, usize)> {
    if !is_marker(chars, at) {
        return None;
    }
    let after = at + 3;
    let mut ws_end = after;
    while ws_end < chars.len() && text::is_space(chars[ws_end].1) {
        ws_end += 1;
    }
    (after..=ws_end).rev().find_map(|start| {
        let mut end = start;
        while end < chars.len() && !matches!(chars[end].1, '(' | ')') {
            end += 1;
            if lookahead(chars, end) {
                return Some((start, end));
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRAILER: &str = "Answer with the option's letter from the given choices directly.";

    #[test]
    fn mirror_text_keeps_order_and_repeats_the_instruction() {
        let text = format!(
            "What is the material of the glove?\n(A) rubber\n(B) cotton\n(C) kevlar\n(D) leather\n{TRAILER}"
        );
        let want = format!(
            "What is the material of the glove?\nA. rubber\nB. cotton\nC. kevlar\nD. leather\n{TRAILER}\n{TRAILER}"
        );
        assert_eq!(vstar_prompt(&text), want);
    }

    #[test]
    fn find_options_table() {
        let cases: &[(&str, &[&str])] = &[
            // Inline options, as the reference's comment describes.
            (
                "Q? (A) red (B) blue (C) green (D) white",
                &["red", "blue", "green", "white"],
            ),
            ("Q?\n(A) red\n(B) blue\n", &["red", "blue"]),
            // `$` matches before a final newline: the capture stops there.
            ("Q?\n(A) red\n(B) blue\n\n", &["red", "blue\n"]),
            // Parentheses inside an option: that option is dropped.
            ("Q? (A) red (dark) (B) blue", &["blue"]),
            // Lower-case or out-of-range markers are not options.
            ("Q? (a) red (E) blue", &[]),
            // An empty option backtracks `\s*` and captures the space.
            ("Q? (A) (B) blue", &[" ", "blue"]),
            ("no options here", &[]),
            ("(A)", &[]),
            ("(A) x", &["x"]),
            ("Q? (A)\u{a0}ünï (B) ü", &["ünï", "ü"]),
        ];
        for &(input, want) in cases {
            assert_eq!(find_options(input), want, "{input:?}");
        }
    }

    #[test]
    fn prompt_table() {
        let cases: &[(&str, String)] = &[
            (
                "What color is the cup? (A) red (B) blue",
                format!("What color is the cup?\nA. red\nB. blue\n{TRAILER}"),
            ),
            // Letters are positional: a dropped option shifts the rest up.
            (
                "Q? (A) red (dark) (B) blue (C) green",
                format!("Q?\nA. blue\nB. green\n{TRAILER}"),
            ),
            // More than four options: only the first four are listed.
            (
                "Q? (A) a (B) b (C) c (D) d (A) e",
                format!("Q?\nA. a\nB. b\nC. c\nD. d\n{TRAILER}"),
            ),
            // No options: the text is kept verbatim.
            ("  Is it red?  ", format!("  Is it red?  \n{TRAILER}")),
            // The question part is the text before the first "(A)", stripped,
            // even when an earlier option sits in it.
            (
                "\n Q?\n(B) x (A) y",
                format!("Q?\n(B) x\nA. x\nB. y\n{TRAILER}"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&vstar_prompt(input), want, "{input:?}");
        }
    }
}
