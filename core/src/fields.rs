//! Field-level validation: the ordered `fields` of a `validation_error` answer and small
//! typed parsers that give the original's reason code for each way a value can be wrong.
//!
//! The parsers mirror the original's idioms so an endpoint reads like its reference:
//! `value in (None, "")` is [`is_blank`], `not isinstance(v, str) or not v.strip()` is
//! [`required_string`], and so on. Strings they return are stripped, as the original strips.

use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::reasons::Reason;
use crate::{email, slug};

/// Field path (e.g. `cc.0`, `headers.Subject`) → reason code, in the order the fields
/// were checked (the original's dict insertion order, which is what it answers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors(Vec<(String, String)>);

impl FieldErrors {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `field`'s reason. Like a Python dict assignment: a field that already failed
    /// keeps its place and takes the new reason.
    pub fn insert(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        let (field, reason) = (field.into(), reason.into());
        match self.0.iter_mut().find(|(f, _)| *f == field) {
            Some(entry) => entry.1 = reason,
            None => self.0.push((field, reason)),
        }
    }

    /// Adds every error of `other` (Python's `errors.update(other)`).
    pub fn extend(&mut self, other: FieldErrors) {
        for (field, reason) in other.0 {
            self.insert(field, reason);
        }
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, r)| r.as_str())
    }

    pub fn contains_key(&self, field: &str) -> bool {
        self.get(field).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `(field, reason)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(f, r)| (f.as_str(), r.as_str()))
    }

    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(_, r)| r.as_str())
    }

    /// Whether any field is `forbidden` (the answer is then 403, not 400).
    pub fn is_forbidden(&self) -> bool {
        self.values().any(|r| r == Reason::Forbidden.code())
    }

    /// One field, one reason.
    pub fn one(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let mut errors = Self::new();
        errors.insert(field, reason);
        errors
    }
}

impl std::ops::Index<&str> for FieldErrors {
    type Output = str;
    fn index(&self, field: &str) -> &str {
        self.get(field)
            .unwrap_or_else(|| panic!("no error for field {field}"))
    }
}

impl Serialize for FieldErrors {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (field, reason) in &self.0 {
            map.serialize_entry(field, reason)?;
        }
        map.end()
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// Records `reason` for `field` (a dict assignment, see [`FieldErrors::insert`]).
pub fn add(errors: &mut FieldErrors, field: impl Into<String>, reason: impl Into<String>) {
    errors.insert(field, reason);
}

/// Records the error of a parser result under `field` and gives back its value.
pub fn check<T>(errors: &mut FieldErrors, field: &str, result: Result<T, Reason>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(reason) => {
            errors.insert(field, reason);
            None
        }
    }
}

/// `Ok(value)` when no errors were collected, so parsers can end with one call.
pub fn finish<T>(errors: FieldErrors, value: T) -> Result<T, FieldErrors> {
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(errors)
    }
}

/// The value of `key`, treating JSON null as absent.
pub fn present<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

/// Python's `value in (None, "")`: absent, null or the empty string (not `0`, not `false`).
pub fn is_blank(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}

/// A string that is non-empty after trimming.
pub fn non_blank_str(value: &Value) -> Option<&str> {
    value.as_str().filter(|s| !py_strip(s).is_empty())
}

/// Python's `str.strip()`: Unicode whitespace, including the separators `\x1c`–`\x1f`
/// that Rust's `trim` keeps.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_is_space)
}

/// Python's `str.isspace()` for one character.
pub fn py_is_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

// ---------------------------------------------------------------------------
// Typed parsers: each gives the original's reason for a bad value.
// ---------------------------------------------------------------------------

/// A required string: absent, null, not a string or blank → `required`; else stripped.
pub fn required_string(value: Option<&Value>) -> Result<String, Reason> {
    match value {
        Some(Value::String(s)) if !py_strip(s).is_empty() => Ok(py_strip(s).to_owned()),
        _ => Err(Reason::Required),
    }
}

/// Any string, kept as given: not a string → `must_be_string`.
pub fn string(value: &Value) -> Result<&str, Reason> {
    value.as_str().ok_or(Reason::MustBeString)
}

/// An optional string: blank → `default`; not a string → `must_be_string`; else stripped.
pub fn optional_string(value: Option<&Value>, default: &str) -> Result<String, Reason> {
    if is_blank(value) {
        return Ok(default.to_owned());
    }
    string(value.expect("not blank")).map(|s| py_strip(s).to_owned())
}

/// A string that, when given, must say something: not a string or only whitespace →
/// `must_be_non_empty_string`; returned stripped.
pub fn non_empty_string(value: &Value) -> Result<String, Reason> {
    match value {
        Value::String(s) if !py_strip(s).is_empty() => Ok(py_strip(s).to_owned()),
        _ => Err(Reason::MustBeNonEmptyString),
    }
}

/// An optional [`non_empty_string`]: blank → `None`.
pub fn optional_non_empty_string(value: Option<&Value>) -> Result<Option<String>, Reason> {
    if is_blank(value) {
        return Ok(None);
    }
    non_empty_string(value.expect("not blank")).map(Some)
}

/// A boolean: not `true`/`false` → `must_be_boolean`.
pub fn boolean(value: &Value) -> Result<bool, Reason> {
    value.as_bool().ok_or(Reason::MustBeBoolean)
}

/// The original's `validate_bool(value, field, default=...)`: absent or null → `default`
/// (`required` when there is none); anything but a boolean → `must_be_boolean`.
pub fn bool_or(value: Option<&Value>, default: Option<bool>) -> Result<bool, Reason> {
    match value {
        None | Some(Value::Null) => default.ok_or(Reason::Required),
        Some(v) => boolean(v),
    }
}

/// An optional boolean where blank (absent, null or "") means `default` (`dry_run`).
pub fn optional_bool(value: Option<&Value>, default: bool) -> Result<bool, Reason> {
    if is_blank(value) {
        return Ok(default);
    }
    boolean(value.expect("not blank"))
}

/// A JSON object: not an object → `must_be_object`.
pub fn object(value: &Value) -> Result<&Map<String, Value>, Reason> {
    value.as_object().ok_or(Reason::MustBeObject)
}

/// An optional object: blank → `{}` (the original accepts `""` for an object).
pub fn optional_object(value: Option<&Value>) -> Result<Map<String, Value>, Reason> {
    if is_blank(value) {
        return Ok(Map::new());
    }
    object(value.expect("not blank")).cloned()
}

/// A JSON list: not a list → `must_be_list`.
pub fn list(value: &Value) -> Result<&Vec<Value>, Reason> {
    value.as_array().ok_or(Reason::MustBeList)
}

/// An optional list: blank → `[]`.
pub fn optional_list(value: Option<&Value>) -> Result<Vec<Value>, Reason> {
    if is_blank(value) {
        return Ok(Vec::new());
    }
    list(value.expect("not blank")).cloned()
}

/// A list with at least one item: absent, not a list or empty → `must_be_non_empty_list`.
pub fn non_empty_list(value: Option<&Value>) -> Result<&Vec<Value>, Reason> {
    match value {
        Some(Value::Array(items)) if !items.is_empty() => Ok(items),
        _ => Err(Reason::MustBeNonEmptyList),
    }
}

/// A list of non-empty strings (`tags`): blank → `[]`; not a list → `must_be_list`; an item
/// that is not a non-empty string → `must_be_non_empty_strings`. Items are stripped.
pub fn string_list(value: Option<&Value>) -> Result<Vec<String>, Reason> {
    optional_list(value)?
        .iter()
        .map(|item| non_empty_string(item).map_err(|_| Reason::MustBeNonEmptyStrings))
        .collect()
}

/// A required slug (Django `validate_slug`), stripped: missing/blank → `required`, not a
/// slug → `invalid`.
pub fn slug(value: Option<&Value>) -> Result<String, Reason> {
    let s = required_string(value)?;
    if slug::is_slug(&s) {
        Ok(s)
    } else {
        Err(Reason::Invalid)
    }
}

/// A required email address (Django `validate_email` on the stripped value): missing or
/// blank → `required`, malformed → `invalid`. Returned stripped, not normalized.
pub fn email(value: Option<&Value>) -> Result<String, Reason> {
    let s = required_string(value)?;
    if email::is_valid(&s) {
        Ok(s)
    } else {
        Err(Reason::Invalid)
    }
}

/// At most `max` characters (Python `len`, i.e. code points) → else `too_long`.
pub fn max_chars(s: String, max: usize) -> Result<String, Reason> {
    if s.chars().count() > max {
        Err(Reason::TooLong)
    } else {
        Ok(s)
    }
}

/// Python's `int(value)` for API input: integers, integral floats truncated, booleans,
/// and strings of digits (sign, surrounding whitespace and `_` separators allowed) →
/// else `must_be_integer`.
pub fn integer(value: &Value) -> Result<i64, Reason> {
    match value {
        Value::Bool(b) => Ok(i64::from(*b)),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.trunc() as i64)
            })
            .ok_or(Reason::MustBeInteger),
        Value::String(s) => parse_py_int(s).ok_or(Reason::MustBeInteger),
        _ => Err(Reason::MustBeInteger),
    }
}

/// An integer ≥ 1 (`cursor`): not an integer → `must_be_integer`, < 1 → `must_be_positive`.
pub fn positive_integer(value: &Value) -> Result<i64, Reason> {
    let n = integer(value)?;
    if n < 1 {
        Err(Reason::MustBePositive)
    } else {
        Ok(n)
    }
}

fn parse_py_int(s: &str) -> Option<i64> {
    let s = py_strip(s);
    let (sign, digits) = match s.as_bytes().first()? {
        b'-' => (-1, &s[1..]),
        b'+' => (1, &s[1..]),
        _ => (1, s),
    };
    let valid = !digits.is_empty()
        && !digits.starts_with('_')
        && !digits.ends_with('_')
        && !digits.contains("__")
        && digits.chars().all(|c| c.is_ascii_digit() || c == '_');
    if !valid {
        return None;
    }
    digits
        .replace('_', "")
        .parse::<i64>()
        .ok()
        .map(|n| sign * n)
}

/// An optional ISO 8601 date-time (Django `parse_datetime`, naive values taken as UTC):
/// blank → `None`; anything else that does not parse → `must_be_iso_datetime`.
pub fn iso_datetime(value: Option<&Value>) -> Result<Option<DateTime<Utc>>, Reason> {
    if is_blank(value) {
        return Ok(None);
    }
    match value.expect("not blank") {
        Value::String(s) => parse_iso_datetime(s)
            .map(Some)
            .ok_or(Reason::MustBeIsoDatetime),
        _ => Err(Reason::MustBeIsoDatetime),
    }
}

/// What Django's `parse_datetime` accepts (Python's `datetime.fromisoformat` first):
/// `YYYY-MM-DD`, optionally `T` or a space and `HH:MM[:SS[.ffffff]]`, optionally `Z` or
/// `±HH[:MM]`. Naive values are UTC (the original's `TIME_ZONE`).
pub fn parse_iso_datetime(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(date) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(Utc.from_utc_datetime(&date.and_time(NaiveTime::MIN)));
    }
    let (body, offset) = split_offset(s)?;
    let naive = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(body, f).ok())?;
    let local = offset.from_local_datetime(&naive).single()?;
    Some(local.with_timezone(&Utc))
}

/// Splits a trailing `Z` or `±HH[:MM]` offset off a date-time string.
fn split_offset(s: &str) -> Option<(&str, FixedOffset)> {
    let utc = FixedOffset::east_opt(0).expect("zero offset");
    if let Some(body) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        return Some((body, utc));
    }
    let time_start = s.find(['T', ' ']).map_or(s.len(), |i| i + 1);
    let Some(pos) = s[time_start..].rfind(['+', '-']).map(|p| time_start + p) else {
        return Some((s, utc));
    };
    let (body, tz) = s.split_at(pos);
    let sign = if tz.starts_with('-') { -1 } else { 1 };
    let digits: String = tz[1..].chars().filter(|c| *c != ':').collect();
    if !(digits.len() == 2 || digits.len() == 4) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = if digits.len() == 4 {
        digits[2..].parse().ok()?
    } else {
        0
    };
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60)).map(|o| (body, o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_keep_insertion_order_and_python_assignment() {
        let mut errors = FieldErrors::new();
        add(&mut errors, "template_key", "required");
        add(&mut errors, "email", "required");
        add(&mut errors, "template_key", "invalid");
        assert_eq!(errors["template_key"], *"invalid");
        assert_eq!(
            serde_json::to_string(&errors).unwrap(),
            r#"{"template_key":"invalid","email":"required"}"#
        );
        assert!(!errors.is_forbidden());
        errors.extend(FieldErrors::one("client", "forbidden"));
        assert!(errors.is_forbidden());
        assert_eq!(errors.len(), 3);
    }

    #[test]
    fn finish_and_check() {
        assert_eq!(finish(FieldErrors::new(), 1), Ok(1));
        let mut errors = FieldErrors::new();
        assert_eq!(check(&mut errors, "a", Ok::<_, Reason>(2)), Some(2));
        assert_eq!(check::<i32>(&mut errors, "b", Err(Reason::Invalid)), None);
        assert_eq!(errors.get("b"), Some("invalid"));
        assert!(finish(errors, 1).is_err());
    }

    #[test]
    fn blank_is_none_or_empty_string() {
        assert!(is_blank(None));
        assert!(is_blank(Some(&json!(null))));
        assert!(is_blank(Some(&json!(""))));
        assert!(!is_blank(Some(&json!(" "))));
        assert!(!is_blank(Some(&json!(0))));
        assert!(!is_blank(Some(&json!(false))));
        let body = json!({"a": null, "b": 1});
        let map = body.as_object().unwrap();
        assert!(present(map, "a").is_none() && present(map, "b").is_some());
    }

    #[test]
    fn strings() {
        assert_eq!(required_string(Some(&json!("  x "))), Ok("x".into()));
        for bad in [json!(null), json!(""), json!("  "), json!(5)] {
            assert_eq!(required_string(Some(&bad)), Err(Reason::Required));
        }
        assert_eq!(required_string(None), Err(Reason::Required));
        assert_eq!(string(&json!(1)), Err(Reason::MustBeString));
        assert_eq!(optional_string(Some(&json!(null)), "d"), Ok("d".into()));
        assert_eq!(optional_string(Some(&json!(" a ")), ""), Ok("a".into()));
        assert_eq!(
            optional_string(Some(&json!([])), ""),
            Err(Reason::MustBeString)
        );
        assert_eq!(
            non_empty_string(&json!("   ")),
            Err(Reason::MustBeNonEmptyString)
        );
        assert_eq!(
            non_empty_string(&json!(3)),
            Err(Reason::MustBeNonEmptyString)
        );
        assert_eq!(optional_non_empty_string(Some(&json!(""))), Ok(None));
        assert_eq!(
            optional_non_empty_string(Some(&json!(" k "))),
            Ok(Some("k".into()))
        );
        assert_eq!(py_strip("\x1c a \u{3000}"), "a");
        assert_eq!(non_blank_str(&json!(" x ")), Some(" x "));
        assert_eq!(non_blank_str(&json!("  ")), None);
    }

    #[test]
    fn booleans() {
        assert_eq!(boolean(&json!(true)), Ok(true));
        assert_eq!(boolean(&json!("yes")), Err(Reason::MustBeBoolean));
        assert_eq!(bool_or(None, Some(true)), Ok(true));
        assert_eq!(bool_or(Some(&json!(null)), None), Err(Reason::Required));
        assert_eq!(
            bool_or(Some(&json!("")), Some(false)),
            Err(Reason::MustBeBoolean)
        );
        assert_eq!(optional_bool(Some(&json!("")), false), Ok(false));
        assert_eq!(
            optional_bool(Some(&json!(1)), false),
            Err(Reason::MustBeBoolean)
        );
    }

    #[test]
    fn objects_and_lists() {
        assert_eq!(optional_object(Some(&json!(""))), Ok(Map::new()));
        assert_eq!(optional_object(Some(&json!([]))), Err(Reason::MustBeObject));
        assert!(object(&json!({})).is_ok());
        assert_eq!(optional_list(Some(&json!(null))), Ok(vec![]));
        assert_eq!(list(&json!({})), Err(Reason::MustBeList));
        assert_eq!(
            non_empty_list(Some(&json!([]))),
            Err(Reason::MustBeNonEmptyList)
        );
        assert_eq!(non_empty_list(None), Err(Reason::MustBeNonEmptyList));
        assert_eq!(non_empty_list(Some(&json!([1]))).unwrap().len(), 1);
        assert_eq!(
            string_list(Some(&json!([" a", "b"]))),
            Ok(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            string_list(Some(&json!(["a", ""]))),
            Err(Reason::MustBeNonEmptyStrings)
        );
        assert_eq!(string_list(Some(&json!("a"))), Err(Reason::MustBeList));
    }

    #[test]
    fn slugs_and_emails() {
        assert_eq!(slug(Some(&json!(" welcome-1 "))), Ok("welcome-1".into()));
        assert_eq!(slug(Some(&json!("a b"))), Err(Reason::Invalid));
        assert_eq!(slug(Some(&json!(""))), Err(Reason::Required));
        assert_eq!(
            email(Some(&json!(" Ada@Example.com "))),
            Ok("Ada@Example.com".into())
        );
        assert_eq!(email(Some(&json!("nope"))), Err(Reason::Invalid));
        assert_eq!(email(None), Err(Reason::Required));
        assert_eq!(max_chars("é".repeat(3), 3), Ok("ééé".into()));
        assert_eq!(max_chars("abcd".into(), 3), Err(Reason::TooLong));
    }

    #[test]
    fn integers() {
        assert_eq!(integer(&json!(5)), Ok(5));
        assert_eq!(integer(&json!(5.9)), Ok(5));
        assert_eq!(integer(&json!(" 12 ")), Ok(12));
        assert_eq!(integer(&json!("-1_000")), Ok(-1000));
        assert_eq!(integer(&json!(true)), Ok(1));
        for bad in [
            json!("1.5"),
            json!("x"),
            json!(""),
            json!([]),
            json!("1__0"),
        ] {
            assert_eq!(integer(&bad), Err(Reason::MustBeInteger), "{bad}");
        }
        assert_eq!(positive_integer(&json!("0")), Err(Reason::MustBePositive));
        assert_eq!(positive_integer(&json!("3")), Ok(3));
    }

    #[test]
    fn datetimes() {
        let t = |s: &str| iso_datetime(Some(&json!(s)));
        assert_eq!(
            t("2026-01-02T03:04:05Z").unwrap().unwrap().to_rfc3339(),
            "2026-01-02T03:04:05+00:00"
        );
        assert_eq!(
            t("2026-01-02 03:04:05.5+02:00")
                .unwrap()
                .unwrap()
                .to_rfc3339(),
            "2026-01-02T01:04:05.500+00:00"
        );
        assert_eq!(
            t("2026-01-02T03:04").unwrap().unwrap().to_rfc3339(),
            "2026-01-02T03:04:00+00:00"
        );
        assert_eq!(
            t("2026-01-02").unwrap().unwrap().to_rfc3339(),
            "2026-01-02T00:00:00+00:00"
        );
        assert_eq!(
            t("2026-01-02T03:04:05-0130").unwrap().unwrap().to_rfc3339(),
            "2026-01-02T04:34:05+00:00"
        );
        assert_eq!(t("yesterday"), Err(Reason::MustBeIsoDatetime));
        assert_eq!(
            iso_datetime(Some(&json!(5))),
            Err(Reason::MustBeIsoDatetime)
        );
        assert_eq!(iso_datetime(Some(&json!(""))), Ok(None));
    }
}
