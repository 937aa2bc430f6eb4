//! Text and HTML helpers behind the filters, each as Django (or the Python string method it
//! calls) does it: escaping, tag stripping, line breaks, truncation, wrapping, case, URL
//! quoting and `urlize`.

use std::sync::LazyLock;

use regex::Regex;
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

use crate::fields::py_is_space;

/// Django's `escape`: `& < > " '`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            _ => out.push(c),
        }
    }
    out
}

/// Python's `str.split()` (no argument).
pub fn py_split(s: &str) -> Vec<String> {
    s.split(py_is_space)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Python's `str.splitlines()`.
pub fn py_splitlines(s: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                lines.push(std::mem::take(&mut current));
            }
            '\n' | '\x0b' | '\x0c' | '\x1c' | '\x1d' | '\x1e' | '\u{85}' | '\u{2028}'
            | '\u{2029}' => lines.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// Python's `str.expandtabs()` (tab size 8).
pub fn expand_tabs(s: &str) -> String {
    let mut out = String::new();
    let mut col = 0;
    for c in s.chars() {
        match c {
            '\t' => {
                let n = 8 - col % 8;
                out.push_str(&" ".repeat(n));
                col += n;
            }
            '\n' | '\r' => {
                out.push(c);
                col = 0;
            }
            c => {
                out.push(c);
                col += 1;
            }
        }
    }
    out
}

/// Python's `str.title()`: a cased character after an uncased one is upper-cased, the
/// rest lower-cased.
pub fn py_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_cased = false;
    for c in s.chars() {
        let cased = c.is_lowercase() || c.is_uppercase();
        if cased {
            if prev_cased {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
        } else {
            out.push(c);
        }
        prev_cased = cased || (prev_cased && is_case_ignorable(c));
    }
    out
}

/// Combining marks keep a word going for `title()` (Python treats them as case-ignorable
/// only for the previous-cased test through `Py_UNICODE_ISCASED`; marks are rarely cased).
fn is_case_ignorable(c: char) -> bool {
    is_combining_mark(c)
}

/// Python's `str.capitalize()`.
pub fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => {
            let mut out: String = first.to_uppercase().collect();
            out.extend(chars.flat_map(char::to_lowercase));
            out
        }
        None => String::new(),
    }
}

/// `\r\n` and `\r` to `\n` (Django's `normalize_newlines`).
pub fn normalize_newlines(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

/// Django's `linebreaks`: paragraphs split on blank lines, `<br>` inside.
pub fn linebreaks(value: &str, autoescape: bool) -> String {
    static PARA_RE: LazyLock<Regex> = LazyLock::new(|| Regex::new("\n{2,}").expect("regex"));
    let value = normalize_newlines(value);
    PARA_RE
        .split(&value)
        .map(|p| {
            let p = if autoescape { escape(p) } else { p.to_owned() };
            format!("<p>{}</p>", p.replace('\n', "<br>"))
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Django's `strip_tags` (HTMLParser-based): tags, comments and declarations go, text and
/// entity references stay; repeated until no tag is left.
pub fn strip_tags(value: &str) -> String {
    let mut value = value.to_owned();
    for _ in 0..50 {
        if !(value.contains('<') && value.contains('>')) {
            break;
        }
        let new = strip_once(&value);
        if new.matches('<').count() == value.matches('<').count() {
            break;
        }
        value = new;
    }
    value
}

fn strip_once(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut text_start = 0;
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &s[i..];
        let end = if let Some(comment) = rest.strip_prefix("<!--") {
            comment.find("-->").map(|e| i + 4 + e + 3)
        } else if rest.len() > 1
            && (b[i + 1].is_ascii_alphabetic()
                || b[i + 1] == b'/'
                || b[i + 1] == b'!'
                || b[i + 1] == b'?')
        {
            tag_end(s, i)
        } else {
            None
        };
        match end {
            Some(end) => {
                out.push_str(&s[text_start..i]);
                i = end;
                text_start = end;
            }
            None if rest.len() > 1 && b[i + 1].is_ascii_alphabetic() && tag_end(s, i).is_none() => {
                // An unterminated tag at the end: HTMLParser drops it on close.
                out.push_str(&s[text_start..i]);
                return out;
            }
            None => i += 1,
        }
    }
    out.push_str(&s[text_start..]);
    out
}

/// The end (exclusive) of the tag opening at `start`, quotes respected.
fn tag_end(s: &str, start: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = start + 1;
    let mut quote: Option<u8> = None;
    while i < b.len() {
        match (quote, b[i]) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') if b[i - 1] == b'=' => quote = Some(b[i]),
            (None, b'>') => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Django's `Truncator.chars` (plain text): `length` characters including the `…`,
/// combining marks not counted, the text NFC-normalized first.
pub fn truncate_chars(text: &str, length: i64) -> String {
    if length <= 0 {
        return String::new();
    }
    let text: String = text.nfc().collect();
    let truncate_len = (length - 1).max(0) as usize;
    let length = length as usize;
    let mut s_len = 0;
    let mut end_index: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if is_combining_mark(c) {
            continue;
        }
        s_len += 1;
        if end_index.is_none() && s_len > truncate_len {
            end_index = Some(i);
        }
        if s_len > length {
            return format!("{}…", &text[..end_index.unwrap_or(0)]);
        }
    }
    text
}

/// One piece of markup as Python's `HTMLParser` reports it to Django's truncating parser.
enum HtmlToken<'a> {
    /// Text between tags, charrefs converted.
    Data(String),
    /// A start tag: its source text, lowercased name, and whether it closes itself (`/>`).
    Start(&'a str, String, bool),
    /// An end tag's lowercased name.
    End(String),
    /// A comment, declaration or processing instruction (Django's parser drops them).
    Other,
}

/// Elements without an end tag (`django.utils.html.VOID_ELEMENTS`).
const VOID_ELEMENTS: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr", "frame", "spacer",
];

/// Splits markup as `HTMLParser(convert_charrefs=True)` does for ordinary documents: tags by
/// `<` + letter (quoted attribute values may hold `>`), end tags by `</` + letter, comments,
/// declarations and processing instructions; any other `<` is a one-character text piece.
fn html_tokens(text: &str) -> Vec<HtmlToken<'_>> {
    let mut tokens = Vec::new();
    let bytes = text.as_bytes();
    let (mut i, mut data_start) = (0, 0);
    let flush = |tokens: &mut Vec<HtmlToken<'_>>, from: usize, to: usize| {
        if to > from {
            tokens.push(HtmlToken::Data(html_unescape(&text[from..to])));
        }
    };
    while i < bytes.len() {
        if bytes[i] != b'<' {
            i += 1;
            continue;
        }
        let next = bytes.get(i + 1).copied().unwrap_or(0);
        let end_of =
            |from: usize, close: &str| text[from..].find(close).map(|p| from + p + close.len());
        let (token, end) = if next.is_ascii_alphabetic() {
            // Find the closing `>` outside quotes.
            let mut j = i + 1;
            let mut quote = 0u8;
            while j < bytes.len() {
                let b = bytes[j];
                if quote != 0 {
                    if b == quote {
                        quote = 0;
                    }
                } else if b == b'"' || b == b'\'' {
                    quote = b;
                } else if b == b'>' {
                    break;
                }
                j += 1;
            }
            if j >= bytes.len() {
                break; // an unfinished tag: the rest is text
            }
            let raw = &text[i..=j];
            let name: String = raw[1..]
                .chars()
                .take_while(|c| !matches!(c, '\t' | '\n' | '\r' | '\x0c' | ' ' | '/' | '>' | '\0'))
                .collect::<String>()
                .to_lowercase();
            (HtmlToken::Start(raw, name, raw.ends_with("/>")), j + 1)
        } else if next == b'/' && bytes.get(i + 2).is_some_and(u8::is_ascii_alphabetic) {
            let Some(end) = end_of(i, ">") else { break };
            let name: String = text[i + 2..end - 1]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'))
                .collect::<String>()
                .to_lowercase();
            (HtmlToken::End(name), end)
        } else if text[i..].starts_with("<!--") {
            let Some(end) = end_of(i + 4, "-->") else {
                break;
            };
            (HtmlToken::Other, end)
        } else if next == b'!' || next == b'?' {
            let Some(end) = end_of(i, ">") else { break };
            (HtmlToken::Other, end)
        } else {
            // A lone `<`: its own piece of text.
            flush(&mut tokens, data_start, i);
            tokens.push(HtmlToken::Data("<".to_owned()));
            i += 1;
            data_start = i;
            continue;
        };
        flush(&mut tokens, data_start, i);
        tokens.push(token);
        i = end;
        data_start = i;
    }
    flush(&mut tokens, data_start, bytes.len());
    tokens
}

/// Django's `Truncator.chars(length, html=True)` / `.words(length, html=True, truncate=" …")`
/// (its `TruncateHTMLParser`): text is counted and escaped, start tags kept as written, end
/// tags rewritten lowercase, comments dropped, and the tags still open closed after the cut.
pub fn truncate_html(text: &str, length: i64, words: bool) -> String {
    if length <= 0 {
        return String::new();
    }
    let normalized: String;
    let text = if words {
        text
    } else {
        normalized = text.nfc().collect();
        &normalized
    };
    let raw_len = text.chars().count();
    let total = length as usize;
    // `calculate_truncate_chars_length`: room for the `…`.
    let mut remaining = if words { total } else { total - 1 };
    let mut processed = 0usize;
    let mut out = String::new();
    let mut open: Vec<String> = Vec::new();
    let mut done = false;
    for token in html_tokens(text) {
        match token {
            HtmlToken::Start(raw, name, self_closing) => {
                out.push_str(raw);
                let void = VOID_ELEMENTS.contains(&name.as_str());
                if !void {
                    if self_closing {
                        out.push_str(&format!("</{name}>"));
                    } else {
                        open.push(name);
                    }
                }
            }
            HtmlToken::End(name) => {
                if !VOID_ELEMENTS.contains(&name.as_str()) {
                    out.push_str(&format!("</{name}>"));
                    if open.last() == Some(&name) {
                        open.pop();
                    }
                }
            }
            HtmlToken::Other => {}
            HtmlToken::Data(data) if words => {
                let pieces = split_words_inner(&data);
                let output = escape(&pieces[..remaining.min(pieces.len())].join(" "));
                if remaining < pieces.len() {
                    out.push_str(&output);
                    if !output.ends_with(" …") {
                        out.push_str(" …");
                    }
                    done = true;
                    break;
                }
                remaining -= pieces.len();
                out.push_str(&output);
            }
            HtmlToken::Data(data) => {
                let n = data.chars().count();
                processed += n;
                if processed == total && out.chars().count() + n == raw_len {
                    out.push_str(&data);
                    done = true;
                    break;
                }
                let kept: String = data.chars().take(remaining).collect();
                let output = escape(&kept);
                if remaining < n {
                    out.push_str(&output);
                    if !output.ends_with('…') {
                        out.push('…');
                    }
                    done = true;
                    break;
                }
                remaining -= n;
                out.push_str(&output);
            }
        }
    }
    if done {
        for name in open.iter().rev() {
            out.push_str(&format!("</{name}>"));
        }
    }
    out
}

/// Python's `re.split(r"(?<=\S)\s+(?=\S)", data)`: split at inner whitespace runs only.
fn split_words_inner(data: &str) -> Vec<String> {
    let chars: Vec<char> = data.chars().collect();
    let mut pieces = vec![String::new()];
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() && i > 0 && !chars[i - 1].is_whitespace() {
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            if j < chars.len() {
                pieces.push(String::new());
                i = j;
                continue;
            }
        }
        pieces.last_mut().expect("one piece").push(c);
        i += 1;
    }
    pieces
}

/// Django's `wrap` (textwrap without breaking long words or on hyphens, whitespace kept
/// except where a line breaks).
pub fn wrap(text: &str, width: usize) -> String {
    let mut result: Vec<String> = Vec::new();
    for line in py_splitlines(text) {
        let wrapped = wrap_line(&line, width);
        if wrapped.is_empty() {
            result.push(line);
        } else {
            result.extend(wrapped);
        }
    }
    if text.ends_with('\n') {
        result.push(String::new());
    }
    result.join("\n")
}

/// textwrap.TextWrapper.wrap for one line: chunks are runs of whitespace or non-whitespace;
/// whitespace at a line's start (except the first) and end is dropped.
fn wrap_line(line: &str, width: usize) -> Vec<String> {
    let line = expand_tabs(line);
    let mut chunks: Vec<String> = Vec::new();
    for c in line.chars() {
        let space = py_is_space(c);
        match chunks.last_mut() {
            Some(last) if last.chars().next().is_some_and(py_is_space) == space => last.push(c),
            _ => chunks.push(c.to_string()),
        }
    }
    chunks.reverse();
    let mut lines = Vec::new();
    while !chunks.is_empty() {
        let mut cur: Vec<String> = Vec::new();
        let mut cur_len = 0;
        if !lines.is_empty() && chunks.last().is_some_and(|c| c.chars().all(py_is_space)) {
            chunks.pop();
        }
        while let Some(chunk) = chunks.last() {
            let l = chunk.chars().count();
            if cur_len + l <= width {
                cur_len += l;
                cur.push(chunks.pop().expect("chunk"));
            } else {
                break;
            }
        }
        if chunks.last().is_some_and(|c| c.chars().count() > width) && cur.is_empty() {
            cur.push(chunks.pop().expect("chunk"));
        }
        if cur.last().is_some_and(|c| c.chars().all(py_is_space)) {
            cur.pop();
        }
        if !cur.is_empty() {
            lines.push(cur.concat());
        }
    }
    lines
}

/// Python's `urllib.parse.quote(text, safe)`: UTF-8 percent-encoding of all but letters,
/// digits, `_.-~` and the safe characters.
pub fn quote(text: &str, safe: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || "_.-~".contains(c) || safe.contains(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// Django's `iri_to_uri`.
pub fn iri_to_uri(text: &str) -> String {
    quote(text, "/#%[]=:;$&()+,!?*@'~")
}

/// Django's `escapejs`.
pub fn escapejs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let code = c as u32;
        let escaped = matches!(
            c,
            '\\' | '\'' | '"' | '>' | '<' | '&' | '=' | '-' | ';' | '`'
        ) || code < 32
            || c == '\u{2028}'
            || c == '\u{2029}';
        if escaped {
            out.push_str(&format!("\\u{code:04X}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// Django's `slugify`: NFKD, ASCII only, lowercase, `[^\w\s-]` removed, runs of dashes and
/// whitespace to one dash, leading/trailing `-_` stripped.
pub fn slugify(text: &str) -> String {
    let ascii: String = text.nfkd().filter(char::is_ascii).collect();
    let cleaned: String = ascii
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-' || c.is_ascii_whitespace())
        .collect();
    static SEP_RE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"[-\s]+").expect("regex"));
    SEP_RE
        .replace_all(&cleaned, "-")
        .trim_matches(['-', '_'])
        .to_owned()
}

/// Django's `phone2numeric`.
pub fn phone2numeric(text: &str) -> String {
    text.chars()
        .map(|c| match c.to_ascii_lowercase() {
            'a' | 'b' | 'c' => '2',
            'd' | 'e' | 'f' => '3',
            'g' | 'h' | 'i' => '4',
            'j' | 'k' | 'l' => '5',
            'm' | 'n' | 'o' => '6',
            'p' | 'q' | 'r' | 's' => '7',
            't' | 'u' | 'v' => '8',
            'w' | 'x' | 'y' | 'z' => '9',
            _ => c,
        })
        .collect()
}

/// Django's `urlize` for the common cases: `http(s)://` and `www.` links, bare domains on
/// the seven original gTLDs, and email addresses, with wrapping and trailing punctuation
/// kept outside the link.
pub fn urlize(
    text: &str,
    trim_limit: Option<usize>,
    nofollow: bool,
    autoescape: bool,
    safe_input: bool,
) -> String {
    static WORD_SPLIT: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r#"[\s<>"']+"#).expect("regex"));
    static SIMPLE_URL: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?i)^https?://\[?\w").expect("regex"));
    static SIMPLE_URL_2: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(?i)^www\.|^[a-z0-9\u{a1}-\u{ffff}](?:[a-z0-9\u{a1}-\u{ffff}-]{0,61}[a-z0-9\u{a1}-\u{ffff}])?(?:\.(?:[a-z0-9\u{a1}-\u{ffff}](?:[a-z0-9\u{a1}-\u{ffff}-]{0,61}[a-z0-9\u{a1}-\u{ffff}])?))*\.(com|edu|gov|int|mil|net|org)($|/.*)$")
            .expect("regex")
    });
    let mut out = String::with_capacity(text.len() + 32);
    let mut last = 0;
    let mut words: Vec<(&str, bool)> = Vec::new();
    for m in WORD_SPLIT.find_iter(text) {
        words.push((&text[last..m.start()], false));
        words.push((m.as_str(), true));
        last = m.end();
    }
    words.push((&text[last..], false));
    for (word, is_sep) in words {
        let plain = |w: &str| {
            if safe_input || !autoescape {
                w.to_owned()
            } else {
                escape(w)
            }
        };
        if is_sep || !(word.contains('.') || word.contains('@') || word.contains(':')) {
            out.push_str(&plain(word));
            continue;
        }
        let (lead, middle, trail) = trim_punctuation(word);
        let mut nofollow_attr = if nofollow { " rel=\"nofollow\"" } else { "" };
        let url = if middle.len() <= 2048 && SIMPLE_URL.is_match(&middle) {
            Some(smart_urlquote(&html_unescape(&middle)))
        } else if middle.len() <= 2048
            && SIMPLE_URL_2.is_match(&middle)
            && !middle.to_ascii_lowercase().starts_with("http")
        {
            Some(smart_urlquote(&format!(
                "http://{}",
                html_unescape(&middle)
            )))
        } else if !middle.contains(':') && crate::email::is_valid(&middle) {
            let (local, domain) = middle.rsplit_once('@').expect("an @");
            nofollow_attr = "";
            Some(format!("mailto:{}@{}", quote(local, ""), quote(domain, "")))
        } else {
            None
        };
        match url {
            Some(url) => {
                let mut trimmed = match trim_limit {
                    Some(limit) if middle.chars().count() > limit => format!(
                        "{}…",
                        middle
                            .chars()
                            .take(limit.saturating_sub(1))
                            .collect::<String>()
                    ),
                    _ => middle.clone(),
                };
                let (mut lead, mut trail) = (lead, trail);
                if autoescape && !safe_input {
                    lead = escape(&lead);
                    trail = escape(&trail);
                    trimmed = escape(&trimmed);
                }
                out.push_str(&format!(
                    "{lead}<a href=\"{}\"{nofollow_attr}>{trimmed}</a>{trail}",
                    escape(&url)
                ));
            }
            None => out.push_str(&plain(word)),
        }
    }
    out
}

/// Django 6's `Urlizer.trim_punctuation`, quirks included (a wrapping close *replaces* the
/// trail gathered so far, so `(url).` loses its `.`; the closing count is tracked, not
/// recounted). Works on chars, as Python slices.
fn trim_punctuation(word: &str) -> (String, String, String) {
    const TRAILING: &[char] = &['.', ',', ':', ';', '!'];
    const TRAILING_NO_SEMICOLON: &[char] = &['.', ',', ':', '!'];
    let chars: Vec<char> = word.chars().collect();
    let lead_len = chars.iter().take_while(|c| matches!(c, '(' | '[')).count();
    let lead: String = chars[..lead_len].iter().collect();
    let mut middle: Vec<char> = chars[lead_len..].to_vec();
    let mut trail: Vec<char> = Vec::new();
    let count = |m: &[char], c: char| m.iter().filter(|x| **x == c).count() as i64;
    let mut counts: Vec<(char, char, i64, i64)> = [('(', ')'), ('[', ']')]
        .iter()
        .map(|&(o, c)| (o, c, count(&middle, o), count(&middle, c)))
        .collect();
    let rstrip = |m: &[char], set: &[char]| {
        let mut n = m.len();
        while n > 0 && set.contains(&m[n - 1]) {
            n -= 1;
        }
        n
    };
    let mut trimmed = true;
    while trimmed && !middle.is_empty() {
        trimmed = false;
        for (_, close, opens, closes) in counts.iter_mut() {
            if *opens < *closes && middle.last() == Some(close) {
                let strip = ((*closes - *opens) as usize).min(middle.len());
                let cut = middle.len() - strip;
                trail = middle[cut..].to_vec();
                middle.truncate(cut);
                trimmed = true;
                *closes -= strip as i64;
            }
        }
        let amp = middle.iter().rposition(|c| *c == '&');
        let set = if amp.is_none() {
            TRAILING
        } else {
            TRAILING_NO_SEMICOLON
        };
        let kept = rstrip(&middle, set);
        if kept != middle.len() {
            let mut t = middle[kept..].to_vec();
            t.extend(trail);
            trail = t;
            middle.truncate(kept);
            trimmed = true;
        }
        if middle.last() == Some(&';') {
            // Only strip if not part of an HTML entity.
            let potential: String = middle[amp.unwrap_or(0)..].iter().collect();
            let escaped = html_unescape(&potential);
            if escaped == potential || escaped.ends_with(';') {
                let trail_start = rstrip(&middle, TRAILING);
                let semicolons = middle.len() - rstrip(&middle, &[';']);
                let mut t: Vec<char>;
                if amp.is_some() && semicolons > 1 {
                    // Leave up to the most recent semicolon: it may end an entity.
                    let recent = middle[trail_start..]
                        .iter()
                        .position(|c| *c == ';')
                        .expect("ends with ;");
                    let keep_to = recent + trail_start + 1;
                    t = middle[keep_to..].to_vec();
                    t.extend(trail);
                    middle.truncate(keep_to);
                } else {
                    t = middle[trail_start..].to_vec();
                    t.extend(trail);
                    middle.truncate(trail_start);
                }
                trail = t;
                trimmed = true;
            }
        }
    }
    (
        lead,
        middle.into_iter().collect(),
        trail.into_iter().collect(),
    )
}

/// Django's `smart_urlquote`: quote what is not already URL-safe, keeping `%XX` escapes.
fn smart_urlquote(url: &str) -> String {
    quote(url, "!*'();:@&=+$,/?#[]~%")
}

/// Python's `html.unescape` for the common entities.
pub fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_and_splits() {
        assert_eq!(py_title("hello wORLD 1st"), "Hello World 1St");
        assert_eq!(py_split("  a b\tc\n"), vec!["a", "b", "c"]);
        assert_eq!(py_splitlines("a\r\nb\n\nc"), vec!["a", "b", "", "c"]);
    }

    #[test]
    fn stripping_tags() {
        assert_eq!(
            strip_tags("<p>Hello <b>you</b></p> 1 < 2"),
            "Hello you 1 < 2"
        );
        assert_eq!(strip_tags("a<!-- c -->b"), "ab");
    }

    #[test]
    fn truncation_and_wrap() {
        assert_eq!(truncate_chars("Joel is a slug", 7), "Joel i…");
        assert_eq!(wrap("Joel is a slug", 5), "Joel\nis a\nslug");
    }

    #[test]
    fn urls() {
        assert_eq!(quote("a b/ü", "/"), "a%20b/%C3%BC");
        assert_eq!(slugify(" Joël is a slug! "), "joel-is-a-slug");
        assert_eq!(
            urlize("see www.example.com.", None, true, false, false),
            "see <a href=\"http://www.example.com\" rel=\"nofollow\">www.example.com</a>."
        );
    }
}
