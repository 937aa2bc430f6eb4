//! Django's lexer: the template split into text, `{{ variable }}`, `{% block %}` and
//! `{# comment #}` tokens. A tag never spans a line break (Django's `tag_re` has no DOTALL),
//! and inside `{% verbatim %}` everything up to the matching end tag is text.

use std::sync::LazyLock;

use regex::Regex;

static TAG_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{%.*?%\}|\{\{.*?\}\}|\{#.*?#\}").expect("valid regex"));

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenKind {
    Text,
    Var,
    Block,
    Comment,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub kind: TokenKind,
    /// Text tokens: the text; others: what is between the delimiters, stripped.
    pub contents: String,
    pub line: usize,
}

impl Token {
    /// `split_contents()`: words split on whitespace, quoted strings (and `_("...")`)
    /// kept whole, as Django's `smart_split` does.
    pub fn split_contents(&self) -> Vec<String> {
        smart_split(&self.contents)
    }
}

pub fn tokenize(src: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut verbatim: Option<String> = None;
    let mut line = 1;
    let mut upto = 0;
    let mut push = |text: &str, in_tag: bool, line: usize, verbatim: &mut Option<String>| {
        if text.is_empty() {
            return;
        }
        tokens.push(create_token(text, in_tag, line, verbatim));
    };
    for m in TAG_RE.find_iter(src) {
        let before = &src[upto..m.start()];
        push(before, false, line, &mut verbatim);
        line += before.matches('\n').count();
        push(m.as_str(), true, line, &mut verbatim);
        upto = m.end();
    }
    push(&src[upto..], false, line, &mut verbatim);
    tokens
}

fn create_token(text: &str, in_tag: bool, line: usize, verbatim: &mut Option<String>) -> Token {
    let token = |kind, contents: &str| Token {
        kind,
        contents: contents.to_owned(),
        line,
    };
    if !in_tag {
        return token(TokenKind::Text, text);
    }
    let inner = py_strip(&text[2..text.len() - 2]);
    match &text[..2] {
        "{%" => {
            if let Some(end) = verbatim.as_deref() {
                if inner != end {
                    return token(TokenKind::Text, text);
                }
                *verbatim = None;
            } else if inner == "verbatim" || inner.starts_with("verbatim ") {
                *verbatim = Some(format!("end{inner}"));
            }
            token(TokenKind::Block, inner)
        }
        _ if verbatim.is_some() => token(TokenKind::Text, text),
        "{{" => token(TokenKind::Var, inner),
        _ => token(TokenKind::Comment, inner),
    }
}

fn py_strip(s: &str) -> &str {
    crate::fields::py_strip(s)
}

/// Django's `smart_split`: whitespace-separated words where a word may contain quoted
/// strings (with backslash escapes), which are never split.
pub fn smart_split(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut words = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if crate::fields::py_is_space(chars[i]) {
            i += 1;
            continue;
        }
        let mut word = String::new();
        while i < chars.len() && !crate::fields::py_is_space(chars[i]) {
            let c = chars[i];
            if c == '"' || c == '\'' {
                // A quoted run: up to the matching quote, escapes skipped.
                let mut j = i + 1;
                while j < chars.len() && chars[j] != c {
                    if chars[j] == '\\' {
                        j += 1;
                    }
                    j += 1;
                }
                if j < chars.len() {
                    word.extend(&chars[i..=j]);
                    i = j + 1;
                    continue;
                }
                // An unterminated quote is an ordinary character.
            }
            word.push(c);
            i += 1;
        }
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t = tokenize("a {{ x }} b {% if y %}{# c #}\n{{ z\n}}");
        let kinds: Vec<_> = t
            .iter()
            .map(|t| (t.kind.clone(), t.contents.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (TokenKind::Text, "a "),
                (TokenKind::Var, "x"),
                (TokenKind::Text, " b "),
                (TokenKind::Block, "if y"),
                (TokenKind::Comment, "c"),
                (TokenKind::Text, "\n{{ z\n}}"),
            ]
        );
    }

    #[test]
    fn verbatim_is_text() {
        let t = tokenize("{% verbatim %}{{ a }}{% endverbatim %}{{ b }}");
        assert_eq!(t[1].kind, TokenKind::Text);
        assert_eq!(t[2].contents, "endverbatim");
        assert_eq!(t[3].kind, TokenKind::Var);
    }

    #[test]
    fn smart_split_keeps_quotes() {
        assert_eq!(
            smart_split(r#"cycle "a b" 'c\'d' x|default:"q r""#),
            vec!["cycle", "\"a b\"", "'c\\'d'", "x|default:\"q r\""]
        );
    }
}
