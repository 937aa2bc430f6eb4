//! Attributes and no-argument methods of Python's builtin types, as a template reaches them
//! (`{{ name.upper }}`, `{{ d.items }}`, `{{ n.real }}`). A method that needs arguments
//! renders as "" (Django's invalid-call rule); methods that change the value (`list.pop`,
//! `dict.clear`) are not offered and read as missing.

use super::expr::Missing;
use super::text;
use super::value::{Value, ViewKind};

/// `getattr(value, name)` then the call: `None` when the type has no such attribute.
pub fn attribute(value: &Value, name: &str) -> Option<Result<Value, Missing>> {
    let invalid = || Some(Ok(Value::str("")));
    match value {
        Value::Str(s, _) => {
            let s: &str = s;
            let b = |x: bool| Some(Ok(Value::Bool(x)));
            match name {
                "upper" => Some(Ok(Value::str(s.to_uppercase()))),
                "lower" | "casefold" => Some(Ok(Value::str(s.to_lowercase()))),
                "title" => Some(Ok(Value::str(text::py_title(s)))),
                "capitalize" => Some(Ok(Value::str(text::py_capitalize(s)))),
                "swapcase" => Some(Ok(Value::str(
                    s.chars()
                        .flat_map(|c| {
                            if c.is_uppercase() {
                                c.to_lowercase().collect::<Vec<_>>()
                            } else {
                                c.to_uppercase().collect()
                            }
                        })
                        .collect::<String>(),
                ))),
                "strip" => Some(Ok(Value::str(crate::fields::py_strip(s)))),
                "lstrip" => Some(Ok(Value::str(
                    s.trim_start_matches(crate::fields::py_is_space),
                ))),
                "rstrip" => Some(Ok(Value::str(
                    s.trim_end_matches(crate::fields::py_is_space),
                ))),
                "split" | "rsplit" => Some(Ok(Value::list(
                    text::py_split(s).into_iter().map(Value::str).collect(),
                ))),
                "splitlines" => Some(Ok(Value::list(
                    text::py_splitlines(s).into_iter().map(Value::str).collect(),
                ))),
                "expandtabs" => Some(Ok(Value::str(text::expand_tabs(s)))),
                "isdigit" | "isdecimal" | "isnumeric" => {
                    b(!s.is_empty() && s.chars().all(|c| c.is_numeric()))
                }
                "isalpha" => b(!s.is_empty() && s.chars().all(char::is_alphabetic)),
                "isalnum" => b(!s.is_empty() && s.chars().all(char::is_alphanumeric)),
                "isascii" => b(s.is_ascii()),
                "isspace" => b(!s.is_empty() && s.chars().all(crate::fields::py_is_space)),
                "islower" => {
                    b(s.chars().any(char::is_lowercase) && !s.chars().any(char::is_uppercase))
                }
                "isupper" => {
                    b(s.chars().any(char::is_uppercase) && !s.chars().any(char::is_lowercase))
                }
                "istitle" => b(!s.is_empty()
                    && text::py_title(s) == s
                    && s.chars().any(char::is_alphabetic)),
                "isidentifier" => b(s
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
                    && s.chars().all(|c| c.is_alphanumeric() || c == '_')),
                "isprintable" => b(s.chars().all(super::value::is_printable)),
                "format" if !s.contains(['{', '}']) => Some(Ok(Value::str(s))),
                "center" | "count" | "endswith" | "find" | "format_map" | "index" | "join"
                | "ljust" | "maketrans" | "partition" | "removeprefix" | "removesuffix"
                | "replace" | "rfind" | "rindex" | "rjust" | "rpartition" | "startswith"
                | "translate" | "zfill" => invalid(),
                _ => None,
            }
        }
        Value::Dict(entries) => match name {
            "items" => Some(Ok(Value::View(
                ViewKind::Items,
                std::rc::Rc::new(
                    entries
                        .iter()
                        .map(|(k, v)| Value::tuple(vec![Value::str(k.as_str()), v.clone()]))
                        .collect(),
                ),
            ))),
            "keys" => Some(Ok(Value::View(
                ViewKind::Keys,
                std::rc::Rc::new(
                    entries
                        .iter()
                        .map(|(k, _)| Value::str(k.as_str()))
                        .collect(),
                ),
            ))),
            "values" => Some(Ok(Value::View(
                ViewKind::Values,
                std::rc::Rc::new(entries.iter().map(|(_, v)| v.clone()).collect()),
            ))),
            "copy" => Some(Ok(value.clone())),
            "get" | "pop" | "setdefault" | "fromkeys" => invalid(),
            _ => None,
        },
        Value::List(items) => match name {
            "copy" => Some(Ok(Value::list(items.to_vec()))),
            "append" | "count" | "extend" | "index" | "insert" | "remove" => invalid(),
            _ => None,
        },
        Value::Tuple(_) => match name {
            "count" | "index" => invalid(),
            _ => None,
        },
        Value::Bool(_) | Value::Int(_) => {
            let i = value.as_int().expect("an integer");
            match name {
                "real" | "numerator" | "conjugate" => Some(Ok(Value::Int(i))),
                "imag" => Some(Ok(Value::Int(0))),
                "denominator" => Some(Ok(Value::Int(1))),
                "bit_length" => Some(Ok(Value::Int(i64::from(
                    64 - i.unsigned_abs().leading_zeros() as i32,
                )))),
                "bit_count" => Some(Ok(Value::Int(i64::from(i.unsigned_abs().count_ones())))),
                "is_integer" => Some(Ok(Value::Bool(true))),
                "as_integer_ratio" => Some(Ok(Value::tuple(vec![Value::Int(i), Value::Int(1)]))),
                "from_bytes" => invalid(),
                _ => None,
            }
        }
        Value::Float(f) => match name {
            "real" | "conjugate" => Some(Ok(Value::Float(*f))),
            "imag" => Some(Ok(Value::Float(0.0))),
            "is_integer" => Some(Ok(Value::Bool(f.fract() == 0.0 && f.is_finite()))),
            "fromhex" => invalid(),
            _ => None,
        },
        _ => None,
    }
}
