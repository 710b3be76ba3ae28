//! Python `str` semantics the reference scorers and prompt builders rely on.
//!
//! lmms-eval is Python, and its scorers and prompts lean on `str.strip()`,
//! `str.capitalize()`, `str.split()`,
//! `str.lower()`, `str.upper()`, `len()` and the regex classes `\s` / `\d`.
//! These differ from Rust's defaults in small ways that can change a score:
//!
//! * Python whitespace (`str.isspace`, `str.strip()`, `str.split()` and regex
//!   `\s`) is Rust's `char::is_whitespace` plus the four ASCII information
//!   separators U+001C..U+001F.
//! * Regex `\d` and `float()` accept every Unicode decimal digit (general
//!   category Nd), not only `0-9`.
//! * `len()` counts code points, so lengths here are `chars().count()`.
//!
//! Lower/upper casing uses Rust's full Unicode mappings (`"ß".to_uppercase()`
//! is `"SS"`, final sigma handled), which agree with CPython's `str.lower()` /
//! `str.upper()`; the two may differ only on characters whose case mappings
//! changed between the Unicode versions of the two runtimes.
//! `str.capitalize()` (Python >= 3.8) title-cases the first character and
//! lower-cases the rest; title case equals upper case except for a few
//! characters, which [`title_case`] lists.

/// Zero code points of the Unicode decimal-digit runs (general category Nd),
/// each run being `zero..=zero + 9` with values 0..=9. Generated from CPython
/// 3.11's `unicodedata` (Unicode 14.0): every code point with a `decimal`
/// value lies in exactly one of these runs.
const DECIMAL_ZEROS: [u32; 66] = [
    0x30, 0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66,
    0xDE6, 0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90,
    0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10,
    0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650,
    0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0, 0x16B50,
    0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

/// Python's `str.isspace()` for one character (also regex `\s`).
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The Unicode decimal value of `c` (Python's `unicodedata.decimal`), i.e.
/// whether regex `\d` matches it and which digit `float()` reads it as.
pub fn decimal_value(c: char) -> Option<u8> {
    let cp = c as u32;
    // The table is sorted: find the last run starting at or before `cp`.
    let idx = DECIMAL_ZEROS.partition_point(|&zero| zero <= cp);
    let zero = *DECIMAL_ZEROS.get(idx.checked_sub(1)?)?;
    let offset = cp - zero;
    // Runs are ten long; `offset < 10` also makes the cast lossless.
    (offset < 10).then_some(offset as u8)
}

/// Python regex `\d` on a `str` pattern.
pub fn is_decimal(c: char) -> bool {
    decimal_value(c).is_some()
}

/// Python's `str.strip()` with no argument.
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// Python's `str.split()` with no argument: runs of whitespace separate
/// words, and there are no empty words.
pub fn split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_space).filter(|w| !w.is_empty())
}

/// Python's `str.lower()`.
pub fn lower(s: &str) -> String {
    s.to_lowercase()
}

/// Python's `str.upper()`.
pub fn upper(s: &str) -> String {
    s.to_uppercase()
}

/// Python's `len(s)` (code points).
pub fn len(s: &str) -> usize {
    s.chars().count()
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

    /// Every code point for which CPython 3.11 `str.isspace()` is true.
    const PY_SPACES: [u32; 29] = [
        0x9, 0xA, 0xB, 0xC, 0xD, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x2001,
        0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A, 0x2028, 0x2029,
        0x202F, 0x205F, 0x3000,
    ];

    #[test]
    fn whitespace_matches_python_exactly() {
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(
                is_space(c),
                PY_SPACES.contains(&(c as u32)),
                "U+{:04X}",
                c as u32
            );
        }
    }

    #[test]
    fn decimal_digits() {
        let cases: &[(char, Option<u8>)] = &[
            ('0', Some(0)),
            ('9', Some(9)),
            ('/', None),
            (':', None),
            ('\u{663}', Some(3)),   // ARABIC-INDIC DIGIT THREE
            ('\u{FF15}', Some(5)),  // FULLWIDTH DIGIT FIVE
            ('\u{1D7CE}', Some(0)), // MATHEMATICAL BOLD DIGIT ZERO
            ('\u{1D7FF}', Some(9)), // MATHEMATICAL MONOSPACE DIGIT NINE
            ('\u{B2}', None),       // SUPERSCRIPT TWO: a digit, not a decimal
            ('\u{2460}', None),     // CIRCLED DIGIT ONE
            ('\u{2167}', None),     // ROMAN NUMERAL EIGHT
            ('\u{FF1A}', None),     // FULLWIDTH COLON, right after the run
            ('\u{0}', None),
        ];
        for &(c, want) in cases {
            assert_eq!(decimal_value(c), want, "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn strip_split_and_case() {
        assert_eq!(strip("\u{1c} a b\u{a0}\u{3000}"), "a b");
        assert_eq!(
            split(" a\u{1f}b\t\nc  ").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(split("   ").count(), 0);
        assert_eq!(upper("straße"), "STRASSE");
        assert_eq!(len(&upper("ß")), 2);
        // Final sigma, as CPython: "ΟΔΟΣ".lower() == "οδος" ending in U+03C2.
        assert_eq!(
            lower("\u{39F}\u{394}\u{39F}\u{3A3}"),
            "\u{3BF}\u{3B4}\u{3BF}\u{3C2}"
        );
        assert_eq!(len(&lower("İ")), 2);
    }

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
