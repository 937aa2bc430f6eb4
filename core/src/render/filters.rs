//! Django's builtin filters (`django/template/defaultfilters.py`) plus those of the `l10n`
//! and `tz` libraries, each with Django's argument rules, safety flags and failure modes: a
//! filter that fails silently in Django gives its silent value here, one that raises in
//! Django fails the render.

use super::expr::{lookup, mark_safe, Missing};
use super::format::{self, Decimal};
use super::text;
use super::value::{py_cmp, Value};
use super::{CompileError, RenderFailure};

type FilterFn = fn(Value, Option<Value>, bool) -> Result<Value, RenderFailure>;

/// Whether a filter takes an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgRule {
    None,
    Optional,
    Required,
}

/// One filter: its name, argument rule, `is_safe` flag and function (which gets the value,
/// the argument and whether autoescaping is on).
pub struct Filter {
    pub name: &'static str,
    pub arg: ArgRule,
    pub is_safe: bool,
    /// Only after `{% load <library> %}` (`None` for builtins).
    pub library: Option<&'static str>,
    pub func: FilterFn,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Filter {
    /// Django's `args_check`.
    pub fn check_args(&self, has_arg: bool) -> Result<(), CompileError> {
        let (required, given) = match (self.arg, has_arg) {
            (ArgRule::Required, false) => (2, 1),
            (ArgRule::None, true) => (1, 2),
            _ => return Ok(()),
        };
        Err(CompileError(format!(
            "{} requires {required} arguments, {given} provided",
            self.name
        )))
    }
}

macro_rules! filters {
    ($($name:literal, $arg:ident, $safe:literal, $lib:expr, $func:ident;)*) => {
        static FILTERS: &[Filter] = &[
            $(Filter { name: $name, arg: ArgRule::$arg, is_safe: $safe, library: $lib, func: $func },)*
        ];
    };
}

filters! {
    "addslashes", None, true, None, addslashes;
    "capfirst", None, true, None, capfirst;
    "escapejs", None, false, None, escapejs;
    "json_script", Optional, true, None, json_script;
    "floatformat", Optional, true, None, floatformat;
    "iriencode", None, true, None, iriencode;
    "linenumbers", None, true, None, linenumbers;
    "lower", None, true, None, lower;
    "make_list", None, false, None, make_list;
    "slugify", None, true, None, slugify;
    "stringformat", Required, true, None, stringformat;
    "title", None, true, None, title;
    "truncatechars", Required, true, None, truncatechars;
    "truncatechars_html", Required, true, None, truncatechars_html;
    "truncatewords", Required, true, None, truncatewords;
    "truncatewords_html", Required, true, None, truncatewords_html;
    "upper", None, false, None, upper;
    "urlencode", Optional, false, None, urlencode;
    "urlize", None, true, None, urlize;
    "urlizetrunc", Required, true, None, urlizetrunc;
    "wordcount", None, false, None, wordcount;
    "wordwrap", Required, true, None, wordwrap;
    "ljust", Required, true, None, ljust;
    "rjust", Required, true, None, rjust;
    "center", Required, true, None, center;
    "cut", Required, false, None, cut;
    "escape", None, true, None, escape;
    "escapeseq", None, true, None, escapeseq;
    "force_escape", None, true, None, force_escape;
    "linebreaks", None, true, None, linebreaks;
    "linebreaksbr", None, true, None, linebreaksbr;
    "safe", None, true, None, safe;
    "safeseq", None, true, None, safeseq;
    "striptags", None, true, None, striptags;
    "dictsort", Required, false, None, dictsort;
    "dictsortreversed", Required, false, None, dictsortreversed;
    "first", None, false, None, first;
    "join", Required, true, None, join;
    "last", None, true, None, last;
    "length", None, false, None, length;
    "random", None, true, None, random;
    "slice", Required, true, None, slice;
    "unordered_list", None, true, None, unordered_list;
    "add", Required, false, None, add;
    "get_digit", Required, false, None, get_digit;
    "date", Optional, false, None, date;
    "time", Optional, false, None, time;
    "timesince", Optional, false, None, timesince;
    "timeuntil", Optional, false, None, timesince;
    "default", Required, false, None, default;
    "default_if_none", Required, false, None, default_if_none;
    "divisibleby", Required, false, None, divisibleby;
    "yesno", Optional, false, None, yesno;
    "filesizeformat", None, true, None, filesizeformat;
    "pluralize", Optional, false, None, pluralize;
    "phone2numeric", None, true, None, phone2numeric;
    "pprint", None, true, None, pprint;
    "localize", None, false, Some("l10n"), localize;
    "unlocalize", None, false, Some("l10n"), unlocalize;
    "localtime", None, false, Some("tz"), not_a_datetime;
    "utc", None, false, Some("tz"), not_a_datetime;
    "timezone", Required, false, Some("tz"), not_a_datetime;
}

/// The filter called `name`, among the builtins and the libraries loaded so far.
pub fn find_loaded(name: &str, loaded: &[String]) -> Option<&'static Filter> {
    FILTERS
        .iter()
        .find(|f| f.name == name && f.library.is_none_or(|lib| loaded.iter().any(|l| l == lib)))
}

/// A builtin filter (libraries are resolved by the parser through [`find_loaded`]).
pub fn find(name: &str) -> Option<&'static Filter> {
    LOADED.with(|loaded| find_loaded(name, &loaded.borrow()))
}

thread_local! {
    /// Libraries loaded by the template being compiled (set by the parser).
    pub static LOADED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn fail(msg: impl Into<String>) -> RenderFailure {
    RenderFailure(msg.into())
}

/// `@stringfilter`: Python's `str(value)`, safe strings staying safe.
fn s(value: &Value) -> Value {
    super::expr::to_str_value(value)
}

fn text_of(value: &Value) -> String {
    value.to_py_str()
}

/// The result of a `@stringfilter` filter marked `is_safe`: safe if the input was.
fn keep_safety(input: &Value, out: String) -> Value {
    Value::Str(out.into(), input.is_safe())
}

/// Python's `int(value)` on a filter argument or value: ints, bools, truncated floats and
/// integer strings; `None` where Python raises `ValueError`/`TypeError`.
fn py_int(v: &Value) -> Option<i64> {
    match v {
        Value::Float(f) if f.is_finite() => Some(f.trunc() as i64),
        Value::Str(s, _) => crate::fields::integer(&serde_json::Value::String(s.to_string()))
            .ok()
            .filter(|_| {
                let t = crate::fields::py_strip(s);
                !t.contains('.')
            }),
        other => other.as_int(),
    }
}

fn int_arg(arg: &Option<Value>, filter: &str) -> Result<i64, RenderFailure> {
    arg.as_ref()
        .and_then(py_int)
        .ok_or_else(|| fail(format!("{filter}: invalid literal for int()")))
}

fn addslashes(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let t = text_of(&v)
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\'', "\\'");
    Ok(keep_safety(&v, t))
}

fn capfirst(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let t = text_of(&v);
    let mut chars = t.chars();
    let out = match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    Ok(keep_safety(&v, out))
}

fn escapejs(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(Value::safe(text::escapejs(&text_of(&v))))
}

fn json_script(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let json = v.to_json().ok_or_else(|| {
        fail(format!(
            "Object of type {} is not JSON serializable",
            v.type_name()
        ))
    })?;
    let body = crate::pyjson::dumps(&json)
        .replace('>', "\\u003E")
        .replace('<', "\\u003C")
        .replace('&', "\\u0026");
    let out = match arg.filter(Value::truthy) {
        Some(id) => format!(
            "<script id=\"{}\" type=\"application/json\">{body}</script>",
            if id.is_safe() {
                id.to_py_str()
            } else {
                text::escape(&id.to_py_str())
            }
        ),
        None => format!("<script type=\"application/json\">{body}</script>"),
    };
    Ok(Value::safe(out))
}

fn floatformat(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let mut force_grouping = false;
    let mut arg = arg.unwrap_or(Value::Int(-1));
    if let Value::Str(a, _) = &arg {
        let a = a.to_string();
        let rest = if a.ends_with("gu") || a.ends_with("ug") {
            // `u` turns localization off, and with it the (settings) grouping of 0.
            Some(&a[..a.len() - 2])
        } else if let Some(r) = a.strip_suffix('g') {
            force_grouping = true;
            Some(r)
        } else {
            a.strip_suffix('u')
        };
        if let Some(rest) = rest {
            arg = if rest.is_empty() {
                Value::Int(-1)
            } else {
                Value::str(rest)
            };
        }
    }
    let input = v.to_py_str();
    let d = match Decimal::parse(&input) {
        Some(d) => d,
        None => {
            let f = match &v {
                Value::Float(f) => Some(*f),
                Value::Int(i) => Some(*i as f64),
                Value::Bool(b) => Some(f64::from(u8::from(*b))),
                Value::Str(s, _) => crate::fields::py_strip(s).parse::<f64>().ok(),
                _ => None,
            };
            match f
                .filter(|f| f.is_finite())
                .and_then(|f| Decimal::parse(&super::value::float_repr(f)))
            {
                Some(d) => d,
                None => return Ok(Value::str("")),
            }
        }
    };
    let Some(p) = py_int(&arg).filter(|_| !matches!(arg, Value::Float(_))) else {
        return Ok(Value::str(input));
    };
    let finish = |number: String, places: usize| {
        let (int_part, dec_part) = match number.split_once('.') {
            Some((i, d)) => (i.to_owned(), d.to_owned()),
            None => (number.clone(), String::new()),
        };
        let mut dec = dec_part;
        while dec.len() < places {
            dec.push('0');
        }
        dec.truncate(places);
        let int_part = if force_grouping {
            format::group_thousands(&int_part)
        } else {
            int_part
        };
        if dec.is_empty() {
            int_part
        } else {
            format!("{int_part}.{dec}")
        }
    };
    if !d.has_fraction() && p <= 0 {
        let int = d.int_digits();
        let int = if d.negative && int != "0" {
            format!("-{int}")
        } else {
            int
        };
        return Ok(Value::safe(finish(int, 0)));
    }
    let places = p.unsigned_abs() as usize;
    let rounded = d.quantize_half_up(places);
    if p < 0 && !rounded.contains('.') {
        return Ok(Value::safe(finish(rounded, 0)));
    }
    Ok(Value::safe(finish(rounded, places)))
}

fn iriencode(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(keep_safety(&v, text::iri_to_uri(&text_of(&v))))
}

fn linenumbers(v: Value, _: Option<Value>, autoescape: bool) -> Result<Value, RenderFailure> {
    let t = text_of(&v);
    let lines: Vec<&str> = t.split('\n').collect();
    let width = lines.len().to_string().len();
    let escape = autoescape && !v.is_safe();
    let out: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let line = if escape {
                text::escape(line)
            } else {
                (*line).to_owned()
            };
            format!("{:0width$}. {line}", i + 1)
        })
        .collect();
    Ok(Value::safe(out.join("\n")))
}

fn lower(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(keep_safety(&v, text_of(&v).to_lowercase()))
}

/// Not safe-preserving (`is_safe=False` in Django): `str.upper` on a SafeString is a plain str.
fn upper(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(Value::str(text_of(&v).to_uppercase()))
}

fn make_list(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let t = s(&v);
    let safe = t.is_safe();
    Ok(Value::list(
        text_of(&t)
            .chars()
            .map(|c| Value::Str(c.to_string().into(), safe))
            .collect(),
    ))
}

fn slugify(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(keep_safety(&v, text::slugify(&text_of(&v))))
}

fn stringformat(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let spec = arg.map(|a| a.to_py_str()).unwrap_or_default();
    let v = match v {
        t @ Value::Tuple(_) => Value::str(t.to_py_str()),
        other => other,
    };
    Ok(Value::str(
        format::percent_format(&spec, &v).unwrap_or_default(),
    ))
}

fn title(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let t = text::py_title(&text_of(&v));
    // Django then lower-cases a letter after an apostrophe or a digit.
    let mut out = String::with_capacity(t.len());
    let chars: Vec<char> = t.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let after_apostrophe = i >= 2
            && chars[i - 1] == '\''
            && chars[i - 2].is_ascii_lowercase()
            && c.is_ascii_uppercase();
        let after_digit = i >= 1 && chars[i - 1].is_ascii_digit() && c.is_ascii_uppercase();
        if after_apostrophe || after_digit {
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    Ok(keep_safety(&v, out))
}

fn truncatechars(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let Some(n) = arg.as_ref().and_then(py_int) else {
        return Ok(s(&v));
    };
    Ok(keep_safety(&v, text::truncate_chars(&text_of(&v), n)))
}

fn truncatechars_html(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let Some(n) = arg.as_ref().and_then(py_int) else {
        return Ok(s(&v));
    };
    Ok(keep_safety(&v, text::truncate_html(&text_of(&v), n, false)))
}

fn truncatewords(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let Some(n) = arg.as_ref().and_then(py_int) else {
        return Ok(s(&v));
    };
    let t = text_of(&v);
    let out = if n <= 0 {
        String::new()
    } else {
        let words = text::py_split(&t);
        if words.len() > n as usize {
            format!("{} …", words[..n as usize].join(" "))
        } else {
            words.join(" ")
        }
    };
    Ok(keep_safety(&v, out))
}

fn truncatewords_html(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let Some(n) = arg.as_ref().and_then(py_int) else {
        return Ok(s(&v));
    };
    Ok(keep_safety(&v, text::truncate_html(&text_of(&v), n, true)))
}

fn urlencode(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let safe = arg.map_or_else(|| "/".to_owned(), |a| a.to_py_str());
    Ok(Value::str(text::quote(&text_of(&v), &safe)))
}

fn urlize(v: Value, _: Option<Value>, autoescape: bool) -> Result<Value, RenderFailure> {
    let safe_input = v.is_safe();
    Ok(Value::safe(text::urlize(
        &text_of(&v),
        None,
        true,
        autoescape,
        safe_input,
    )))
}

fn urlizetrunc(v: Value, arg: Option<Value>, autoescape: bool) -> Result<Value, RenderFailure> {
    let limit = int_arg(&arg, "urlizetrunc")?;
    let safe_input = v.is_safe();
    Ok(Value::safe(text::urlize(
        &text_of(&v),
        Some(limit.max(0) as usize),
        true,
        autoescape,
        safe_input,
    )))
}

fn wordcount(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(Value::Int(text::py_split(&text_of(&v)).len() as i64))
}

fn wordwrap(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let width = int_arg(&arg, "wordwrap")?;
    if width <= 0 {
        return Err(fail(format!("invalid width {width} (must be > 0)")));
    }
    Ok(keep_safety(&v, text::wrap(&text_of(&v), width as usize)))
}

fn pad(v: &Value, width: i64, align: char) -> String {
    let t = text_of(v);
    let len = t.chars().count() as i64;
    if width <= len {
        return t;
    }
    let total = (width - len) as usize;
    match align {
        '<' => format!("{t}{}", " ".repeat(total)),
        '>' => format!("{}{t}", " ".repeat(total)),
        _ => {
            let left = total / 2;
            format!("{}{t}{}", " ".repeat(left), " ".repeat(total - left))
        }
    }
}

fn ljust(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let w = int_arg(&arg, "ljust")?;
    Ok(keep_safety(&v, pad(&v, w, '<')))
}

fn rjust(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let w = int_arg(&arg, "rjust")?;
    Ok(keep_safety(&v, pad(&v, w, '>')))
}

fn center(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let w = int_arg(&arg, "center")?;
    if w <= 0 {
        return Ok(s(&v));
    }
    Ok(Value::str(pad(&v, w, '^')))
}

fn cut(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let a = arg.map(|a| a.to_py_str()).unwrap_or_default();
    let out = text_of(&v).replace(&a, "");
    Ok(Value::Str(out.into(), v.is_safe() && a != ";"))
}

/// Django's `conditional_escape`.
pub fn conditional_escape(v: &Value) -> Value {
    if v.is_safe() {
        v.clone()
    } else {
        Value::safe(text::escape(&v.to_py_str()))
    }
}

fn escape(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(conditional_escape(&v))
}

fn escapeseq(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let items = v
        .iter_items()
        .ok_or_else(|| fail(format!("'{}' object is not iterable", v.type_name())))?;
    Ok(Value::list(items.iter().map(conditional_escape).collect()))
}

fn force_escape(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(Value::safe(text::escape(&text_of(&v))))
}

fn linebreaks(v: Value, _: Option<Value>, autoescape: bool) -> Result<Value, RenderFailure> {
    let escape = autoescape && !v.is_safe();
    Ok(Value::safe(text::linebreaks(&text_of(&v), escape)))
}

fn linebreaksbr(v: Value, _: Option<Value>, autoescape: bool) -> Result<Value, RenderFailure> {
    let escape = autoescape && !v.is_safe();
    let mut t = text::normalize_newlines(&text_of(&v));
    if escape {
        t = text::escape(&t);
    }
    Ok(Value::safe(t.replace('\n', "<br>")))
}

fn safe(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(Value::safe(text_of(&v)))
}

fn safeseq(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let items = v
        .iter_items()
        .ok_or_else(|| fail(format!("'{}' object is not iterable", v.type_name())))?;
    Ok(Value::list(
        items
            .iter()
            .map(|i| mark_safe(super::expr::to_str_value(i)))
            .collect(),
    ))
}

fn striptags(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(keep_safety(&v, text::strip_tags(&text_of(&v))))
}

/// The sort key `dictsort:arg` reads from an item; `None` where Django's key function fails
/// (the filter then gives ""), `Err` where it raises past the filter.
fn sort_key(item: &Value, arg: &Value) -> Result<Option<Value>, RenderFailure> {
    let numeric = match arg {
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => true,
        Value::Str(s, _) => crate::fields::py_strip(s).parse::<f64>().is_ok(),
        _ => false,
    };
    if numeric {
        // `itemgetter(arg)`: `item[arg]` as Python does it. The filter turns a TypeError
        // into "" (Ok(None)); an IndexError or KeyError escapes and fails the render.
        let int_arg = match arg {
            Value::Int(_) | Value::Bool(_) => arg.as_int(),
            _ => None,
        };
        return match (item, int_arg) {
            (Value::List(items) | Value::Tuple(items), Some(i)) => {
                let n = items.len() as i64;
                let idx = if i < 0 { i + n } else { i };
                if (0..n).contains(&idx) {
                    Ok(Some(items[idx as usize].clone()))
                } else {
                    Err(fail("IndexError: list index out of range"))
                }
            }
            (Value::Str(text, _), Some(i)) => {
                let chars: Vec<char> = text.chars().collect();
                let n = chars.len() as i64;
                let idx = if i < 0 { i + n } else { i };
                if (0..n).contains(&idx) {
                    Ok(Some(Value::str(chars[idx as usize].to_string())))
                } else {
                    Err(fail("IndexError: string index out of range"))
                }
            }
            // JSON objects have string keys: `d['0']` finds "0", an int finds nothing.
            (Value::Dict(entries), _) => {
                let key = match arg {
                    Value::Str(s, _) => Some(s.to_string()),
                    _ => None,
                };
                match key.and_then(|k| entries.iter().find(|(name, _)| *name == k)) {
                    Some((_, v)) => Ok(Some(v.clone())),
                    None => Err(fail(format!("KeyError: {}", arg.repr()))),
                }
            }
            _ => Ok(None),
        };
    }
    let path = arg.to_py_str();
    if path.contains("._") || path.starts_with('_') {
        return Ok(None);
    }
    let mut current = item.clone();
    for part in path.split('.') {
        current = match lookup(&current, part) {
            Ok(v) => v,
            Err(Missing::DoesNotExist) => return Ok(None),
            Err(Missing::Failed(f)) => return Err(f),
        };
    }
    Ok(Some(current))
}

fn sorted_by(v: &Value, arg: &Value, reverse: bool) -> Result<Value, RenderFailure> {
    let Some(items) = v.iter_items() else {
        return Ok(Value::str(""));
    };
    let mut keyed = Vec::with_capacity(items.len());
    for item in items {
        match sort_key(&item, arg)? {
            Some(k) => keyed.push((k, item)),
            None => return Ok(Value::str("")),
        }
    }
    // Python's sort compares with `<` only; any incomparable pair makes it raise.
    for i in 1..keyed.len() {
        if py_cmp(&keyed[i].0, &keyed[i - 1].0).is_none() {
            return Ok(Value::str(""));
        }
    }
    let mut failed = false;
    if reverse {
        // Python's `sorted(..., reverse=True)` keeps equal items in their original order:
        // a stable sort on the reversed comparison, not a reversed ascending sort.
        keyed.sort_by(|a, b| {
            py_cmp(&b.0, &a.0).unwrap_or_else(|| {
                failed = true;
                std::cmp::Ordering::Equal
            })
        });
    } else {
        keyed.sort_by(|a, b| {
            py_cmp(&a.0, &b.0).unwrap_or_else(|| {
                failed = true;
                std::cmp::Ordering::Equal
            })
        });
    }
    if failed {
        return Ok(Value::str(""));
    }
    Ok(Value::list(keyed.into_iter().map(|(_, v)| v).collect()))
}

fn dictsort(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    sorted_by(&v, &arg.unwrap_or(Value::None), false)
}

fn dictsortreversed(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    sorted_by(&v, &arg.unwrap_or(Value::None), true)
}

fn first(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    match &v {
        Value::Dict(_) => Err(fail("KeyError: 0")),
        _ => match v.iter_items() {
            Some(items) => Ok(items.into_iter().next().unwrap_or_else(|| Value::str(""))),
            None => Err(fail(format!(
                "'{}' object is not subscriptable",
                v.type_name()
            ))),
        },
    }
}

fn last(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    match &v {
        Value::Dict(_) => Err(fail("KeyError: -1")),
        _ => match v.iter_items() {
            Some(items) => Ok(items.into_iter().last().unwrap_or_else(|| Value::str(""))),
            None => Err(fail(format!(
                "'{}' object is not subscriptable",
                v.type_name()
            ))),
        },
    }
}

fn join(v: Value, arg: Option<Value>, autoescape: bool) -> Result<Value, RenderFailure> {
    let sep = arg.unwrap_or_else(|| Value::str(""));
    let Value::Str(..) = sep else {
        return Err(fail(format!(
            "'{}' object has no attribute 'join'",
            sep.type_name()
        )));
    };
    let Some(items) = v.iter_items() else {
        return Ok(v);
    };
    if autoescape {
        let sep = conditional_escape(&sep).to_py_str();
        let parts: Vec<String> = items
            .iter()
            .map(|i| conditional_escape(i).to_py_str())
            .collect();
        return Ok(Value::safe(parts.join(&sep)));
    }
    if items.iter().any(|i| !matches!(i, Value::Str(..))) {
        return Ok(v);
    }
    let parts: Vec<String> = items.iter().map(Value::to_py_str).collect();
    Ok(Value::safe(parts.join(&sep.to_py_str())))
}

fn length(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(Value::Int(v.len().unwrap_or(0) as i64))
}

fn random(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    use rand::seq::SliceRandom;
    let items = v
        .iter_items()
        .ok_or_else(|| fail(format!("object of type '{}' has no len()", v.type_name())))?;
    items
        .choose(&mut rand::thread_rng())
        .cloned()
        .ok_or_else(|| fail("Cannot choose from an empty sequence"))
}

fn slice(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let spec = arg.map(|a| a.to_py_str()).unwrap_or_default();
    let mut bits: Vec<Option<i64>> = Vec::new();
    for x in spec.split(':') {
        if x.is_empty() {
            bits.push(None);
        } else {
            match py_int(&Value::str(x)) {
                Some(n) => bits.push(Some(n)),
                None => return Ok(v),
            }
        }
    }
    if bits.len() > 3 {
        return Ok(v);
    }
    let (start, stop, step) = match bits.as_slice() {
        [stop] => (None, *stop, None),
        [a, b] => (*a, *b, None),
        [a, b, c] => (*a, *b, *c),
        _ => return Ok(v),
    };
    let step = step.unwrap_or(1);
    if step == 0 {
        return Err(fail("slice step cannot be zero"));
    }
    let (items, is_str) = match &v {
        Value::Str(s, _) => (
            s.chars()
                .map(|c| Value::str(c.to_string()))
                .collect::<Vec<_>>(),
            true,
        ),
        Value::List(items) | Value::Tuple(items) => (items.to_vec(), false),
        _ => return Ok(v),
    };
    let n = items.len() as i64;
    let clamp = |i: Option<i64>, default: i64, lo: i64, hi: i64| match i {
        None => default,
        Some(i) if i < 0 => (i + n).max(lo),
        Some(i) => i.min(hi),
    };
    let mut out = Vec::new();
    if step > 0 {
        let (a, b) = (clamp(start, 0, 0, n), clamp(stop, n, 0, n));
        let mut i = a;
        while i < b {
            out.push(items[i as usize].clone());
            i += step;
        }
    } else {
        let (a, b) = (clamp(start, n - 1, -1, n - 1), clamp(stop, -1, -1, n - 1));
        let mut i = a;
        while i > b {
            out.push(items[i as usize].clone());
            i += step;
        }
    }
    Ok(match &v {
        Value::Str(..) if is_str => Value::Str(
            out.iter().map(Value::to_py_str).collect::<String>().into(),
            v.is_safe(),
        ),
        Value::Tuple(_) => Value::tuple(out),
        _ => Value::list(out),
    })
}

fn unordered_list(v: Value, _: Option<Value>, autoescape: bool) -> Result<Value, RenderFailure> {
    fn walk(items: &[Value]) -> Vec<(Value, Option<Vec<Value>>)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < items.len() {
            let item = items[i].clone();
            match items.get(i + 1) {
                Some(Value::List(children) | Value::Tuple(children)) => {
                    out.push((item, Some(children.to_vec())));
                    i += 2;
                }
                _ => {
                    out.push((item, None));
                    i += 1;
                }
            }
        }
        out
    }
    fn format(items: &[Value], tabs: usize, autoescape: bool) -> String {
        let indent = "\t".repeat(tabs);
        let mut output = Vec::new();
        for (item, children) in walk(items) {
            let sub = match children {
                Some(children) if !children.is_empty() => format!(
                    "\n{indent}<ul>\n{}\n{indent}</ul>\n{indent}",
                    format(&children, tabs + 1, autoescape)
                ),
                _ => String::new(),
            };
            let text = if autoescape {
                conditional_escape(&item).to_py_str()
            } else {
                item.to_py_str()
            };
            output.push(format!("{indent}<li>{text}{sub}</li>"));
        }
        output.join("\n")
    }
    let items = v
        .iter_items()
        .ok_or_else(|| fail(format!("'{}' object is not iterable", v.type_name())))?;
    Ok(Value::safe(format(&items, 1, autoescape)))
}

fn add(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let arg = arg.unwrap_or(Value::None);
    if let (Some(a), Some(b)) = (py_int(&v), py_int(&arg)) {
        if !matches!(v, Value::Str(ref s, _) if s.contains(['.', 'e', 'E'])) {
            return Ok(a.checked_add(b).map_or(Value::str(""), Value::Int));
        }
    }
    Ok(match (&v, &arg) {
        (Value::Str(a, sa), Value::Str(b, sb)) => Value::Str(format!("{a}{b}").into(), *sa && *sb),
        (Value::List(a), Value::List(b)) => {
            Value::list(a.iter().chain(b.iter()).cloned().collect())
        }
        (Value::Tuple(a), Value::Tuple(b)) => {
            Value::tuple(a.iter().chain(b.iter()).cloned().collect())
        }
        (
            Value::Float(_) | Value::Int(_) | Value::Bool(_),
            Value::Float(_) | Value::Int(_) | Value::Bool(_),
        ) => Value::Float(v.as_number().unwrap_or(0.0) + arg.as_number().unwrap_or(0.0)),
        _ => Value::str(""),
    })
}

fn get_digit(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let arg = arg.unwrap_or(Value::None);
    let (Some(digit), Some(n)) = (py_int(&arg), py_int(&v)) else {
        if matches!(arg, Value::None | Value::List(_) | Value::Dict(_))
            || matches!(v, Value::None | Value::List(_) | Value::Dict(_))
        {
            return Err(fail("int() argument must be a string or a number"));
        }
        return Ok(v);
    };
    if digit < 1 {
        return Ok(Value::Int(n));
    }
    let s = n.to_string();
    let chars: Vec<char> = s.chars().collect();
    let idx = chars.len() as i64 - digit;
    if idx < 0 {
        return Ok(Value::Int(0));
    }
    match chars[idx as usize].to_digit(10) {
        Some(d) => Ok(Value::Int(i64::from(d))),
        None => Err(fail("invalid literal for int(): '-'")),
    }
}

/// `date`/`time` of a value that is not a date (a JSON context has none): "" unless the
/// format reads only the time zone, whose characters then print as "".
fn non_date_format(v: &Value, fmt: &str) -> Value {
    if matches!(v, Value::None) || v.as_str() == Some("") {
        return Value::str("");
    }
    let fmt = format::named_format(fmt).unwrap_or(fmt);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else if format::is_timezone_only(c) {
        } else if format::is_format_char(c) {
            return Value::str("");
        } else {
            out.push(c);
        }
    }
    Value::str(out)
}

fn date(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let fmt = arg.map_or_else(|| "DATE_FORMAT".to_owned(), |a| a.to_py_str());
    Ok(non_date_format(&v, &fmt))
}

fn time(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let fmt = arg.map_or_else(|| "TIME_FORMAT".to_owned(), |a| a.to_py_str());
    Ok(non_date_format(&v, &fmt))
}

fn timesince(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    if !v.truthy() {
        return Ok(Value::str(""));
    }
    Err(fail(format!(
        "'{}' object has no attribute 'year'",
        v.type_name()
    )))
}

fn default(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(if v.truthy() {
        v
    } else {
        arg.unwrap_or(Value::None)
    })
}

fn default_if_none(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(if matches!(v, Value::None) {
        arg.unwrap_or(Value::None)
    } else {
        v
    })
}

fn divisibleby(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let a = py_int(&v).ok_or_else(|| fail("divisibleby: invalid literal for int()"))?;
    let b = arg
        .as_ref()
        .and_then(py_int)
        .ok_or_else(|| fail("divisibleby: invalid literal for int()"))?;
    if b == 0 {
        return Err(fail("integer modulo by zero"));
    }
    Ok(Value::Bool(a.rem_euclid(b) == 0))
}

fn yesno(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let arg = arg.map_or_else(|| "yes,no,maybe".to_owned(), |a| a.to_py_str());
    let bits: Vec<&str> = arg.split(',').collect();
    if bits.len() < 2 {
        return Ok(v);
    }
    let (yes, no, maybe) = if bits.len() == 3 {
        (bits[0], bits[1], bits[2])
    } else {
        (bits[0], bits[1], bits[1])
    };
    Ok(Value::str(if matches!(v, Value::None) {
        maybe
    } else if v.truthy() {
        yes
    } else {
        no
    }))
}

fn filesizeformat(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let Some(mut bytes) = py_int(&v) else {
        return Ok(Value::str("0\u{a0}bytes"));
    };
    let negative = bytes < 0;
    if negative {
        bytes = -bytes;
    }
    const KB: f64 = 1024.0;
    let b = bytes as f64;
    let number = |x: f64| {
        let rounded = (x * 10.0).round() / 10.0;
        let r = super::value::float_repr(rounded);
        let (i, d) = r.split_once('.').unwrap_or((&r, "0"));
        format!("{i}.{}", &d[..1])
    };
    let value = if b < KB {
        format!("{bytes} {}", if bytes == 1 { "byte" } else { "bytes" })
    } else if b < KB * KB {
        format!("{} KB", number(b / KB))
    } else if b < KB.powi(3) {
        format!("{} MB", number(b / KB.powi(2)))
    } else if b < KB.powi(4) {
        format!("{} GB", number(b / KB.powi(3)))
    } else if b < KB.powi(5) {
        format!("{} TB", number(b / KB.powi(4)))
    } else {
        format!("{} PB", number(b / KB.powi(5)))
    };
    let value = if negative { format!("-{value}") } else { value };
    Ok(Value::safe(value.replace(' ', "\u{a0}")))
}

fn pluralize(v: Value, arg: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    let mut arg = arg.map_or_else(|| "s".to_owned(), |a| a.to_py_str());
    if !arg.contains(',') {
        arg = format!(",{arg}");
    }
    let bits: Vec<&str> = arg.split(',').collect();
    if bits.len() > 2 {
        return Ok(Value::str(""));
    }
    let (singular, plural) = (bits[0], bits[1]);
    let one = match &v {
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => Some(v.as_number() == Some(1.0)),
        Value::Str(s, _) => match crate::fields::py_strip(s).parse::<f64>() {
            Ok(f) => Some(f == 1.0),
            Err(_) => return Ok(Value::str("")),
        },
        other => other.len().map(|n| n == 1),
    };
    Ok(Value::str(match one {
        Some(true) => singular,
        Some(false) => plural,
        None => "",
    }))
}

fn phone2numeric(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(Value::str(text::phone2numeric(&text_of(&v))))
}

fn pprint(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(Value::str(v.repr()))
}

fn localize(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(Value::str(format::localize(&v)))
}

fn unlocalize(v: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(Value::str(v.to_py_str()))
}

fn not_a_datetime(_: Value, _: Option<Value>, _: bool) -> Result<Value, RenderFailure> {
    Ok(Value::str(""))
}

/// Shared for tests: resolve a filter by name in the builtins.
#[cfg(test)]
pub fn call(name: &str, v: Value, arg: Option<Value>) -> Value {
    let f = FILTERS.iter().find(|f| f.name == name).expect("a filter");
    (f.func)(v, arg, false).expect("filter works")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floatformat_cases() {
        let ff = |v: Value, a: Option<&str>| call("floatformat", v, a.map(Value::str)).to_py_str();
        assert_eq!(ff(Value::Float(34.23234), None), "34.2");
        assert_eq!(ff(Value::Float(34.0), None), "34");
        assert_eq!(ff(Value::Float(34.26), None), "34.3");
        assert_eq!(ff(Value::Float(34.23234), Some("3")), "34.232");
        assert_eq!(ff(Value::Float(34.0), Some("3")), "34.000");
        assert_eq!(ff(Value::Float(34.0), Some("-3")), "34");
        assert_eq!(ff(Value::Float(34.26), Some("-3")), "34.260");
        assert_eq!(ff(Value::Float(34.23234), Some("0")), "34");
        assert_eq!(ff(Value::Float(39.56), Some("0")), "40");
        assert_eq!(ff(Value::Int(1234567), Some("2g")), "1,234,567.00");
        assert_eq!(ff(Value::str("abc"), None), "");
        assert_eq!(ff(Value::Float(-0.04), Some("1")), "0.0");
    }

    #[test]
    fn small_filters() {
        assert_eq!(call("yesno", Value::None, None).to_py_str(), "maybe");
        assert_eq!(call("pluralize", Value::Int(2), None).to_py_str(), "s");
        assert_eq!(
            call("pluralize", Value::Int(1), Some(Value::str("y,ies"))).to_py_str(),
            "y"
        );
        assert_eq!(
            call("filesizeformat", Value::Int(123456789), None).to_py_str(),
            "117.7\u{a0}MB"
        );
        assert_eq!(
            call("get_digit", Value::Int(123), Some(Value::Int(2))).to_py_str(),
            "2"
        );
        assert_eq!(
            call("slice", Value::str("abcdef"), Some(Value::str("1:-1"))).to_py_str(),
            "bcde"
        );
        assert_eq!(
            call("center", Value::str("ab"), Some(Value::Int(5))).to_py_str(),
            " ab  "
        );
        assert_eq!(
            call("add", Value::str("3"), Some(Value::Int(4))).to_py_str(),
            "7"
        );
        assert_eq!(
            call("date", Value::str("2024"), Some(Value::str("Y"))).to_py_str(),
            ""
        );
        assert_eq!(
            call("stringformat", Value::Int(5), Some(Value::str("03d"))).to_py_str(),
            "005"
        );
    }
}
