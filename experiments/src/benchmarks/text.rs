//! The few Python `str` operations the reference prompt builders use.
//!
//! lmms-eval builds prompts with `str.strip()`, `str.capitalize()`,
//! `str.lower()` and `str.upper()`; these helpers reproduce them so that our
//! prompts (and ground truths) are byte-identical to the reference's.
//!
//! * Python whitespace (`str.isspace`, `str.strip()`, regex `\s`) is Rust's
//!   `char::is_whitespace` plus the ASCII information separators
//!   U+001C..U+001F.
//! * `str.capitalize()` (Python >= 3.8) title-cases the first character and
//!   lower-cases the rest, the final-sigma rule seeing the whole string.
//!   Title case equals upper case except for a few characters (Latin
//!   digraphs and ligatures, `ß`, Armenian ligatures, Greek letters with
//!   ypogegrammeni, Georgian Mkhedruli), which [`title_case`] lists.
//! * Lower/upper casing otherwise uses Rust's full Unicode mappings, which
//!   agree with CPython's up to Unicode-version differences.

/// Python's `str.isspace()` for one character (also regex `\s`).
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` with no argument.
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// Python's `str.lower()`.
pub fn lower(s: &str) -> String {
    s.to_lowercase()
}

/// Python's `str.upper()`.
pub fn upper(s: &str) -> String {
    s.to_uppercase()
}

/// Python's `str.capitalize()`: first character title-cased, the rest
/// lower-cased ("what IS this?" -> "What is this?", "iPhone" -> "Iphone").
pub fn capitalize(s: &str) -> String {
    let Some(first) = s.chars().next() else {
        return String::new();
    };
    let mut out = title_case(first);
    // Lower-case the whole string so that a final sigma sees the first
    // character as context (as CPython's `lower_ucs4` does), then drop the
    // first character's own lower-case form, which never depends on context.
    let lowered = s.to_lowercase();
    let skip: usize = first.to_lowercase().map(char::len_utf8).sum();
    out.push_str(&lowered[skip..]);
    out
}

/// The Unicode title case of one character (full mapping, as CPython's
/// `_PyUnicode_ToTitleFull`).
pub fn title_case(c: char) -> String {
    let special: Option<&str> = match c {
        // Latin digraphs: the title form is the mixed-case letter.
        '\u{1C4}'..='\u{1C6}' => Some("\u{1C5}"),
        '\u{1C7}'..='\u{1C9}' => Some("\u{1C8}"),
        '\u{1CA}'..='\u{1CC}' => Some("\u{1CB}"),
        '\u{1F1}'..='\u{1F3}' => Some("\u{1F2}"),
        // SpecialCasing.txt entries whose title form differs from the upper.
        'ß' => Some("Ss"),
        '\u{FB00}' => Some("Ff"),
        '\u{FB01}' => Some("Fi"),
        '\u{FB02}' => Some("Fl"),
        '\u{FB03}' => Some("Ffi"),
        '\u{FB04}' => Some("Ffl"),
        '\u{FB05}' | '\u{FB06}' => Some("St"),
        '\u{587}' => Some("\u{535}\u{582}"),
        '\u{FB13}' => Some("\u{544}\u{576}"),
        '\u{FB14}' => Some("\u{544}\u{565}"),
        '\u{FB15}' => Some("\u{544}\u{56B}"),
        '\u{FB16}' => Some("\u{54E}\u{576}"),
        '\u{FB17}' => Some("\u{544}\u{56D}"),
        '\u{1FB2}' => Some("\u{1FBA}\u{345}"),
        '\u{1FB4}' => Some("\u{386}\u{345}"),
        '\u{1FB7}' => Some("\u{391}\u{342}\u{345}"),
        '\u{1FC2}' => Some("\u{1FCA}\u{345}"),
        '\u{1FC4}' => Some("\u{389}\u{345}"),
        '\u{1FC7}' => Some("\u{397}\u{342}\u{345}"),
        '\u{1FF2}' => Some("\u{1FFA}\u{345}"),
        '\u{1FF4}' => Some("\u{38F}\u{345}"),
        '\u{1FF7}' => Some("\u{3A9}\u{342}\u{345}"),
        _ => None,
    };
    if let Some(s) = special {
        return s.to_owned();
    }
    let single = match c {
        // Greek with ypogegrammeni: the title form keeps the iota as
        // prosgegrammeni in one character (the upper form spells it out).
        '\u{1F80}'..='\u{1F87}' | '\u{1F90}'..='\u{1F97}' | '\u{1FA0}'..='\u{1FA7}' => {
            char::from_u32(c as u32 + 8)
        }
        '\u{1F88}'..='\u{1F8F}'
        | '\u{1F98}'..='\u{1F9F}'
        | '\u{1FA8}'..='\u{1FAF}'
        | '\u{1FBC}'
        | '\u{1FCC}'
        | '\u{1FFC}' => Some(c),
        '\u{1FB3}' => Some('\u{1FBC}'),
        '\u{1FC3}' => Some('\u{1FCC}'),
        '\u{1FF3}' => Some('\u{1FFC}'),
        // Georgian Mkhedruli has upper-case (Mtavruli) forms but is its own
        // title case.
        '\u{10D0}'..='\u{10FA}' | '\u{10FD}'..='\u{10FF}' => Some(c),
        _ => None,
    };
    match single {
        Some(t) => t.to_string(),
        None => c.to_uppercase().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capitalize_table() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("what is the brand?", "What is the brand?"),
            (
                "What IS the BRAND of this Phone?",
                "What is the brand of this phone?",
            ),
            ("iPhone", "Iphone"),
            ("  leading space", "  leading space"),
            ("123 ABC", "123 abc"),
            ("a", "A"),
            ("ß is sharp", "Ss is sharp"),
            ("ﬁne", "Fine"),
            ("ǆungla", "ǅungla"),
            ("ᾳ", "ᾼ"),
            ("ვ", "ვ"),
            // Final sigma: the lower-case rest sees the first character.
            ("ΑΣ", "Ας"),
            ("ΣΑΣ ΟΔΟΣ", "Σας οδος"),
            ("éCOLE", "École"),
            ("İSTANBUL", "İstanbul"),
        ];
        for &(input, want) in cases {
            assert_eq!(capitalize(input), want, "{input:?}");
        }
    }

    #[test]
    fn strip_uses_python_whitespace() {
        assert_eq!(strip("\u{1c}\t x \u{a0}\n"), "x");
        assert_eq!(strip("\u{200b}x"), "\u{200b}x");
        assert!(is_space('\u{1f}'));
        assert!(!is_space('a'));
    }

    #[test]
    fn lower_upper() {
        assert_eq!(lower(" YES "), " yes ");
        assert_eq!(upper("b"), "B");
        assert_eq!(upper("ß"), "SS");
    }
}
