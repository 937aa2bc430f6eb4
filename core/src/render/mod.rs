//! The original's template language: client templates are Django templates, rendered as the
//! original renders them (`Template(source).render(Context(context, autoescape=False))`):
//! Django's lexer, parser, builtin tags and filters, its variable lookup and
//! missing-variable rules, and Python's way of printing values (`None`, `True`,
//! `['a', 1]`, `{'k': 'v'}`, floats as `repr`).
//!
//! Autoescaping is off by default, as in the original; a template can opt in
//! (`autoescape: true`), and then renders exactly as Django with autoescape on.
//!
//! Layout: `lexer` (tokens) → `parser` (nodes, one compile rule per tag; `expr` for
//! `var|filter:arg`, `smartif` for `{% if %}`) → `nodes` (rendering) over `value` (Python
//! values) with `filters`, `methods` (attributes of builtin types), `format` (numbers and
//! dates), `text` (HTML and text helpers) and `lorem`.

mod context;
mod expr;
mod filters;
mod format;
mod lexer;
mod lorem;
mod methods;
mod nodes;
mod parser;
mod smartif;
mod text;
pub mod value;

use std::rc::Rc;

use context::Context;
use nodes::{NodeList, Partials};
use value::Value;

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

/// A template that does not compile or render; `field` is `subject`, `html_body` or
/// `text_body`, `compile` tells a syntax error (Django's `TemplateSyntaxError` at
/// `Template()`) from a failure while rendering.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RenderError {
    pub field: &'static str,
    pub message: String,
    pub compile: bool,
}

/// A template syntax error.
#[derive(Debug, Clone, PartialEq)]
pub struct CompileError(pub String);

/// An error while rendering (what Django raises out of `render`).
#[derive(Debug, Clone, PartialEq)]
pub struct RenderFailure(pub String);

/// A compiled template.
pub struct Template {
    nodes: NodeList,
    partials: Partials,
}

impl Template {
    /// Django's `Template(source)`.
    pub fn compile(source: &str) -> Result<Template, CompileError> {
        let mut parser = parser::Parser::new(lexer::tokenize(source));
        let nodes = parser.parse(&[])?;
        Ok(Template {
            nodes,
            partials: parser.partials,
        })
    }

    /// `render(Context(context, autoescape=...))`.
    pub fn render(
        &self,
        context: &serde_json::Value,
        autoescape: bool,
    ) -> Result<String, RenderFailure> {
        let root = match Value::from_json(context) {
            Value::Dict(entries) => Rc::try_unwrap(entries).unwrap_or_else(|rc| (*rc).clone()),
            _ => Vec::new(),
        };
        let mut ctx = Context::new(root, autoescape);
        let mut out = String::new();
        nodes::render_list(&self.nodes, &mut ctx, &mut out, &self.partials)?;
        Ok(out)
    }
}

/// Renders one template string as the original's `render_template_string`: "" for an empty
/// template.
pub fn render_str(
    source: &str,
    context: &serde_json::Value,
    autoescape: bool,
) -> Result<String, RenderError> {
    render_field("text_body", source, context, autoescape)
}

fn render_field(
    field: &'static str,
    source: &str,
    context: &serde_json::Value,
    autoescape: bool,
) -> Result<String, RenderError> {
    if source.is_empty() {
        return Ok(String::new());
    }
    let template = Template::compile(source).map_err(|e| RenderError {
        field,
        message: e.0,
        compile: true,
    })?;
    template
        .render(context, autoescape)
        .map_err(|e| RenderError {
            field,
            message: e.0,
            compile: false,
        })
}

/// Renders all three fields with `context` (a JSON object) as the original does
/// (autoescape off unless the template opted in). Ours on top: a rendered subject has its
/// line breaks folded into spaces, so it cannot inject headers.
pub fn render(
    src: &TemplateSource,
    context: &serde_json::Value,
    autoescape: bool,
) -> Result<Rendered, RenderError> {
    let subject = render_field("subject", src.subject, context, autoescape)?;
    Ok(Rendered {
        subject: single_line(&subject),
        html_body: render_field("html_body", src.html_body, context, autoescape)?,
        text_body: render_field("text_body", src.text_body, context, autoescape)?,
    })
}

/// Whether `source` compiles as a Django template (what the original would only find out at
/// its first send).
pub fn check_syntax(source: &str) -> Result<(), CompileError> {
    Template::compile(source).map(|_| ())
}

/// Python's `str()` of a JSON value (`None`, `True`, `['a']`, `{'k': 1}`).
pub fn py_str(v: &serde_json::Value) -> String {
    Value::from_json(v).to_py_str()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(t: &str, c: serde_json::Value) -> String {
        render_str(t, &c, false).unwrap()
    }

    #[test]
    fn variables_print_as_python() {
        let c = json!({"n": null, "b": true, "l": [1, "a", null], "d": {"k": "v"}, "f": 2.0, "h": "<b>"});
        assert_eq!(
            r("{{ n }}|{{ b }}|{{ l }}|{{ d }}|{{ f }}|{{ h }}", c),
            "None|True|[1, 'a', None]|{'k': 'v'}|2.0|<b>"
        );
        assert_eq!(
            render_str("{{ h }}", &json!({"h": "<b>"}), true).unwrap(),
            "&lt;b&gt;"
        );
    }

    #[test]
    fn lookups_and_missing() {
        let c = json!({"u": {"name": "Ada", "tags": ["x", "y"]}, "s": "abc"});
        assert_eq!(
            r(
                "{{ u.name }} {{ u.tags.1 }} {{ s.0 }} {{ s.upper }} [{{ nope }}] [{{ u.nope.x }}]",
                c
            ),
            "Ada y a ABC [] []"
        );
        assert_eq!(
            r("{{ d.items }}", json!({"d": {"a": 1}})),
            "dict_items([('a', 1)])"
        );
    }

    #[test]
    fn tags() {
        let c = json!({"xs": ["a", "b", "c"], "n": 2});
        assert_eq!(r("{% for x in xs %}{{ forloop.counter }}{{ x }}{% if not forloop.last %},{% endif %}{% endfor %}", c.clone()), "1a,2b,3c");
        assert_eq!(
            r("{% if n > 1 and xs %}y{% else %}n{% endif %}", c.clone()),
            "y"
        );
        assert_eq!(
            r(
                "{% for x in xs %}{% cycle 'o' 'e' %}{% endfor %}",
                c.clone()
            ),
            "oeo"
        );
        assert_eq!(
            r("{% with a=n b='q' %}{{ a }}{{ b }}{% endwith %}", c.clone()),
            "2q"
        );
        assert_eq!(
            r(
                "{% spaceless %} <p> <b>x</b> </p> {% endspaceless %}",
                c.clone()
            ),
            "<p><b>x</b></p>"
        );
        assert_eq!(
            r(
                "{% templatetag openblock %}{% widthratio 175 200 100 %}",
                c.clone()
            ),
            "{%88"
        );
        assert_eq!(r("{% firstof nope 0 'z' %}", c.clone()), "z");
        assert_eq!(r("{% filter upper %}hi{% endfilter %}", c), "HI");
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "{% if %}",
            "{% for x %}",
            "{{ x|nope }}",
            "{% bogus %}",
            "{% if x %}",
            "{{ }}",
            "{% include 'a' %}",
            "{% load i18n %}",
        ] {
            assert!(check_syntax(bad).is_err(), "{bad}");
        }
        assert!(check_syntax(
            "{{ x|yesno:'a,b' }} {% now 'Y' %} {% load l10n %}{{ 1.5|localize }}"
        )
        .is_ok());
    }

    #[test]
    fn render_failures() {
        let e = render_str("{{ x|divisibleby:0 }}", &json!({"x": 4}), false).unwrap_err();
        assert!(!e.compile);
        assert!(render_str("{{ x|default:missing }}", &json!({}), false).is_err());
    }

    #[test]
    fn subject_is_one_line() {
        let src = TemplateSource {
            subject: " Hi {{ n }}\r\n\nBcc: x\n",
            html_body: "",
            text_body: "",
        };
        assert_eq!(
            render(&src, &json!({"n": "A\nB"}), false).unwrap().subject,
            "Hi A B Bcc: x"
        );
    }

    #[test]
    fn py_str_of_json() {
        assert_eq!(py_str(&json!(5)), "5");
        assert_eq!(py_str(&json!([true])), "[True]");
    }
}
