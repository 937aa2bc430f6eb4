//! Field-level validation errors, shaped like the API's
//! `{"error":{"code":"validation_error","fields":{...}}}` body.

use serde_json::{Map, Value};

/// Field path (e.g. `cc.0`, `headers.Subject`) → reason code (`required`, `invalid`, ...).
/// Ordered so responses and tests are deterministic.
pub type FieldErrors = std::collections::BTreeMap<String, String>;

/// Records `reason` for `field`, keeping the first reason if the field already failed.
pub fn add(errors: &mut FieldErrors, field: impl Into<String>, reason: impl Into<String>) {
    errors.entry(field.into()).or_insert_with(|| reason.into());
}

/// `Ok(value)` when no errors were collected, so parsers can end with one call.
pub fn finish<T>(errors: FieldErrors, value: T) -> Result<T, FieldErrors> {
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(errors)
    }
}

/// The value of `key`, treating JSON null as absent (the API's `body.get(k)` semantics).
pub fn present<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

/// A string that is non-empty after trimming.
pub fn non_blank_str(value: &Value) -> Option<&str> {
    value.as_str().filter(|s| !s.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn add_keeps_first_reason() {
        let mut errors = FieldErrors::new();
        add(&mut errors, "email", "required");
        add(&mut errors, "email", "invalid");
        assert_eq!(errors["email"], "required");
    }

    #[test]
    fn finish_reports_errors() {
        assert_eq!(finish(FieldErrors::new(), 1), Ok(1));
        let mut errors = FieldErrors::new();
        add(&mut errors, "x", "invalid");
        assert!(finish(errors, 1).is_err());
    }

    #[test]
    fn present_treats_null_as_absent() {
        let body = json!({"a": null, "b": 1});
        let map = body.as_object().unwrap();
        assert!(present(map, "a").is_none());
        assert!(present(map, "b").is_some());
        assert!(present(map, "c").is_none());
    }

    #[test]
    fn non_blank_rejects_whitespace() {
        assert_eq!(non_blank_str(&json!(" x ")), Some(" x "));
        assert_eq!(non_blank_str(&json!("  ")), None);
        assert_eq!(non_blank_str(&json!(3)), None);
    }
}
