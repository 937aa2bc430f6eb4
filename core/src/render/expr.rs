//! Django's `Variable` and `FilterExpression`: `name.attr.0|filter:arg|filter`, parsed at
//! compile time and resolved against the context with Django's lookup order (key, then
//! attribute or method, then list index) and its missing-variable rules.

use std::rc::Rc;
use std::sync::LazyLock;

use regex::Regex;

use super::context::Context;
use super::filters::{self, Filter};
use super::methods;
use super::value::Value;
use super::{CompileError, RenderFailure};

/// Django's `filter_re`.
static FILTER_RE: LazyLock<Regex> = LazyLock::new(|| {
    let strdq = r#""[^"\\]*(?:\\.[^"\\]*)*""#;
    let strsq = r"'[^'\\]*(?:\\.[^'\\]*)*'";
    let constant = format!(r"(?:_\({strdq}\)|_\({strsq}\)|{strdq}|{strsq})");
    let num = r"[-+\.]?\d[\d\.e]*";
    let var_chars = r"\w\.";
    Regex::new(&format!(
        r"^(?P<constant>{constant})|^(?P<var>[{var_chars}]+|{num})|(?:\s*\|\s*(?P<filter_name>\w+)(?::(?:(?P<constant_arg>{constant})|(?P<var_arg>[{var_chars}]+|{num})))?)"
    ))
    .expect("valid regex")
});

/// A variable or literal.
#[derive(Debug, Clone)]
pub struct Variable {
    pub source: String,
    kind: VarKind,
    translate: bool,
}

#[derive(Debug, Clone)]
enum VarKind {
    Literal(Value),
    Lookup(Vec<String>),
}

/// Why a lookup gave nothing: Django's `VariableDoesNotExist` (rendered as "", or None
/// where failures are ignored) or an error that fails the render.
#[derive(Debug)]
pub enum Missing {
    DoesNotExist,
    Failed(RenderFailure),
}

impl From<RenderFailure> for Missing {
    fn from(f: RenderFailure) -> Self {
        Missing::Failed(f)
    }
}

impl Variable {
    pub fn parse(var: &str) -> Result<Variable, CompileError> {
        let mut variable = Variable {
            source: var.to_owned(),
            kind: VarKind::Literal(Value::None),
            translate: false,
        };
        if let Some(number) = parse_number(var) {
            variable.kind = VarKind::Literal(number);
            return Ok(variable);
        }
        let mut inner = var;
        if inner.starts_with("_(") && inner.ends_with(')') && inner.len() >= 3 {
            variable.translate = true;
            inner = &inner[2..inner.len() - 1];
        }
        if let Some(s) = unescape_string_literal(inner) {
            variable.kind = VarKind::Literal(Value::safe(s));
            return Ok(variable);
        }
        if inner.contains("._") || inner.starts_with('_') {
            return Err(CompileError(format!(
                "Variables and attributes may not begin with underscores: '{inner}'"
            )));
        }
        variable.kind = VarKind::Lookup(inner.split('.').map(str::to_owned).collect());
        Ok(variable)
    }

    /// A literal's value, when the variable is one.
    #[cfg(test)]
    pub fn literal(&self) -> Option<&Value> {
        match &self.kind {
            VarKind::Literal(v) if !self.translate => Some(v),
            _ => None,
        }
    }

    pub fn resolve(&self, ctx: &Context) -> Result<Value, Missing> {
        let value = match &self.kind {
            VarKind::Literal(v) => v.clone(),
            VarKind::Lookup(bits) => resolve_lookup(ctx, bits)?,
        };
        if self.translate {
            // gettext with no catalog for the text: Django doubles `%` in the message id.
            let safe = value.is_safe();
            let text = value.to_py_str().replace('%', "%%");
            return Ok(Value::Str(text.into(), safe));
        }
        Ok(value)
    }
}

/// Python's `float(var)` when `var` has `.` or `e`, else `int(var)` (Django's first try).
fn parse_number(var: &str) -> Option<Value> {
    let lower = var.to_ascii_lowercase();
    if var.contains('.') || lower.contains('e') {
        if var.ends_with('.') {
            return None;
        }
        let clean = py_numeric(var)?;
        let f: f64 = clean.parse().ok()?;
        if !clean.bytes().any(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Value::Float(f))
    } else {
        let clean = py_numeric(var)?;
        clean.parse::<i64>().ok().map(Value::Int)
    }
}

/// Strips Python's numeric-literal allowances (surrounding whitespace, `_` between digits)
/// and rejects what `float()`/`int()` would reject.
fn py_numeric(var: &str) -> Option<String> {
    let s = crate::fields::py_strip(var);
    if s.is_empty()
        || s.starts_with('_')
        || s.ends_with('_')
        || s.contains("__")
        || !s
            .chars()
            .all(|c| c.is_ascii_digit() || "+-.eE_".contains(c))
    {
        return None;
    }
    Some(s.replace('_', ""))
}

/// Django's `unescape_string_literal`.
pub fn unescape_string_literal(s: &str) -> Option<String> {
    let first = s.chars().next()?;
    if !(first == '"' || first == '\'') || s.len() < 2 || !s.ends_with(first) {
        return None;
    }
    let inner = &s[1..s.len() - 1];
    Some(
        inner
            .replace(&format!("\\{first}"), &first.to_string())
            .replace("\\\\", "\\"),
    )
}

/// Django's `_resolve_lookup`.
fn resolve_lookup(ctx: &Context, bits: &[String]) -> Result<Value, Missing> {
    let mut current = ctx.get(&bits[0]).cloned().ok_or(Missing::DoesNotExist)?;
    for bit in &bits[1..] {
        current = lookup(&current, bit)?;
    }
    Ok(current)
}

/// One `.bit` step: `current[bit]`, else `getattr(current, bit)` (methods are called
/// without arguments), else `current[int(bit)]`.
pub fn lookup(current: &Value, bit: &str) -> Result<Value, Missing> {
    if let Value::Dict(entries) = current {
        if let Some((_, v)) = entries.iter().find(|(k, _)| k == bit) {
            return Ok(v.clone());
        }
    }
    if let Value::Group(g) = current {
        match bit {
            "grouper" => return Ok(g.0.clone()),
            "list" => return Ok(g.1.clone()),
            _ => {}
        }
    }
    if let Some(result) = methods::attribute(current, bit) {
        return result;
    }
    let index: i64 = bit.parse().map_err(|_| Missing::DoesNotExist)?;
    let items: Vec<Value> = match current {
        Value::List(items) | Value::Tuple(items) => items.to_vec(),
        Value::Group(g) => vec![g.0.clone(), g.1.clone()],
        Value::Str(s, _) => s.chars().map(|c| Value::str(c.to_string())).collect(),
        _ => return Err(Missing::DoesNotExist),
    };
    let len = items.len() as i64;
    let i = if index < 0 { index + len } else { index };
    if (0..len).contains(&i) {
        Ok(items[i as usize].clone())
    } else {
        Err(Missing::DoesNotExist)
    }
}

/// An argument of a filter: a literal (marked safe) or a variable.
#[derive(Debug, Clone)]
pub enum Arg {
    Literal(Value),
    Var(Variable),
}

/// `var|filter:arg|filter`.
#[derive(Debug, Clone)]
pub struct FilterExpression {
    pub var: Option<Variable>,
    /// The constant the expression starts with, already resolved.
    constant: Option<Value>,
    pub filters: Vec<(&'static Filter, Option<Arg>)>,
}

impl FilterExpression {
    pub fn parse(token: &str) -> Result<FilterExpression, CompileError> {
        let mut expr = FilterExpression {
            var: None,
            constant: None,
            filters: Vec::new(),
        };
        let mut upto = 0;
        let mut started = false;
        for caps in FILTER_RE.captures_iter(token) {
            let m = caps.get(0).expect("whole match");
            if m.start() != upto {
                return Err(CompileError(format!(
                    "Could not parse some characters: {}|{}|{}",
                    &token[..upto],
                    &token[upto..m.start()],
                    &token[m.start()..]
                )));
            }
            if !started {
                started = true;
                if let Some(constant) = caps.name("constant") {
                    let var = Variable::parse(constant.as_str())?;
                    expr.constant = Some(
                        var.resolve(&Context::new(Vec::new(), false))
                            .unwrap_or(Value::None),
                    );
                } else if let Some(var) = caps.name("var") {
                    expr.var = Some(Variable::parse(var.as_str())?);
                } else {
                    return Err(CompileError(format!(
                        "Could not find variable at start of {token}."
                    )));
                }
            } else {
                let name = caps.name("filter_name").map_or("", |m| m.as_str());
                let arg = if let Some(c) = caps.name("constant_arg") {
                    let var = Variable::parse(c.as_str())?;
                    Some(Arg::Literal(
                        var.resolve(&Context::new(Vec::new(), false))
                            .unwrap_or(Value::None),
                    ))
                } else if let Some(v) = caps.name("var_arg") {
                    Some(Arg::Var(Variable::parse(v.as_str())?))
                } else {
                    None
                };
                let filter = filters::find(name)
                    .ok_or_else(|| CompileError(format!("Invalid filter: '{name}'")))?;
                filter.check_args(arg.is_some())?;
                expr.filters.push((filter, arg));
            }
            upto = m.end();
        }
        if upto != token.len() {
            return Err(CompileError(format!(
                "Could not parse the remainder: '{}' from '{token}'",
                &token[upto..]
            )));
        }
        if !started {
            return Err(CompileError(format!(
                "Could not find variable at start of {token}."
            )));
        }
        Ok(expr)
    }

    /// Resolves the expression; a missing variable is "" (Django's `string_if_invalid`), or
    /// `None` when `ignore_failures` (as `if` and `for` ask).
    pub fn resolve(&self, ctx: &Context, ignore_failures: bool) -> Result<Value, RenderFailure> {
        let mut obj = match (&self.constant, &self.var) {
            (Some(c), _) => c.clone(),
            (None, Some(var)) => match var.resolve(ctx) {
                Ok(v) => v,
                Err(Missing::DoesNotExist) if ignore_failures => Value::None,
                Err(Missing::DoesNotExist) => Value::str(""),
                Err(Missing::Failed(f)) => return Err(f),
            },
            (None, None) => Value::None,
        };
        for (filter, arg) in &self.filters {
            let arg = match arg {
                None => None,
                Some(Arg::Literal(v)) => Some(v.clone()),
                Some(Arg::Var(var)) => Some(match var.resolve(ctx) {
                    Ok(v) => v,
                    // Django lets VariableDoesNotExist escape from a filter argument.
                    Err(Missing::DoesNotExist) => {
                        return Err(RenderFailure(format!(
                            "Failed lookup for key [{}]",
                            var.source
                        )))
                    }
                    Err(Missing::Failed(f)) => return Err(f),
                }),
            };
            let was_safe = obj.is_safe();
            let new = (filter.func)(obj, arg, ctx.autoescape)?;
            obj = if filter.is_safe && was_safe {
                mark_safe(new)
            } else {
                new
            };
        }
        Ok(obj)
    }
}

/// Django's `mark_safe` on a filter result: strings become safe, other values stay.
pub fn mark_safe(v: Value) -> Value {
    match v {
        Value::Str(s, _) => Value::Str(s, true),
        other => other,
    }
}

/// Text of a value as Python's `str()`, keeping the safe mark of safe strings.
pub fn to_str_value(v: &Value) -> Value {
    match v {
        Value::Str(..) => v.clone(),
        other => Value::str(Rc::<str>::from(other.to_py_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_literals() {
        assert!(matches!(
            Variable::parse("12").unwrap().literal(),
            Some(Value::Int(12))
        ));
        assert!(matches!(
            Variable::parse("1.5").unwrap().literal(),
            Some(Value::Float(_))
        ));
        assert!(Variable::parse("2.").unwrap().literal().is_none());
        assert_eq!(
            Variable::parse(r#""a\"b""#)
                .unwrap()
                .literal()
                .unwrap()
                .as_str(),
            Some("a\"b")
        );
        assert!(Variable::parse("_x").is_err());
        assert!(Variable::parse("a._b").is_err());
    }

    #[test]
    fn filter_expressions_parse() {
        let e = FilterExpression::parse(r#"x.y|default:"a b"|upper"#).unwrap();
        assert_eq!(e.filters.len(), 2);
        assert!(FilterExpression::parse("x|nope").is_err());
        assert!(FilterExpression::parse("x y").is_err());
        assert!(FilterExpression::parse("x|add").is_err());
        assert!(FilterExpression::parse("x|upper:1").is_err());
    }
}
