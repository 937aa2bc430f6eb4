//! Email address normalization and validation (Django `EmailValidator` rules), and
//! sender strings of the form `Display Name <addr>`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use regex::Regex;

/// Longest address accepted (RFC 3696 errata, Django ≥ 4.2).
const MAX_EMAIL_LEN: usize = 320;

/// Django's dot-atom and quoted-string local parts.
static USER_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)^(?:[-!#$%&'*+/=?^_`{}|~0-9A-Z]+(?:\.[-!#$%&'*+/=?^_`{}|~0-9A-Z]+)*|"(?:[\x01-\x08\x0b\x0c\x0e-\x1f!#-\[\]-\x7f]|\\[\x01-\x09\x0b\x0c\x0e-\x7f])*")$"#,
    )
    .expect("valid regex")
});

/// Canonical form used as the contact key: trimmed and lowercased
/// (Unicode lowercase standing in for Python's `casefold`).
pub fn normalize(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Whether `email` is a deliverable-looking address, following Django's
/// `EmailValidator`: one `@`, a dot-atom or quoted local part, and a dotted domain
/// of valid labels (internationalized labels allowed) or an IP literal.
pub fn is_valid(email: &str) -> bool {
    if email.is_empty() || email.len() > MAX_EMAIL_LEN {
        return false;
    }
    let Some((user, domain)) = email.rsplit_once('@') else {
        return false;
    };
    USER_RE.is_match(user) && (is_domain(domain) || is_ip_literal(domain))
}

fn is_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    let Some((tld, rest)) = labels.split_last() else {
        return false;
    };
    if rest.is_empty() || !rest.iter().all(|l| is_label(l)) {
        return false;
    }
    let tld_len = tld.chars().count();
    (2..=63).contains(&tld_len)
        && !tld.ends_with('-')
        && tld.chars().all(|c| c.is_alphanumeric() || c == '-')
}

/// A DNS label: 1..=63 alphanumerics or hyphens, not starting or ending with a hyphen.
fn is_label(label: &str) -> bool {
    let len = label.chars().count();
    (1..=63).contains(&len)
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.chars().all(|c| c.is_alphanumeric() || c == '-')
}

fn is_ip_literal(domain: &str) -> bool {
    let Some(inner) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) else {
        return false;
    };
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => inner[5..].parse::<Ipv6Addr>().is_ok(),
        _ => inner.parse::<Ipv4Addr>().is_ok(),
    }
}

/// A configured sender: an address and an optional display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub display_name: Option<String>,
    pub address: String,
}

impl Sender {
    /// The header form: `addr`, or `Display Name <addr>` (the name quoted when it
    /// contains characters that would otherwise break the header).
    pub fn formatted(&self) -> String {
        match &self.display_name {
            None => self.address.clone(),
            Some(name) if name.chars().any(|c| "()<>[]:;@\\,.\"".contains(c)) => {
                let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
                format!("\"{escaped}\" <{}>", self.address)
            }
            Some(name) => format!("{name} <{}>", self.address),
        }
    }
}

/// Parses `addr` or `Display Name <addr>` (the name may be quoted). The address must
/// be valid; header-breaking CR/LF anywhere rejects the sender.
pub fn parse_sender(s: &str) -> Option<Sender> {
    let s = s.trim();
    if s.contains(['\r', '\n']) {
        return None;
    }
    let Some(open) = s.rfind('<') else {
        return is_valid(s).then(|| Sender {
            display_name: None,
            address: s.to_owned(),
        });
    };
    let address = s[open + 1..].strip_suffix('>')?.trim();
    if !is_valid(address) {
        return None;
    }
    let name = s[..open].trim();
    let name = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => name.to_owned(),
    };
    Some(Sender {
        display_name: (!name.trim().is_empty()).then(|| name.trim().to_owned()),
        address: address.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_trims_and_lowercases() {
        assert_eq!(normalize("  Alice@Example.COM \n"), "alice@example.com");
        assert_eq!(normalize("ÉLODIE@example.com"), "élodie@example.com");
    }

    #[test]
    fn accepts_ordinary_addresses() {
        for ok in [
            "a@example.com",
            "first.last+tag@sub.example.co.uk",
            "o'brien@example.ie",
            "\"quoted..name\"@example.com",
            "user@[127.0.0.1]",
            "user@[IPv6:::1]",
            "user@bücher.de",
            "x@xn--bcher-kva.de",
        ] {
            assert!(is_valid(ok), "{ok}");
        }
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in [
            "",
            "plainaddress",
            "@example.com",
            "a@",
            "a@localhost",
            "a b@example.com",
            "a@exa mple.com",
            "a..b@example.com",
            ".a@example.com",
            "a@-example.com",
            "a@example.c",
            "a@example.com-",
            "a@example..com",
            "a@b@example.com",
            "a\n@example.com",
            "a@[300.1.1.1]",
            "\"quoted name\"@example.com",
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(310));
        assert!(!is_valid(&long));
    }

    #[test]
    fn parses_plain_and_named_senders() {
        assert_eq!(
            parse_sender("noreply@example.com"),
            Some(Sender {
                display_name: None,
                address: "noreply@example.com".into()
            })
        );
        let named = parse_sender("Acme Support <support@example.com>").unwrap();
        assert_eq!(named.display_name.as_deref(), Some("Acme Support"));
        assert_eq!(named.address, "support@example.com");
        assert_eq!(named.formatted(), "Acme Support <support@example.com>");
        let quoted = parse_sender("\"Acme, Inc.\" <a@example.com>").unwrap();
        assert_eq!(quoted.display_name.as_deref(), Some("Acme, Inc."));
        assert_eq!(quoted.formatted(), "\"Acme, Inc.\" <a@example.com>");
        assert_eq!(
            parse_sender("<a@example.com>").unwrap().formatted(),
            "a@example.com"
        );
    }

    #[test]
    fn rejects_bad_senders() {
        assert_eq!(parse_sender("Acme <not-an-email>"), None);
        assert_eq!(parse_sender("Acme <a@example.com"), None);
        assert_eq!(parse_sender("Acme\r\nBcc: x@y.com <a@example.com>"), None);
        assert_eq!(parse_sender("sender-id"), None);
    }
}
