//! Django-compatible slugs: template keys, sender ids and scope slugs.

/// Django's `validate_slug`: `^[-a-zA-Z0-9_]+$`.
pub fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Django's `slugify` (without `allow_unicode`): accents folded to ASCII where we
/// know them, other non-ASCII dropped, lowercase, characters other than word
/// characters, spaces and hyphens removed, runs of spaces/hyphens turned into one
/// hyphen, and leading/trailing `-`/`_` stripped.
pub fn slugify(s: &str) -> String {
    let mut cleaned = String::with_capacity(s.len());
    for c in s.chars() {
        let c = fold_accent(c);
        if c.is_ascii_alphanumeric() || c == '_' {
            cleaned.push(c.to_ascii_lowercase());
        } else if c == '-' || c.is_ascii_whitespace() {
            cleaned.push(c);
        }
    }
    let mut out = String::with_capacity(cleaned.len());
    let mut in_separator_run = false;
    for c in cleaned.chars() {
        if c == '-' || c.is_ascii_whitespace() {
            if !in_separator_run {
                out.push('-');
            }
            in_separator_run = true;
        } else {
            out.push(c);
            in_separator_run = false;
        }
    }
    out.trim_matches(['-', '_']).to_owned()
}

/// The ASCII base letter of common Latin accented letters (what NFKD + ASCII
/// filtering gives in Python); other characters are returned unchanged.
fn fold_accent(c: char) -> char {
    const TABLE: [(&str, char); 14] = [
        ("àáâãäåāăą", 'a'),
        ("ÀÁÂÃÄÅĀĂĄ", 'A'),
        ("çćĉċč", 'c'),
        ("ÇĆĈĊČ", 'C'),
        ("èéêëēĕėęě", 'e'),
        ("ÈÉÊËĒĔĖĘĚ", 'E'),
        ("ìíîïĩīĭį", 'i'),
        ("ÌÍÎÏĨĪĬĮ", 'I'),
        ("ñńņň", 'n'),
        ("ÑŃŅŇ", 'N'),
        ("òóôõöōŏő", 'o'),
        ("ÒÓÔÕÖŌŎŐ", 'O'),
        ("ùúûüũūŭůűų", 'u'),
        ("ÙÚÛÜŨŪŬŮŰŲ", 'U'),
    ];
    if c.is_ascii() {
        return c;
    }
    TABLE
        .iter()
        .find(|(accented, _)| accented.contains(c))
        .map_or(c, |(_, base)| *base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_validation() {
        assert!(is_slug("welcome-email_2"));
        assert!(!is_slug(""));
        assert!(!is_slug("has space"));
        assert!(!is_slug("a@b.com"));
        assert!(!is_slug("slash/key"));
        assert!(!is_slug("émoji"));
    }

    #[test]
    fn slugify_matches_django() {
        assert_eq!(slugify("Hello World!"), "hello-world");
        assert_eq!(slugify("  Joel is a slug  "), "joel-is-a-slug");
        assert_eq!(slugify("a -- b"), "a-b");
        assert_eq!(slugify("_-trim me-_"), "trim-me");
        assert_eq!(slugify("Crème Brûlée"), "creme-brulee");
        assert_eq!(slugify("snake_case_kept"), "snake_case_kept");
        assert_eq!(slugify("日本"), "");
    }
}
