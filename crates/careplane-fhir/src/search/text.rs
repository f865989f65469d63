//! Text normalisation shared by string index values and string search values, so that
//! `name=jose` finds `José` (FHIR: string search is case- and accent-insensitive).

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Lowercases, strips diacritics (NFD, then combining marks dropped), collapses runs of
/// whitespace to one space and trims.
pub fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    // Splitting on whitespace and rejoining with one space both collapses and trims.
    for word in s.split(char::is_whitespace).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        if word.is_ascii() {
            // Nothing to decompose: most index values take this path.
            out.extend(word.bytes().map(|b| char::from(b.to_ascii_lowercase())));
        } else {
            // Lowercase first: some lowercase forms decompose further (U+0130 -> i + dot above).
            let chars = word.chars().flat_map(char::to_lowercase).nfd();
            out.extend(chars.filter(|c| !is_combining_mark(*c)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn lowercases_and_strips_accents() {
        assert_eq!(normalize("José"), "jose");
        assert_eq!(normalize("MÜLLER"), "muller");
        assert_eq!(normalize("Ångström"), "angstrom");
        assert_eq!(normalize("Çağlar"), "caglar");
        assert_eq!(normalize("İstanbul"), "istanbul");
        // Precomposed and decomposed input normalise alike.
        assert_eq!(normalize("e\u{301}"), normalize("\u{e9}"));
    }

    #[test]
    fn collapses_and_trims_whitespace() {
        assert_eq!(normalize("  Van   der\tBerg \n"), "van der berg");
        assert_eq!(normalize("\u{a0}Anne\u{a0}\u{a0}Marie"), "anne marie");
        assert_eq!(normalize("a\u{b}b\u{2003}C"), "a b c");
        assert_eq!(normalize("   "), "");
        assert_eq!(normalize(""), "");
    }

    #[test]
    fn keeps_letters_without_decomposition() {
        assert_eq!(normalize("Straße"), "straße");
        assert_eq!(normalize("Øster"), "øster");
        assert_eq!(normalize("O'Brien-Smith 3rd"), "o'brien-smith 3rd");
    }
}
