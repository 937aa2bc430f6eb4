//! Timestamp formatting exactly as the original API prints it
//! (Python `isoformat()` with `+00:00` replaced by `Z`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// ISO 8601 with microseconds and `Z`, e.g. `2026-01-02T03:04:05.123456Z`.
pub fn iso(dt: DateTime<Utc>) -> String {
    dt.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Like [`iso`], but JSON null for unset timestamps.
pub fn iso_opt(dt: Option<DateTime<Utc>>) -> Value {
    dt.map_or(Value::Null, |dt| Value::String(iso(dt)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn iso_has_micros_and_z() {
        let dt = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
            + chrono::Duration::microseconds(123_456);
        assert_eq!(iso(dt), "2026-01-02T03:04:05.123456Z");
    }

    #[test]
    fn iso_pads_zero_micros() {
        let dt = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(iso(dt), "2026-01-02T03:04:05.000000Z");
    }

    #[test]
    fn iso_opt_null_when_unset() {
        assert_eq!(iso_opt(None), Value::Null);
        let dt = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(iso_opt(Some(dt)), Value::String(iso(dt)));
    }
}
