//! The shape of an SMS body as the network sees it: which encoding it needs
//! and how many segments it is billed as. Pure counting, no I/O.
//!
//! A text goes out as GSM-7 only when every character is in the GSM 03.38
//! default alphabet or its extension table; one character outside both turns
//! the whole text into UCS-2, which more than halves what a segment holds.

use serde::Serialize;

/// The character set a text is sent in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        }
    }

    /// Units a text that fits in one segment may have.
    pub fn single_limit(self) -> u32 {
        match self {
            Encoding::Gsm7 => 160,
            Encoding::Ucs2 => 70,
        }
    }

    /// Units each part of a concatenated text carries: the user data header
    /// takes the rest.
    pub fn part_limit(self) -> u32 {
        match self {
            Encoding::Gsm7 => 153,
            Encoding::Ucs2 => 67,
        }
    }
}

impl Serialize for Encoding {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How a text will be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SmsShape {
    pub encoding: Encoding,
    /// Septets for GSM-7 (an extension character counts 2: escape and
    /// character), UTF-16 code units for UCS-2 (a character outside the BMP
    /// counts 2).
    pub units: u32,
    /// Segments billed; 0 for an empty text.
    pub segments: u32,
}

/// Septets a character costs in GSM-7, or `None` when GSM-7 cannot carry it.
fn gsm7_cost(c: char) -> Option<u32> {
    if is_gsm7_basic(c) {
        Some(1)
    } else if is_gsm7_extension(c) {
        Some(2)
    } else {
        None
    }
}

/// The 03.38 default alphabet. Position 0x1B is the escape to the extension
/// table, not a character, so it has no entry here.
fn is_gsm7_basic(c: char) -> bool {
    matches!(c,
        '@' | '£' | '$' | '¥' | 'è' | 'é' | 'ù' | 'ì' | 'ò' | 'Ç' | '\n' | 'Ø' | 'ø' | '\r' | 'Å' | 'å'
        | 'Δ' | '_' | 'Φ' | 'Γ' | 'Λ' | 'Ω' | 'Π' | 'Ψ' | 'Σ' | 'Θ' | 'Ξ' | 'Æ' | 'æ' | 'ß' | 'É'
        | ' ' | '!' | '"' | '#' | '¤' | '%' | '&' | '\'' | '(' | ')' | '*' | '+' | ',' | '-' | '.' | '/'
        | '0'..='9' | ':' | ';' | '<' | '=' | '>' | '?'
        | '¡' | 'A'..='Z' | 'Ä' | 'Ö' | 'Ñ' | 'Ü' | '§'
        | '¿' | 'a'..='z' | 'ä' | 'ö' | 'ñ' | 'ü' | 'à')
}

/// The extension table: each is sent as escape plus one septet.
fn is_gsm7_extension(c: char) -> bool {
    matches!(
        c,
        '\u{000C}' | '^' | '{' | '}' | '\\' | '[' | '~' | ']' | '|' | '€'
    )
}

/// Whether GSM-7 can carry the whole text.
pub fn is_gsm7(text: &str) -> bool {
    text.chars().all(|c| gsm7_cost(c).is_some())
}

/// The encoding, units and billed segments of `text`.
pub fn shape(text: &str) -> SmsShape {
    if is_gsm7(text) {
        // The filter cannot drop anything: every char was just checked.
        pack(Encoding::Gsm7, text.chars().filter_map(gsm7_cost))
    } else {
        pack(Encoding::Ucs2, text.chars().map(|c| c.len_utf16() as u32))
    }
}

/// Counts units and segments from each character's cost. A character is
/// never split between parts (an escape pair or a surrogate pair would be
/// garbled), so parts are filled greedily rather than by dividing the total.
fn pack(encoding: Encoding, costs: impl Iterator<Item = u32> + Clone) -> SmsShape {
    let units = costs.clone().fold(0u32, u32::saturating_add);
    let segments = if units == 0 {
        0
    } else if units <= encoding.single_limit() {
        1
    } else {
        let cap = encoding.part_limit();
        let (full, last) = costs.fold((0u32, 0u32), |(full, used), cost| {
            if used + cost > cap {
                (full.saturating_add(1), cost)
            } else {
                (full, used + cost)
            }
        });
        full.saturating_add(u32::from(last > 0))
    };
    SmsShape {
        encoding,
        units,
        segments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gsm(units: u32, segments: u32) -> SmsShape {
        SmsShape {
            encoding: Encoding::Gsm7,
            units,
            segments,
        }
    }

    fn ucs2(units: u32, segments: u32) -> SmsShape {
        SmsShape {
            encoding: Encoding::Ucs2,
            units,
            segments,
        }
    }

    const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                         ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
    const EXTENSION: &str = "\u{000C}^{}\\[~]|€";

    #[test]
    fn the_basic_table_has_127_characters_of_one_septet() {
        // 128 positions less the escape.
        assert_eq!(BASIC.chars().count(), 127);
        for c in BASIC.chars() {
            assert_eq!(gsm7_cost(c), Some(1), "{c:?}");
        }
        assert_eq!(shape(BASIC), gsm(127, 1));
    }

    #[test]
    fn extension_characters_cost_two_septets() {
        assert_eq!(EXTENSION.chars().count(), 10);
        for c in EXTENSION.chars() {
            assert_eq!(gsm7_cost(c), Some(2), "{c:?}");
        }
        assert_eq!(shape(EXTENSION), gsm(20, 1));
    }

    #[test]
    fn lookalikes_outside_the_alphabet_force_ucs2() {
        for c in [
            'ç', '`', 'á', 'í', 'ó', 'ú', 'Ó', 'ê', 'õ', '\t', '\u{0}', '\u{1B}', '…', '’', '“',
            '\u{A0}', 'α', 'Ж', '中', '😀',
        ] {
            assert_eq!(gsm7_cost(c), None, "{c:?}");
            assert_eq!(
                shape(&format!("hello{c}")).encoding,
                Encoding::Ucs2,
                "{c:?}"
            );
        }
    }

    #[test]
    fn empty_text_has_no_segments() {
        assert_eq!(shape(""), gsm(0, 0));
    }

    #[test]
    fn gsm_single_segment_boundary() {
        assert_eq!(shape(&"a".repeat(160)), gsm(160, 1));
        assert_eq!(shape(&"a".repeat(161)), gsm(161, 2));
        assert_eq!(shape(&"{".repeat(80)), gsm(160, 1));
        assert_eq!(shape(&format!("{}a", "{".repeat(80))), gsm(161, 2));
    }

    #[test]
    fn gsm_concatenated_boundaries() {
        assert_eq!(shape(&"a".repeat(153 * 2)), gsm(306, 2));
        assert_eq!(shape(&"a".repeat(153 * 2 + 1)), gsm(307, 3));
        assert_eq!(shape(&"a".repeat(153 * 3)), gsm(459, 3));
        assert_eq!(shape(&"a".repeat(153 * 3 + 1)), gsm(460, 4));
    }

    #[test]
    fn an_escape_pair_is_not_split_across_segments() {
        // 152 septets then a pair: 154 > 153, so the pair opens part two.
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        assert_eq!(shape(&text), gsm(306, 3));
        // Simple division would say two parts.
        assert_eq!(306u32.div_ceil(153), 2);
        // The same pair one septet earlier fits exactly.
        let text = format!("{}€{}", "a".repeat(151), "a".repeat(153));
        assert_eq!(shape(&text), gsm(306, 2));
        // Only extension characters: 76 pairs (152 septets) per part.
        assert_eq!(shape(&"€".repeat(152)), gsm(304, 2));
        assert_eq!(shape(&"€".repeat(153)), gsm(306, 3));
    }

    #[test]
    fn ucs2_single_segment_boundary() {
        assert_eq!(shape(&"ж".repeat(70)), ucs2(70, 1));
        assert_eq!(shape(&"ж".repeat(71)), ucs2(71, 2));
        assert_eq!(shape(&"ж".repeat(67 * 2)), ucs2(134, 2));
        assert_eq!(shape(&"ж".repeat(67 * 2 + 1)), ucs2(135, 3));
    }

    #[test]
    fn characters_outside_the_bmp_count_two_units() {
        assert_eq!(shape("😀"), ucs2(2, 1));
        assert_eq!(shape(&"😀".repeat(35)), ucs2(70, 1));
        assert_eq!(shape(&"😀".repeat(36)), ucs2(72, 2));
    }

    #[test]
    fn a_surrogate_pair_is_not_split_across_segments() {
        // 66 units then an emoji: 68 > 67, so it opens part two.
        let text = format!("{}😀{}", "ж".repeat(66), "ж".repeat(66));
        assert_eq!(shape(&text), ucs2(134, 3));
        let text = format!("{}😀{}", "ж".repeat(65), "ж".repeat(67));
        assert_eq!(shape(&text), ucs2(134, 2));
    }

    #[test]
    fn one_foreign_character_switches_the_whole_text() {
        let text = "a".repeat(100);
        assert_eq!(shape(&text), gsm(100, 1));
        let text = format!("{text}ç");
        assert_eq!(shape(&text), ucs2(101, 2));
        // Extension characters count one unit once the text is UCS-2.
        assert_eq!(shape("€ç"), ucs2(2, 1));
    }

    #[test]
    fn encoding_serializes_as_its_name() {
        assert_eq!(serde_json::to_string(&Encoding::Gsm7).unwrap(), "\"GSM-7\"");
        assert_eq!(serde_json::to_string(&Encoding::Ucs2).unwrap(), "\"UCS-2\"");
        assert_eq!(
            serde_json::to_value(shape("hi")).unwrap(),
            serde_json::json!({"encoding": "GSM-7", "units": 2, "segments": 1})
        );
    }

    /// Splits a text into parts the slow way, each with the units it holds,
    /// to check the counting against.
    fn parts(text: &str) -> (Encoding, Vec<(String, u32)>) {
        let (encoding, cost): (Encoding, fn(char) -> u32) = if is_gsm7(text) {
            (Encoding::Gsm7, |c| gsm7_cost(c).unwrap_or(0))
        } else {
            (Encoding::Ucs2, |c| c.len_utf16() as u32)
        };
        let total: u32 = text.chars().map(cost).sum();
        if total == 0 {
            return (encoding, Vec::new());
        }
        if total <= encoding.single_limit() {
            return (encoding, vec![(text.to_owned(), total)]);
        }
        let mut out: Vec<(String, u32)> = vec![(String::new(), 0)];
        for c in text.chars() {
            if out.last().map_or(0, |p| p.1) + cost(c) > encoding.part_limit() {
                out.push((String::new(), 0));
            }
            if let Some(last) = out.last_mut() {
                last.0.push(c);
                last.1 += cost(c);
            }
        }
        (encoding, out)
    }

    fn any_char() -> impl Strategy<Value = char> {
        prop_oneof![
            6 => proptest::sample::select(BASIC.chars().collect::<Vec<_>>()),
            2 => proptest::sample::select(EXTENSION.chars().collect::<Vec<_>>()),
            1 => proptest::sample::select(vec!['ç', 'ж', '中', '’', '😀', '🏽']),
            1 => any::<char>(),
        ]
    }

    fn text(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(any_char(), 0..max).prop_map(|cs| cs.into_iter().collect())
    }

    proptest! {
        #[test]
        fn appending_never_lowers_the_segment_count(s in text(400), c in any_char()) {
            let before = shape(&s);
            let after = shape(&format!("{s}{c}"));
            prop_assert!(after.segments >= before.segments, "{before:?} -> {after:?}");
            if before.encoding == after.encoding {
                prop_assert!(after.units > before.units);
            }
        }

        #[test]
        fn one_segment_iff_within_the_single_limit(s in text(400)) {
            let sh = shape(&s);
            let single = sh.units > 0 && sh.units <= sh.encoding.single_limit();
            prop_assert_eq!(sh.segments == 1, single, "{:?}", sh);
            prop_assert_eq!(sh.segments == 0, s.is_empty());
        }

        #[test]
        fn counts_agree_with_an_actual_split(s in text(600)) {
            let sh = shape(&s);
            let (encoding, parts) = parts(&s);
            prop_assert_eq!(sh.encoding, encoding);
            prop_assert_eq!(sh.segments as usize, parts.len());
            prop_assert_eq!(parts.iter().map(|p| p.0.as_str()).collect::<String>(), s.clone());
            prop_assert_eq!(sh.units, parts.iter().map(|p| p.1).sum::<u32>());
            if encoding == Encoding::Ucs2 {
                prop_assert_eq!(sh.units as usize, s.encode_utf16().count());
            }
            if parts.len() > 1 {
                for (i, (text, units)) in parts.iter().enumerate() {
                    prop_assert!(*units <= encoding.part_limit());
                    // A part was closed only because the next character did
                    // not fit, so it is at most one character short of full.
                    if i + 1 < parts.len() {
                        prop_assert!(*units + 2 > encoding.part_limit(), "{text:?}");
                    }
                }
            }
        }
    }
}
