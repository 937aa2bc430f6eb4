//! The values a template sees, with Python's semantics: what a JSON context becomes once
//! the original has parsed it (`None`, `bool`, `int`, `float`, `str`, `list`, `dict`), the
//! few objects template code makes (tuples, dict views, `regroup` groups), and how Python
//! prints (`str`, `repr`), compares and tests them.

use std::cmp::Ordering;
use std::rc::Rc;

/// A Python value. Strings carry Django's "safe" mark (`SafeString`).
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>, bool),
    List(Rc<Vec<Value>>),
    Tuple(Rc<Vec<Value>>),
    /// A `dict` with string keys, in insertion order.
    Dict(Rc<Vec<(String, Value)>>),
    /// `dict.items()`, `.keys()`, `.values()`: printed as `dict_items([...])` etc.
    View(ViewKind, Rc<Vec<Value>>),
    /// `regroup`'s `GroupedResult(grouper, list)` named tuple.
    Group(Rc<(Value, Value)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewKind {
    Items,
    Keys,
    Values,
}

impl Value {
    pub fn str(s: impl Into<Rc<str>>) -> Value {
        Value::Str(s.into(), false)
    }

    pub fn safe(s: impl Into<Rc<str>>) -> Value {
        Value::Str(s.into(), true)
    }

    pub fn list(items: Vec<Value>) -> Value {
        Value::List(Rc::new(items))
    }

    pub fn tuple(items: Vec<Value>) -> Value {
        Value::Tuple(Rc::new(items))
    }

    /// From a JSON value as Python's `json.loads` would make it.
    pub fn from_json(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Null => Value::None,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::str(s.as_str()),
            serde_json::Value::Array(items) => {
                Value::list(items.iter().map(Value::from_json).collect())
            }
            serde_json::Value::Object(map) => Value::Dict(Rc::new(
                map.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            )),
        }
    }

    /// A JSON value back (for `json_script`); `None` for what JSON cannot hold.
    pub fn to_json(&self) -> Option<serde_json::Value> {
        Some(match self {
            Value::None => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)?.into(),
            Value::Str(s, _) => serde_json::Value::from(&**s),
            Value::List(items) | Value::Tuple(items) => {
                serde_json::Value::Array(items.iter().map(Value::to_json).collect::<Option<_>>()?)
            }
            Value::Dict(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| Some((k.clone(), v.to_json()?)))
                    .collect::<Option<_>>()?,
            ),
            Value::View(..) | Value::Group(_) => return None,
        })
    }

    pub fn is_safe(&self) -> bool {
        matches!(self, Value::Str(_, true))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s, _) => Some(s),
            _ => None,
        }
    }

    /// Python truthiness.
    pub fn truthy(&self) -> bool {
        match self {
            Value::None => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s, _) => !s.is_empty(),
            Value::List(items) | Value::Tuple(items) | Value::View(_, items) => !items.is_empty(),
            Value::Dict(entries) => !entries.is_empty(),
            Value::Group(_) => true,
        }
    }

    /// Python `len()`, when the value has one.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> Option<usize> {
        match self {
            Value::Str(s, _) => Some(s.chars().count()),
            Value::List(items) | Value::Tuple(items) | Value::View(_, items) => Some(items.len()),
            Value::Dict(entries) => Some(entries.len()),
            Value::Group(_) => Some(2),
            _ => None,
        }
    }

    /// The items iterating the value gives (`for`), or `None` when it is not iterable.
    pub fn iter_items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Str(s, _) => Some(s.chars().map(|c| Value::str(c.to_string())).collect()),
            Value::List(items) | Value::Tuple(items) | Value::View(_, items) => {
                Some(items.to_vec())
            }
            Value::Dict(entries) => Some(
                entries
                    .iter()
                    .map(|(k, _)| Value::str(k.as_str()))
                    .collect(),
            ),
            Value::Group(g) => Some(vec![g.0.clone(), g.1.clone()]),
            _ => None,
        }
    }

    /// Python's type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(..) => "str",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::View(ViewKind::Items, _) => "dict_items",
            Value::View(ViewKind::Keys, _) => "dict_keys",
            Value::View(ViewKind::Values, _) => "dict_values",
            Value::Group(_) => "GroupedResult",
        }
    }

    /// A number as f64 (bools count), for arithmetic and comparisons.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// An integer (bools count), for exact arithmetic.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Bool(b) => Some(i64::from(*b)),
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Dict lookup by key.
    pub fn get_key(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Python `str(value)`.
    pub fn to_py_str(&self) -> String {
        match self {
            Value::Str(s, _) => s.to_string(),
            other => other.repr(),
        }
    }

    /// Python `repr(value)`.
    pub fn repr(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(true) => "True".into(),
            Value::Bool(false) => "False".into(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => float_repr(*f),
            Value::Str(s, _) => str_repr(s),
            Value::List(items) => format!("[{}]", join_repr(items)),
            Value::Tuple(items) if items.len() == 1 => format!("({},)", items[0].repr()),
            Value::Tuple(items) => format!("({})", join_repr(items)),
            Value::Dict(entries) => {
                let parts: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| format!("{}: {}", str_repr(k), v.repr()))
                    .collect();
                format!("{{{}}}", parts.join(", "))
            }
            Value::View(kind, items) => {
                let name = match kind {
                    ViewKind::Items => "dict_items",
                    ViewKind::Keys => "dict_keys",
                    ViewKind::Values => "dict_values",
                };
                format!("{name}([{}])", join_repr(items))
            }
            Value::Group(g) => {
                format!("GroupedResult(grouper={}, list={})", g.0.repr(), g.1.repr())
            }
        }
    }
}

fn join_repr(items: &[Value]) -> String {
    items.iter().map(Value::repr).collect::<Vec<_>>().join(", ")
}

/// Python `==`.
pub fn py_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::None, Value::None) => true,
        (Value::Str(x, _), Value::Str(y, _)) => x == y,
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| py_eq(p, q))
        }
        (Value::Dict(x), Value::Dict(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| b.get_key(k).is_some_and(|w| py_eq(v, w)))
        }
        (Value::Group(x), Value::Group(y)) => py_eq(&x.0, &y.0) && py_eq(&x.1, &y.1),
        _ => match (a.as_int(), b.as_int()) {
            (Some(x), Some(y)) => x == y,
            _ => match (a.as_number(), b.as_number()) {
                (Some(x), Some(y)) => x == y,
                _ => false,
            },
        },
    }
}

/// Python ordering; `None` where Python raises `TypeError`.
pub fn py_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Str(x, _), Value::Str(y, _)) => Some(x.cmp(y)),
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => {
            for (p, q) in x.iter().zip(y.iter()) {
                if !py_eq(p, q) {
                    return py_cmp(p, q);
                }
            }
            Some(x.len().cmp(&y.len()))
        }
        _ => match (a.as_int(), b.as_int()) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => match (a.as_number(), b.as_number()) {
                (Some(x), Some(y)) => x.partial_cmp(&y).or(Some(Ordering::Greater)),
                _ => None,
            },
        },
    }
}

/// Python `needle in haystack`; `None` where Python raises `TypeError`.
pub fn py_in(needle: &Value, haystack: &Value) -> Option<bool> {
    match haystack {
        Value::Str(h, _) => needle.as_str().map(|n| h.contains(n)),
        Value::List(items) | Value::Tuple(items) | Value::View(_, items) => {
            Some(items.iter().any(|i| py_eq(needle, i)))
        }
        Value::Dict(entries) => match needle {
            Value::Str(n, _) => Some(entries.iter().any(|(k, _)| **k == **n)),
            Value::List(_) | Value::Dict(_) => None,
            _ => Some(false),
        },
        Value::Group(g) => Some(py_eq(needle, &g.0) || py_eq(needle, &g.1)),
        _ => None,
    }
}

/// Python `a is b` for the values a template can compare: the singletons, and small
/// integers (CPython caches -5..=256), never two distinct strings or containers.
pub fn py_is(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::None, Value::None) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y && (-5..=256).contains(x),
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => Rc::ptr_eq(x, y),
        (Value::Dict(x), Value::Dict(y)) => Rc::ptr_eq(x, y),
        (Value::Str(x, _), Value::Str(y, _)) => Rc::ptr_eq(x, y),
        _ => false,
    }
}

/// Python `repr(float)`: the shortest digits that round-trip, in fixed notation when the
/// decimal point falls within -4..=16, else `d.ddde±XX`; integral values end in `.0`.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let (negative, digits, decpt) = shortest_digits(f);
    let sign = if negative { "-" } else { "" };
    if -4 < decpt && decpt <= 16 {
        format!("{sign}{}", fixed_from_digits(&digits, decpt, true))
    } else {
        let mantissa = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits.clone()
        };
        let exp = decpt - 1;
        format!(
            "{sign}{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

/// The shortest round-trip digits of `f` and where the decimal point goes
/// (`value = 0.d1d2… × 10^decpt`).
pub fn shortest_digits(f: f64) -> (bool, String, i32) {
    let s = format!("{:e}", f.abs());
    let (mantissa, exp) = s.split_once('e').expect("exponent form");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exp: i32 = exp.parse().expect("exponent");
    let negative = f.is_sign_negative() && f != 0.0 || (f == 0.0 && f.is_sign_negative());
    if digits.bytes().all(|b| b == b'0') {
        return (negative, "0".into(), 1);
    }
    (negative, digits, exp + 1)
}

/// Digits placed around a decimal point at `decpt`; `dot_zero` adds `.0` to integers.
pub fn fixed_from_digits(digits: &str, decpt: i32, dot_zero: bool) -> String {
    let n = digits.len() as i32;
    if decpt <= 0 {
        format!("0.{}{}", "0".repeat((-decpt) as usize), digits)
    } else if decpt >= n {
        let int = format!("{digits}{}", "0".repeat((decpt - n) as usize));
        if dot_zero {
            format!("{int}.0")
        } else {
            int
        }
    } else {
        format!(
            "{}.{}",
            &digits[..decpt as usize],
            &digits[decpt as usize..]
        )
    }
}

/// Python `repr(str)`: single quotes unless the text has `'` and no `"`; escapes for the
/// backslash, the quote, `\t\n\r` and characters Python does not print.
pub fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !is_printable(c) => {
                let code = c as u32;
                if code < 0x100 {
                    out.push_str(&format!("\\x{code:02x}"));
                } else if code < 0x10000 {
                    out.push_str(&format!("\\u{code:04x}"));
                } else {
                    out.push_str(&format!("\\U{code:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `str.isprintable()` for one character (approximated: controls, separators
/// other than the space, format characters, surrogates and unassigned planes' private use
/// are not printable).
pub fn is_printable(c: char) -> bool {
    let code = c as u32;
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !matches!(code,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x890..=0x891 | 0x8E2 | 0x180E
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0xE000..=0xF8FF | 0xFFFE | 0xFFFF
        | 0x110BD | 0x110CD | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F
        | 0xF0000..=0x10FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_reprs_match_python() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (-2.5, "-2.5"),
            (123456789.125, "123456789.125"),
            (0.0, "0.0"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ] {
            assert_eq!(float_repr(f), s);
        }
    }

    #[test]
    fn reprs_match_python() {
        let v =
            Value::from_json(&serde_json::json!({"a": [1, "x'y", null, true, 2.5], "b": "q\"'"}));
        assert_eq!(
            v.repr(),
            r#"{'a': [1, "x'y", None, True, 2.5], 'b': 'q"\''}"#
        );
        assert_eq!(str_repr("a\nb\u{1}"), "'a\\nb\\x01'");
        assert_eq!(Value::tuple(vec![Value::Int(1)]).repr(), "(1,)");
    }

    #[test]
    fn comparisons() {
        assert!(py_eq(&Value::Int(1), &Value::Float(1.0)));
        assert!(py_eq(&Value::Bool(true), &Value::Int(1)));
        assert!(!py_eq(&Value::str("1"), &Value::Int(1)));
        assert_eq!(py_cmp(&Value::None, &Value::Int(1)), None);
        assert_eq!(
            py_cmp(&Value::str("a"), &Value::str("b")),
            Some(Ordering::Less)
        );
        assert_eq!(py_in(&Value::Int(1), &Value::str("abc")), None);
        assert!(py_is(&Value::Int(5), &Value::Int(5)));
        assert!(!py_is(&Value::Int(1000), &Value::Int(1000)));
    }
}
