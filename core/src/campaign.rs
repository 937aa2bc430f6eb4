//! Campaign mail bodies (facts §3.8): absolute http(s) links rewritten through the click
//! redirect with a signed destination, the unsubscribe footer, the open pixel, and the RFC 8058
//! headers. A body is parsed once per campaign ([`PreparedBody`]) and rendered per recipient
//! by filling in its tokens, so a fan-out of 100,000 recipients parses the HTML once.

use std::sync::LazyLock;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use regex::Regex;

use crate::tracking::{is_allowed_destination, Purpose, TrackingKeys};

/// The tokens previews carry (as the original's preview).
pub const PREVIEW_TRACKING_TOKEN: &str = "preview-tracking-token";
pub const PREVIEW_UNSUBSCRIBE_TOKEN: &str = "preview-unsubscribe-token";

/// What `u=` may leave unescaped (Python's `quote_plus` safe set, with `%20` for spaces).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

static ANCHOR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?is)<a\b[^>]*>").expect("anchor regex"));
static HREF: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?is)(\shref\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))"#).expect("href regex")
});

#[derive(Debug, Clone)]
enum Segment {
    Html(String),
    /// A tracked link: the destination as the author wrote it (entities decoded).
    Link(String),
}

/// A campaign's HTML and text, ready to render per recipient.
#[derive(Debug, Clone)]
pub struct PreparedBody {
    segments: Vec<Segment>,
    text: String,
}

/// The per-recipient URLs.
pub struct RecipientLinks {
    pub open_pixel: String,
    pub unsubscribe: String,
}

impl PreparedBody {
    pub fn new(html: &str, text: &str) -> PreparedBody {
        let mut segments = Vec::new();
        let mut last = 0;
        for anchor in ANCHOR.find_iter(html) {
            let tag = anchor.as_str();
            let Some(href) = HREF.captures(tag) else {
                continue;
            };
            let raw = href
                .get(2)
                .or_else(|| href.get(3))
                .or_else(|| href.get(4))
                .map_or("", |m| m.as_str());
            let destination = unescape_html(raw.trim());
            if !is_allowed_destination(&destination) {
                continue;
            }
            let whole = href.get(0).expect("match");
            let value_start = anchor.start() + whole.start();
            let value_end = anchor.start() + whole.end();
            let prefix = href.get(1).expect("prefix").as_str();
            segments.push(Segment::Html(format!(
                "{}{prefix}\"",
                &html[last..value_start]
            )));
            segments.push(Segment::Link(destination));
            segments.push(Segment::Html("\"".into()));
            last = value_end;
        }
        segments.push(Segment::Html(html[last..].to_string()));
        PreparedBody {
            segments,
            text: text.to_string(),
        }
    }

    /// The destinations of the tracked links, in order.
    pub fn links(&self) -> Vec<&str> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Link(d) => Some(d.as_str()),
                Segment::Html(_) => None,
            })
            .collect()
    }

    /// The HTML and text for one recipient's tokens.
    pub fn render(
        &self,
        base_url: &str,
        keys: &TrackingKeys,
        tracking_token: &str,
        unsubscribe_token: &str,
    ) -> (String, String) {
        let links = recipient_links(base_url, tracking_token, unsubscribe_token);
        let mut html = String::with_capacity(self.segments.iter().map(len).sum::<usize>() + 400);
        for segment in &self.segments {
            match segment {
                Segment::Html(h) => html.push_str(h),
                Segment::Link(destination) => {
                    let url = click_url(base_url, keys, tracking_token, destination);
                    html.push_str(&escape_attribute(&url));
                }
            }
        }
        html.push_str(&format!(
            "\n<p><a href=\"{}\">Unsubscribe or manage preferences</a></p>\n<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\" />",
            escape_attribute(&links.unsubscribe),
            escape_attribute(&links.open_pixel)
        ));
        let body = self.text.trim_end();
        let text = if body.is_empty() {
            format!("Unsubscribe or manage preferences: {}", links.unsubscribe)
        } else {
            format!(
                "{body}\n\nUnsubscribe or manage preferences: {}",
                links.unsubscribe
            )
        };
        (html, text)
    }
}

fn len(segment: &Segment) -> usize {
    match segment {
        Segment::Html(h) => h.len(),
        Segment::Link(d) => d.len() + 120,
    }
}

/// `<base>/t/o/<t>.gif` and `<base>/unsubscribe/<u>`.
pub fn recipient_links(base_url: &str, tracking: &str, unsubscribe: &str) -> RecipientLinks {
    let base = base_url.trim_end_matches('/');
    RecipientLinks {
        open_pixel: format!("{base}/t/o/{tracking}.gif"),
        unsubscribe: format!("{base}/unsubscribe/{unsubscribe}"),
    }
}

/// `<base>/t/c/<t>?u=<destination>&s=<signature>`.
pub fn click_url(base_url: &str, keys: &TrackingKeys, token: &str, destination: &str) -> String {
    format!(
        "{}/t/c/{token}?u={}&s={}",
        base_url.trim_end_matches('/'),
        utf8_percent_encode(destination, QUERY_VALUE),
        keys.click_signature(token, destination)
    )
}

/// The two tokens of a campaign recipient.
pub fn recipient_tokens(keys: &TrackingKeys, recipient_id: i64) -> (String, String) {
    (
        keys.token(Purpose::Tracking, recipient_id),
        keys.token(Purpose::Unsubscribe, recipient_id),
    )
}

/// RFC 2369 / RFC 8058 headers: the https one-click URL, and a mailto when configured.
pub fn list_unsubscribe_headers(
    unsubscribe_url: &str,
    mailto: Option<&str>,
) -> Vec<(String, String)> {
    let value = match mailto {
        Some(address) => format!("<{unsubscribe_url}>, <mailto:{address}?subject=unsubscribe>"),
        None => format!("<{unsubscribe_url}>"),
    };
    vec![
        ("List-Unsubscribe".into(), value),
        (
            "List-Unsubscribe-Post".into(),
            "List-Unsubscribe=One-Click".into(),
        ),
    ]
}

fn escape_attribute(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The entities an author writes in an href (`&amp;` above all), decoded.
fn unescape_html(value: &str) -> String {
    if !value.contains('&') {
        return value.to_string();
    }
    static ENTITY: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|amp|quot|apos|lt|gt|#39);?").expect("entity")
    });
    ENTITY
        .replace_all(value, |c: &regex::Captures| {
            let e = &c[1];
            match e {
                "amp" => "&".to_string(),
                "quot" => "\"".to_string(),
                "apos" | "#39" => "'".to_string(),
                "lt" => "<".to_string(),
                "gt" => ">".to_string(),
                _ => {
                    let n = if let Some(hex) = e.strip_prefix("#x").or(e.strip_prefix("#X")) {
                        u32::from_str_radix(hex, 16).ok()
                    } else {
                        e[1..].parse().ok()
                    };
                    n.and_then(char::from_u32)
                        .map(String::from)
                        .unwrap_or_else(|| c[0].to_string())
                }
            }
        })
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TrackingKeys {
        TrackingKeys::new(vec![(1, vec![3u8; 32])]).unwrap()
    }

    #[test]
    fn absolute_links_are_tracked_and_the_rest_left_alone() {
        let body = PreparedBody::new(
            r#"<p><a href="https://example.com/a?x=1&amp;y=2">A</a> <a class="b" href='mailto:x@y.z'>m</a> <a href="/rel">r</a> <A HREF=http://e.org/z>z</A></p>"#,
            "Hello  \n",
        );
        assert_eq!(
            body.links(),
            vec!["https://example.com/a?x=1&y=2", "http://e.org/z"]
        );
        let k = keys();
        let (html, text) = body.render("https://mail.example/", &k, "TT", "UU");
        let sig = k.click_signature("TT", "https://example.com/a?x=1&y=2");
        assert!(
            html.contains(&format!(
                r#"<a href="https://mail.example/t/c/TT?u=https%3A%2F%2Fexample.com%2Fa%3Fx%3D1%26y%3D2&amp;s={sig}">A</a>"#
            )),
            "{html}"
        );
        assert!(html.contains(r#"href='mailto:x@y.z'"#), "{html}");
        assert!(html.contains(r#"<a href="/rel">"#), "{html}");
        assert!(
            html.contains(
                r#"<A HREF="https://mail.example/t/c/TT?u=http%3A%2F%2Fe.org%2Fz&amp;s="#
            ),
            "{html}"
        );
        assert!(html.ends_with(
            "\n<p><a href=\"https://mail.example/unsubscribe/UU\">Unsubscribe or manage preferences</a></p>\n<img src=\"https://mail.example/t/o/TT.gif\" width=\"1\" height=\"1\" alt=\"\" />"
        ));
        assert_eq!(
            text,
            "Hello\n\nUnsubscribe or manage preferences: https://mail.example/unsubscribe/UU"
        );
    }

    #[test]
    fn an_empty_text_body_is_just_the_unsubscribe_line() {
        let (_, text) = PreparedBody::new("", "  ").render("http://h", &keys(), "t", "u");
        assert_eq!(
            text,
            "Unsubscribe or manage preferences: http://h/unsubscribe/u"
        );
    }

    #[test]
    fn the_one_click_headers() {
        let h =
            list_unsubscribe_headers("https://m.example/unsubscribe/U", Some("unsub@m.example"));
        assert_eq!(
            h[0].1,
            "<https://m.example/unsubscribe/U>, <mailto:unsub@m.example?subject=unsubscribe>"
        );
        assert_eq!(
            h[1],
            (
                "List-Unsubscribe-Post".into(),
                "List-Unsubscribe=One-Click".into()
            )
        );
    }
}
