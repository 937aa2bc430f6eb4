//! Template rendering. Client templates are written in the Django template
//! language; we translate the subset in use (facts §3.2) to minijinja syntax and
//! render with Django's semantics where they differ: missing variables print as
//! nothing, `default` replaces any falsy value, `for` over nothing loops zero times.
//!
//! Escaping (fixes the original's [GAP]: its CLI promises escaping the renderer
//! never did): `html_body` is HTML-autoescaped, `subject` and `text_body` are not.
//! A rendered subject has line breaks folded into spaces so it cannot inject headers.

use std::borrow::Cow;
use std::sync::LazyLock;

use minijinja::value::ValueKind;
use minijinja::{AutoEscape, Environment, ErrorKind, State, UndefinedBehavior, Value};

/// The three template fields of a transactional template or campaign.
#[derive(Debug, Clone, Copy)]
pub struct TemplateSource<'a> {
    pub subject: &'a str,
    pub html_body: &'a str,
    pub text_body: &'a str,
}

/// The rendered message parts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rendered {
    pub subject: String,
    pub html_body: String,
    pub text_body: String,
}

/// A template that does not compile or render; `field` is `subject`, `html_body`
/// or `text_body`.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RenderError {
    pub field: &'static str,
    pub message: String,
}

/// Template names; the `.html` suffix switches autoescaping on.
const SUBJECT: (&str, &str) = ("subject", "subject.txt");
const HTML_BODY: (&str, &str) = ("html_body", "html_body.html");
const TEXT_BODY: (&str, &str) = ("text_body", "text_body.txt");

/// Filters a template may use: our Django-flavoured ones plus minijinja's builtins.
const OWN_FILTERS: &[&str] = &[
    "default",
    "default_if_none",
    "linebreaksbr",
    "striptags",
    "capfirst",
    "truncatechars",
    "length",
    "add",
    "dj_iter",
    "dj_items",
];
const BUILTIN_FILTERS: &[&str] = &[
    "safe",
    "escape",
    "e",
    "lower",
    "upper",
    "title",
    "capitalize",
    "replace",
    "count",
    "dictsort",
    "items",
    "reverse",
    "trim",
    "join",
    "split",
    "lines",
    "d",
    "round",
    "abs",
    "int",
    "float",
    "attr",
    "first",
    "last",
    "min",
    "max",
    "sort",
    "list",
    "string",
    "bool",
    "batch",
    "slice",
    "sum",
    "indent",
    "select",
    "reject",
    "selectattr",
    "rejectattr",
    "map",
    "groupby",
    "unique",
    "chain",
    "zip",
    "pprint",
    "format",
    "tojson",
];

/// One environment for the whole process: filters are registered once, and
/// templates are compiled per render (microseconds for message-sized templates).
static ENV: LazyLock<Environment<'static>> = LazyLock::new(build_env);

fn build_env<'a>() -> Environment<'a> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_keep_trailing_newline(true);
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env.set_formatter(format_value);
    env.add_filter("default", default);
    env.add_filter("default_if_none", default_if_none);
    env.add_filter("linebreaksbr", linebreaksbr);
    env.add_filter("striptags", striptags);
    env.add_filter("capfirst", capfirst);
    env.add_filter("truncatechars", truncatechars);
    env.add_filter("length", length);
    env.add_filter("add", add);
    env.add_filter("dj_iter", iterable);
    env.add_filter("dj_items", items);
    env
}

/// Renders all three fields with `context` (a JSON object; anything else renders
/// as if no variables were given).
pub fn render(src: &TemplateSource, context: &serde_json::Value) -> Result<Rendered, RenderError> {
    let ctx = if context.is_object() {
        Value::from_serialize(context)
    } else {
        Value::from(std::collections::BTreeMap::<String, Value>::new())
    };
    let subject = render_field(SUBJECT, src.subject, &ctx)?;
    Ok(Rendered {
        subject: single_line(&subject),
        html_body: render_field(HTML_BODY, src.html_body, &ctx)?,
        text_body: render_field(TEXT_BODY, src.text_body, &ctx)?,
    })
}

/// Checks that every field compiles and uses only known filters, without rendering.
pub fn check_syntax(src: &TemplateSource) -> Result<(), RenderError> {
    let env = build_env();
    for ((field, name), text) in [
        (SUBJECT, src.subject),
        (HTML_BODY, src.html_body),
        (TEXT_BODY, src.text_body),
    ] {
        let converted = convert(text);
        env.template_from_named_str(name, &converted.source)
            .map_err(|e| render_error(field, &e))?;
        if let Some(unknown) = converted
            .filters
            .iter()
            .find(|f| !OWN_FILTERS.contains(&f.as_str()) && !BUILTIN_FILTERS.contains(&f.as_str()))
        {
            return Err(RenderError {
                field,
                message: format!("unknown filter '{unknown}'"),
            });
        }
    }
    Ok(())
}

fn render_field(
    (field, name): (&'static str, &str),
    text: &str,
    ctx: &Value,
) -> Result<String, RenderError> {
    if !text.contains(['{']) {
        return Ok(text.to_owned());
    }
    let converted = convert(text);
    ENV.render_named_str(name, &converted.source, ctx)
        .map_err(|e| render_error(field, &e))
}

fn render_error(field: &'static str, err: &minijinja::Error) -> RenderError {
    let mut message = err.kind().to_string();
    if let Some(detail) = err.detail() {
        message = format!("{message}: {detail}");
    }
    if let Some(line) = err.line() {
        message = format!("{message} (line {line})");
    }
    RenderError { field, message }
}

/// Folds CR/LF runs into single spaces and trims: a subject is one header line.
fn single_line(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    let mut in_break = false;
    for c in subject.chars() {
        if c == '\r' || c == '\n' {
            if !in_break {
                out.push(' ');
            }
            in_break = true;
        } else {
            out.push(c);
            in_break = false;
        }
    }
    out.trim().to_owned()
}

// ---------------------------------------------------------------------------
// Output formatting and filters (Django semantics)
// ---------------------------------------------------------------------------

/// Prints values: missing as nothing (Django), JSON null as nothing too (Django
/// would print `None`, never what a client sending null wants in an email),
/// booleans as `True`/`False` (Django), HTML escaping with Django's entity set.
fn format_value(
    out: &mut minijinja::Output,
    state: &State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    let text: Cow<str> = match value.kind() {
        ValueKind::Undefined | ValueKind::None => return Ok(()),
        ValueKind::Bool => Cow::Borrowed(if value.is_true() { "True" } else { "False" }),
        _ => value
            .as_str()
            .map_or_else(|| Cow::Owned(value.to_string()), Cow::Borrowed),
    };
    let text = if state.auto_escape() == AutoEscape::Html && !value.is_safe() {
        escape_html(&text)
    } else {
        text
    };
    out.write_str(&text)
        .map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "could not write output"))
}

/// Django's `escape`: `& < > " '`.
fn escape_html(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
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
    Cow::Owned(out)
}

/// The text of a value as a filter input; None and missing are empty.
fn text_of(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => String::new(),
        _ => value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned),
    }
}

/// Django `default:x`: replaces any falsy value (missing, None, "", 0, empty list).
fn default(value: Value, fallback: Value) -> Value {
    if value.is_true() {
        value
    } else {
        fallback
    }
}

/// Django `default_if_none:x`: replaces only None (and missing).
fn default_if_none(value: Value, fallback: Value) -> Value {
    if value.is_none() || value.is_undefined() {
        fallback
    } else {
        value
    }
}

/// Django `linebreaksbr`: newlines become `<br>`; the text is escaped first when
/// autoescaping is on and the input is not already safe.
fn linebreaksbr(state: &State, value: Value) -> Value {
    let text = text_of(&value).replace("\r\n", "\n").replace('\r', "\n");
    let text = if state.auto_escape() == AutoEscape::Html && !value.is_safe() {
        escape_html(&text).into_owned()
    } else {
        text
    };
    Value::from_safe_string(text.replace('\n', "<br>"))
}

/// Django `striptags`: removes everything that looks like a tag, repeatedly, so
/// nested leftovers such as `<<b>script>` do not survive.
fn striptags(value: Value) -> String {
    let mut text = text_of(&value);
    loop {
        let stripped = strip_tags_once(&text);
        if stripped == text {
            return stripped;
        }
        text = stripped;
    }
}

fn strip_tags_once(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let looks_like_tag =
            after.starts_with(|c: char| c.is_ascii_alphabetic() || "/!?".contains(c));
        match (looks_like_tag, after.find('>')) {
            (true, Some(end)) => {
                out.push_str(&rest[..start]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str(&rest[..=start]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Django `capfirst`.
fn capfirst(value: Value) -> Value {
    let text = text_of(&value);
    let mut chars = text.chars();
    let capped = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    if value.is_safe() {
        Value::from_safe_string(capped)
    } else {
        Value::from(capped)
    }
}

/// Django `truncatechars:n`: at most `n` characters including the trailing `…`.
fn truncatechars(value: Value, limit: usize) -> String {
    let text = text_of(&value);
    if text.chars().count() <= limit {
        return text;
    }
    let mut out: String = text.chars().take(limit.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Django `length`: 0 for anything without a length (missing, None, numbers).
fn length(value: Value) -> usize {
    value.len().unwrap_or(0)
}

/// Django `add:x`: integer sum when both sides are integers (numeric strings
/// included), else concatenation of lists or strings, else empty.
fn add(value: Value, other: Value) -> Value {
    let as_int = |v: &Value| {
        i64::try_from(v.clone())
            .ok()
            .filter(|_| v.kind() == ValueKind::Number)
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
    };
    if let (Some(a), Some(b)) = (as_int(&value), as_int(&other)) {
        return a.checked_add(b).map_or(Value::from(""), Value::from);
    }
    match (value.kind(), other.kind()) {
        (ValueKind::Seq, ValueKind::Seq) => {
            let items: Vec<Value> = value
                .try_iter()
                .into_iter()
                .flatten()
                .chain(other.try_iter().into_iter().flatten())
                .collect();
            Value::from(items)
        }
        (ValueKind::String, ValueKind::String) => {
            Value::from(format!("{}{}", text_of(&value), text_of(&other)))
        }
        _ => Value::from(""),
    }
}

/// `for` targets: Django loops zero times over None or a missing variable.
fn iterable(value: Value) -> Value {
    if value.is_none() || value.is_undefined() {
        Value::from(Vec::<Value>::new())
    } else {
        value
    }
}

/// `for k, v in d.items`: the `(key, value)` pairs of a mapping.
fn items(value: Value) -> Result<Value, minijinja::Error> {
    if value.kind() != ValueKind::Map {
        return Ok(Value::from(Vec::<Value>::new()));
    }
    let pairs = value
        .try_iter()?
        .map(|key| {
            let item = value.get_item(&key).unwrap_or_default();
            Value::from(vec![key, item])
        })
        .collect::<Vec<_>>();
    Ok(Value::from(pairs))
}

// ---------------------------------------------------------------------------
// Django → minijinja syntax translation
// ---------------------------------------------------------------------------

/// A translated template and the filter names it uses.
struct Converted {
    source: String,
    filters: Vec<String>,
}

/// Translates Django tag syntax inside `{{ }}` and `{% %}`; text outside tags and
/// `{# #}` comments pass through untouched. An unterminated tag is left as is so
/// the compiler reports it.
fn convert(src: &str) -> Converted {
    let mut out = String::with_capacity(src.len() + 32);
    let mut filters = Vec::new();
    let mut rest = src;
    while let Some(start) = find_tag_start(rest) {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let close = match &tag[..2] {
            "{{" => "}}",
            "{%" => "%}",
            _ => "#}",
        };
        let Some(end) = tag[2..].find(close) else {
            out.push_str(tag);
            rest = "";
            break;
        };
        let inner = &tag[2..2 + end];
        rest = &tag[2 + end + 2..];
        match close {
            "}}" => {
                out.push_str("{{");
                out.push_str(&convert_expr(inner, &mut filters));
                out.push_str("}}");
            }
            "%}" => rest = convert_statement(inner, rest, &mut out, &mut filters),
            _ => out.push_str(&tag[..2 + end + 2]),
        }
    }
    out.push_str(rest);
    Converted {
        source: out,
        filters,
    }
}

fn find_tag_start(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(1))
        .find(|&i| bytes[i] == b'{' && matches!(bytes[i + 1], b'{' | b'%' | b'#'))
}

/// Writes the translation of one `{% ... %}` tag and returns the remaining input
/// (block tags whose content is not template code consume their body here).
fn convert_statement<'a>(
    inner: &str,
    rest: &'a str,
    out: &mut String,
    filters: &mut Vec<String>,
) -> &'a str {
    let trimmed = inner.trim();
    let (keyword, args) = trimmed
        .split_once(char::is_whitespace)
        .map_or((trimmed, ""), |(k, a)| (k, a.trim()));
    match keyword {
        // Django comments and library loads produce no output.
        "comment" => return skip_past_end_tag(rest, "endcomment").1,
        "load" => {}
        "verbatim" => {
            let (body, after) = skip_past_end_tag(rest, "endverbatim");
            out.push_str("{% raw %}");
            out.push_str(body);
            out.push_str("{% endraw %}");
            return after;
        }
        "empty" => out.push_str("{% else %}"),
        "autoescape" => {
            let on = if args == "off" { "false" } else { "true" };
            out.push_str(&format!("{{% autoescape {on} %}}"));
        }
        "for" => out.push_str(&format!("{{% {} %}}", convert_for(args, filters))),
        "with" => out.push_str(&format!("{{% with {} %}}", convert_with(args, filters))),
        _ => {
            out.push_str("{%");
            out.push_str(&convert_expr(inner, filters));
            out.push_str("%}");
        }
    }
    rest
}

/// Splits `rest` at the next `{% <end_tag> %}`: (body, text after the end tag).
/// Without an end tag the whole rest is the body.
fn skip_past_end_tag<'a>(rest: &'a str, end_tag: &str) -> (&'a str, &'a str) {
    let mut offset = 0;
    while let Some(start) = rest[offset..].find("{%") {
        let tag_start = offset + start;
        let Some(end) = rest[tag_start + 2..].find("%}") else {
            break;
        };
        if rest[tag_start + 2..tag_start + 2 + end].trim() == end_tag {
            return (&rest[..tag_start], &rest[tag_start + 2 + end + 2..]);
        }
        offset = tag_start + 2;
    }
    (rest, "")
}

/// `for x in seq [reversed]` → `for x in (seq)|dj_iter[|reverse]`, and
/// `for k, v in d.items` → `for k, v in (d)|dj_items`.
fn convert_for(args: &str, filters: &mut Vec<String>) -> String {
    let Some((targets, iterable)) = split_keyword(args, " in ") else {
        return format!("for {}", convert_expr(args, filters));
    };
    let mut iterable = iterable.trim();
    let reversed = match iterable.strip_suffix(" reversed") {
        Some(stripped) => {
            iterable = stripped.trim_end();
            true
        }
        None => false,
    };
    let (iterable, adapter) = match iterable.strip_suffix(".items") {
        Some(map) => (map, "dj_items"),
        None => (iterable, "dj_iter"),
    };
    let mut out = format!(
        "for {} in ({})|{adapter}",
        targets.trim(),
        convert_expr(iterable, filters)
    );
    if reversed {
        out.push_str("|reverse");
    }
    out
}

/// Django's `with a=x b=y` and `with x as a` → minijinja's `with a=x, b=y`.
fn convert_with(args: &str, filters: &mut Vec<String>) -> String {
    let words = split_outside_quotes(args);
    if let [value, as_kw, name] = words.as_slice() {
        if *as_kw == "as" {
            return format!("{name}={}", convert_expr(value, filters));
        }
    }
    words
        .iter()
        .map(|word| match word.split_once('=') {
            Some((name, value)) => format!("{name}={}", convert_expr(value, filters)),
            None => convert_expr(word, filters),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Splits at the first `keyword` outside string literals.
fn split_keyword<'a>(text: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let mut quote = None;
    for (i, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if text[i..].starts_with(keyword) => {
                return Some((&text[..i], &text[i + keyword.len()..]))
            }
            None => {}
        }
    }
    None
}

fn split_outside_quotes(text: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut quote = None;
    let mut start = None;
    for (i, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c.is_whitespace() => {
                if let Some(s) = start.take() {
                    words.push(&text[s..i]);
                }
            }
            None => {
                if c == '"' || c == '\'' {
                    quote = Some(c);
                }
                start.get_or_insert(i);
            }
        }
    }
    if let Some(s) = start {
        words.push(&text[s..]);
    }
    words
}

/// Translates one expression: `|name:arg` → `|name(arg)` and `forloop.*` → `loop.*`.
/// String literals are copied verbatim, so `:` or `|` inside quotes is safe.
fn convert_expr(expr: &str, filters: &mut Vec<String>) -> String {
    let mut out = String::with_capacity(expr.len() + 8);
    let mut i = 0;
    while i < expr.len() {
        let c = expr[i..].chars().next().expect("in bounds");
        if c == '"' || c == '\'' {
            let end = string_literal_end(expr, i);
            out.push_str(&expr[i..end]);
            i = end;
        } else if c == '|' {
            out.push('|');
            i = convert_filter(expr, i + 1, &mut out, filters);
        } else if c.is_ascii_alphabetic() || c == '_' {
            let end = path_end(expr, i);
            out.push_str(&convert_path(&expr[i..end]));
            i = end;
        } else {
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Translates the filter starting at `start` (just after `|`); returns where the
/// expression continues.
fn convert_filter(expr: &str, start: usize, out: &mut String, filters: &mut Vec<String>) -> usize {
    let name_start = start + (expr[start..].len() - expr[start..].trim_start().len());
    let name_end = expr[name_start..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(expr.len(), |n| name_start + n);
    let name = &expr[name_start..name_end];
    out.push_str(name);
    filters.push(name.to_owned());
    if !expr[name_end..].starts_with(':') {
        return name_end;
    }
    let arg_start = name_end + 1;
    let arg_end = match expr[arg_start..].chars().next() {
        Some('"' | '\'') => string_literal_end(expr, arg_start),
        _ => expr[arg_start..]
            .find(|c: char| c.is_whitespace() || c == '|' || c == ')' || c == ',')
            .map_or(expr.len(), |n| arg_start + n),
    };
    out.push('(');
    out.push_str(&convert_expr(&expr[arg_start..arg_end], filters));
    out.push(')');
    arg_end
}

/// End (exclusive) of the string literal opening at `start`; backslash escapes skip.
fn string_literal_end(expr: &str, start: usize) -> usize {
    let quote = expr.as_bytes()[start];
    let bytes = expr.as_bytes();
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b if b == quote => return i + 1,
            _ => i += 1,
        }
    }
    expr.len()
}

/// End of a dotted variable path such as `user.address.0.city`.
fn path_end(expr: &str, start: usize) -> usize {
    expr[start..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .map_or(expr.len(), |n| start + n)
}

/// Django's `forloop` attributes under their minijinja names.
fn convert_path(path: &str) -> Cow<'_, str> {
    let Some(attr) = path.strip_prefix("forloop.") else {
        return Cow::Borrowed(path);
    };
    let (first, tail) = attr.split_once('.').map_or((attr, ""), |(a, t)| (a, t));
    let mapped = match first {
        "counter" => "index",
        "counter0" => "index0",
        "revcounter" => "revindex",
        "revcounter0" => "revindex0",
        other => other,
    };
    let mut out = format!("loop.{mapped}");
    if !tail.is_empty() {
        out.push('.');
        out.push_str(tail);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn html(template: &str, ctx: serde_json::Value) -> String {
        render(
            &TemplateSource {
                subject: "",
                html_body: template,
                text_body: "",
            },
            &ctx,
        )
        .unwrap()
        .html_body
    }

    fn text(template: &str, ctx: serde_json::Value) -> String {
        render(
            &TemplateSource {
                subject: "",
                html_body: "",
                text_body: template,
            },
            &ctx,
        )
        .unwrap()
        .text_body
    }

    fn syntax(html_body: &str) -> Result<(), RenderError> {
        check_syntax(&TemplateSource {
            subject: "ok",
            html_body,
            text_body: "",
        })
    }

    #[test]
    fn variables_and_dotted_access() {
        let ctx =
            json!({"name": "Ada", "user": {"address": {"city": "Paris"}}, "items": ["x", "y"]});
        assert_eq!(text("Hi {{ name }}", ctx.clone()), "Hi Ada");
        assert_eq!(text("{{ user.address.city }}", ctx.clone()), "Paris");
        assert_eq!(text("{{ items.1 }}", ctx), "y");
    }

    #[test]
    fn missing_variables_render_empty() {
        assert_eq!(
            text(
                "[{{ nope }}][{{ nope.deeper.still }}][{{ none }}]",
                json!({"none": null})
            ),
            "[][][]"
        );
        assert_eq!(
            text("[{{ nope|upper }}][{{ nope|length }}]", json!({})),
            "[][0]"
        );
    }

    #[test]
    fn if_elif_else() {
        let t = "{% if n > 2 %}big{% elif n == 2 %}two{% else %}small{% endif %}";
        assert_eq!(text(t, json!({"n": 3})), "big");
        assert_eq!(text(t, json!({"n": 2})), "two");
        assert_eq!(text(t, json!({"n": 1})), "small");
        assert_eq!(
            text(
                "{% if flag and not other %}y{% endif %}",
                json!({"flag": true})
            ),
            "y"
        );
        assert_eq!(
            text("{% if missing %}y{% else %}n{% endif %}", json!({})),
            "n"
        );
    }

    #[test]
    fn for_loops_with_forloop() {
        let t = "{% for x in xs %}{% if not forloop.first %}, {% endif %}{{ forloop.counter }}:{{ x }}{% if forloop.last %}.{% endif %}{% endfor %}";
        assert_eq!(text(t, json!({"xs": ["a", "b", "c"]})), "1:a, 2:b, 3:c.");
        assert_eq!(
            text(
                "{% for x in xs %}{{ forloop.counter0 }}{% endfor %}",
                json!({"xs": [1, 2]})
            ),
            "01"
        );
    }

    #[test]
    fn for_over_nothing_and_empty_clause() {
        assert_eq!(
            text("[{% for x in missing %}{{ x }}{% endfor %}]", json!({})),
            "[]"
        );
        assert_eq!(
            text("[{% for x in n %}{{ x }}{% endfor %}]", json!({"n": null})),
            "[]"
        );
        let t = "{% for x in xs %}{{ x }}{% empty %}none{% endfor %}";
        assert_eq!(text(t, json!({"xs": []})), "none");
    }

    #[test]
    fn for_reversed_and_items() {
        assert_eq!(
            text(
                "{% for x in xs reversed %}{{ x }}{% endfor %}",
                json!({"xs": [1, 2, 3]})
            ),
            "321"
        );
        assert_eq!(
            text(
                "{% for k, v in d.items %}{{ k }}={{ v }};{% endfor %}",
                json!({"d": {"a": 1, "b": 2}})
            ),
            "a=1;b=2;"
        );
    }

    #[test]
    fn default_filter_uses_django_semantics() {
        let t = "{{ v|default:'x' }}";
        assert_eq!(text(t, json!({"v": ""})), "x");
        assert_eq!(text(t, json!({})), "x");
        assert_eq!(text(t, json!({"v": null})), "x");
        assert_eq!(text(t, json!({"v": 0})), "x");
        assert_eq!(text(t, json!({"v": "set"})), "set");
        assert_eq!(text("{{ v|default:\"a: b|c\" }}", json!({})), "a: b|c");
        assert_eq!(text("{{ v|default:other }}", json!({"other": "o"})), "o");
        assert_eq!(text("{{ v|default_if_none:'n' }}", json!({"v": ""})), "");
    }

    #[test]
    fn case_length_and_join_filters() {
        let ctx = json!({"s": "hello world", "xs": ["a", "b"]});
        assert_eq!(text("{{ s|upper }}", ctx.clone()), "HELLO WORLD");
        assert_eq!(text("{{ s|title }}", ctx.clone()), "Hello World");
        assert_eq!(text("{{ 'ABC'|lower }}", ctx.clone()), "abc");
        assert_eq!(text("{{ s|capfirst }}", ctx.clone()), "Hello world");
        assert_eq!(text("{{ xs|length }} {{ s|length }}", ctx.clone()), "2 11");
        assert_eq!(text("{{ xs|join:\", \" }}", ctx.clone()), "a, b");
        assert_eq!(text("{{ s|truncatechars:5 }}", ctx.clone()), "hell…");
        assert_eq!(text("{% if xs|length > 1 %}many{% endif %}", ctx), "many");
    }

    #[test]
    fn add_filter() {
        let ctx = json!({"n": 2, "s": "4", "a": "x", "xs": [1], "f": 1.5});
        assert_eq!(
            text("{{ n|add:3 }} {{ s|add:'1' }} {{ a|add:'y' }}", ctx.clone()),
            "5 5 xy"
        );
        assert_eq!(text("{{ xs|add:xs|length }}", ctx.clone()), "2");
        assert_eq!(text("[{{ a|add:1 }}]", ctx.clone()), "[]");
        assert_eq!(
            text(
                "{% for x in xs %}{{ forloop.counter0|add:10 }}{% endfor %}",
                ctx
            ),
            "10"
        );
    }

    #[test]
    fn chained_filters_with_arguments() {
        assert_eq!(text("{{ v|default:'abc'|upper }}", json!({})), "ABC");
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let ctx = json!({"body": "<b>Tom & 'Jerry'</b>"});
        let src = TemplateSource {
            subject: "{{ body }}",
            html_body: "<p>{{ body }}</p>",
            text_body: "{{ body }}",
        };
        let out = render(&src, &ctx).unwrap();
        assert_eq!(
            out.html_body,
            "<p>&lt;b&gt;Tom &amp; &#x27;Jerry&#x27;&lt;/b&gt;</p>"
        );
        assert_eq!(out.text_body, "<b>Tom & 'Jerry'</b>");
        assert_eq!(out.subject, "<b>Tom & 'Jerry'</b>");
        assert_eq!(
            html("{{ url }}", json!({"url": "https://x.test/a?b=1"})),
            "https://x.test/a?b=1"
        );
    }

    #[test]
    fn safe_disables_escaping() {
        assert_eq!(
            html("{{ body|safe }}", json!({"body": "<b>hi</b>"})),
            "<b>hi</b>"
        );
    }

    #[test]
    fn autoescape_off_block() {
        assert_eq!(
            html(
                "{% autoescape off %}{{ b }}{% endautoescape %}",
                json!({"b": "<i>"})
            ),
            "<i>"
        );
    }

    #[test]
    fn linebreaksbr_is_escape_aware() {
        let ctx = json!({"b": "a<1>\nb\r\nc"});
        assert_eq!(
            html("{{ b|linebreaksbr }}", ctx.clone()),
            "a&lt;1&gt;<br>b<br>c"
        );
        assert_eq!(text("{{ b|linebreaksbr }}", ctx.clone()), "a<1><br>b<br>c");
        assert_eq!(html("{{ b|safe|linebreaksbr }}", ctx), "a<1><br>b<br>c");
    }

    #[test]
    fn striptags_removes_markup() {
        let ctx = json!({"b": "<p>Hello <b>you</b> 1 < 2</p><<b>script>"});
        assert_eq!(text("{{ b|striptags }}", ctx), "Hello you 1 < 2");
    }

    #[test]
    fn cli_templates_render() {
        let ctx = json!({"subject": "Hi", "body": "<h1>Title</h1>\n<p>x & y</p>"});
        let html_template = TemplateSource {
            subject: "{{ subject }}",
            html_body: "{{ body|safe }}",
            text_body: "{{ body|striptags }}",
        };
        let out = render(&html_template, &ctx).unwrap();
        assert_eq!(out.subject, "Hi");
        assert_eq!(out.html_body, "<h1>Title</h1>\n<p>x & y</p>");
        assert_eq!(out.text_body, "Title\nx & y");
        let text_template = TemplateSource {
            subject: "{{ subject }}",
            html_body:
                "<div style=\"white-space: pre-wrap; font-family: monospace\">{{ body }}</div>",
            text_body: "{{ body }}",
        };
        let out = render(&text_template, &ctx).unwrap();
        assert!(out
            .html_body
            .contains("&lt;h1&gt;Title&lt;/h1&gt;\n&lt;p&gt;x &amp; y&lt;/p&gt;</div>"));
        assert_eq!(out.text_body, "<h1>Title</h1>\n<p>x & y</p>");
    }

    #[test]
    fn subject_is_one_trimmed_line() {
        let src = TemplateSource {
            subject: " Hello {{ name }}\r\n\nBcc: x@example.com\n",
            html_body: "",
            text_body: "",
        };
        let out = render(&src, &json!({"name": "A\nB"})).unwrap();
        assert_eq!(out.subject, "Hello A B Bcc: x@example.com");
    }

    #[test]
    fn whitespace_and_plain_text_are_kept() {
        assert_eq!(text("line\n", json!({})), "line\n");
        assert_eq!(text("a {{ x }}\n", json!({"x": 1})), "a 1\n");
        assert_eq!(
            text("{ not a tag } {{x}}", json!({"x": true})),
            "{ not a tag } True"
        );
    }

    #[test]
    fn comments_load_with_and_verbatim() {
        assert_eq!(
            text(
                "a{# c #}b{% comment %}{% bogus %}{% endcomment %}c",
                json!({})
            ),
            "abc"
        );
        assert_eq!(text("{% load static %}x", json!({})), "x");
        assert_eq!(
            text(
                "{% with n=user.name %}{{ n }}{% endwith %}",
                json!({"user": {"name": "Z"}})
            ),
            "Z"
        );
        assert_eq!(
            text(
                "{% with user.name as n %}{{ n }}{% endwith %}",
                json!({"user": {"name": "Z"}})
            ),
            "Z"
        );
        assert_eq!(
            text("{% verbatim %}{{ raw }}{% endverbatim %}", json!({})),
            "{{ raw }}"
        );
    }

    #[test]
    fn non_object_context_renders_without_variables() {
        assert_eq!(text("[{{ x }}]", json!([1, 2])), "[]");
    }

    #[test]
    fn syntax_errors_name_the_field() {
        let err = syntax("{% if x %}unclosed").unwrap_err();
        assert_eq!(err.field, "html_body");
        assert!(err.message.contains("syntax error"), "{}", err.message);
        let err = check_syntax(&TemplateSource {
            subject: "{{ a",
            html_body: "",
            text_body: "",
        })
        .unwrap_err();
        assert_eq!(err.field, "subject");
        let err = render(
            &TemplateSource {
                subject: "",
                html_body: "",
                text_body: "{% for %}",
            },
            &json!({}),
        )
        .unwrap_err();
        assert_eq!(err.field, "text_body");
        assert!(err.to_string().starts_with("text_body: "));
    }

    #[test]
    fn unknown_filters_and_tags_are_syntax_errors() {
        let err = syntax("{{ x|bogus:'1' }}").unwrap_err();
        assert_eq!(err.message, "unknown filter 'bogus'");
        assert!(syntax("{% cycle 'a' 'b' %}").is_err());
        assert!(syntax("{{ x|default:'y'|linebreaksbr|striptags|safe }}").is_ok());
    }

    #[test]
    fn translation_only_touches_tags() {
        let converted = convert("a|b:c {{ x|default:\"q:r\" }} {% if forloop.counter|add:1 %}");
        assert_eq!(
            converted.source,
            "a|b:c {{ x|default(\"q:r\") }} {% if loop.index|add(1) %}"
        );
        assert_eq!(converted.filters, vec!["default", "add"]);
    }
}
