//! Number and date formatting as the original prints them: Django's `localize` for the
//! `en-us` locale (no thousand separator), `floatformat`'s decimal rounding, Python's
//! `%`-formatting for `stringformat`, and Django's `dateformat` for `{% now %}`.

use chrono::{DateTime, Datelike, Timelike, Utc};

use super::value::{fixed_from_digits, float_repr, shortest_digits, Value};

/// Django's `localize` + `str` for what a variable prints.
pub fn localize(v: &Value) -> String {
    match v {
        Value::Float(f) => number_format_float(*f),
        other => other.to_py_str(),
    }
}

/// `numberformat.format(float)` without grouping: floats whose repr has an exponent are
/// written out in full (through `Decimal`), the rest as `repr`.
fn number_format_float(f: f64) -> String {
    let repr = float_repr(f);
    if !repr.contains('e') {
        return repr;
    }
    let (negative, digits, decpt) = shortest_digits(f);
    let exponent = decpt - digits.len() as i32;
    let sign = if negative { "-" } else { "" };
    if exponent.unsigned_abs() as usize + digits.len() > 200 {
        // Django keeps scientific notation for very long expansions.
        let mantissa = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits.clone()
        };
        let e = decpt - 1;
        return format!(
            "{sign}{mantissa}e{}{}",
            if e < 0 { '-' } else { '+' },
            e.abs()
        );
    }
    format!("{sign}{}", fixed_from_digits(&digits, decpt, false))
}

/// Groups an integer part by thousands with `,` (the `en` locale, `floatformat`'s `g`).
pub fn group_thousands(int_part: &str) -> String {
    let (sign, digits) = match int_part.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", int_part),
    };
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

// ---------------------------------------------------------------------------
// Decimal (just what floatformat needs)
// ---------------------------------------------------------------------------

/// A finite decimal: sign, digits (no leading zeros unless zero) and exponent.
#[derive(Debug, Clone, PartialEq)]
pub struct Decimal {
    pub negative: bool,
    pub digits: Vec<u8>,
    pub exponent: i64,
}

impl Decimal {
    /// Python's `Decimal(str)` for finite numbers (whitespace, `_`, exponent allowed).
    pub fn parse(s: &str) -> Option<Decimal> {
        let s = crate::fields::py_strip(s).replace('_', "");
        let (negative, rest) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, &s[..]),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
            None => (rest, 0),
        };
        let (int, frac) = match mantissa.split_once('.') {
            Some((a, b)) => (a, b),
            None => (mantissa, ""),
        };
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
        while digits.len() > 1 && digits[0] == 0 {
            digits.remove(0);
        }
        Some(Decimal {
            negative,
            digits,
            exponent: exp - frac.len() as i64,
        })
    }

    /// Whether the value has a non-zero fractional part.
    pub fn has_fraction(&self) -> bool {
        if self.exponent >= 0 {
            return false;
        }
        let frac_len = (-self.exponent) as usize;
        let n = self.digits.len();
        self.digits[n.saturating_sub(frac_len)..]
            .iter()
            .any(|d| *d != 0)
    }

    /// The integer part's digits (truncated toward zero).
    pub fn int_digits(&self) -> String {
        let n = self.digits.len() as i64;
        let keep = n + self.exponent;
        if keep <= 0 {
            return "0".into();
        }
        let mut s: String = self.digits[..keep.min(n) as usize]
            .iter()
            .map(|d| char::from(b'0' + d))
            .collect();
        for _ in n..keep {
            s.push('0');
        }
        let trimmed = s.trim_start_matches('0');
        if trimmed.is_empty() {
            "0".into()
        } else {
            trimmed.to_owned()
        }
    }

    /// Rounded to `places` decimals with ROUND_HALF_UP, as a plain string (no exponent),
    /// with a `-` only when the rounded value is not zero.
    pub fn quantize_half_up(&self, places: usize) -> String {
        let target = -(places as i64);
        let mut digits = self.digits.clone();
        let mut exponent = self.exponent;
        if exponent < target {
            let drop = (target - exponent) as usize;
            let round_up;
            if drop > digits.len() {
                round_up = false;
                digits = vec![0];
            } else {
                let cut = digits.len() - drop;
                round_up = digits[cut] >= 5;
                digits.truncate(cut);
                if digits.is_empty() {
                    digits.push(0);
                }
            }
            exponent = target;
            if round_up {
                let mut i = digits.len();
                loop {
                    if i == 0 {
                        digits.insert(0, 1);
                        break;
                    }
                    i -= 1;
                    if digits[i] == 9 {
                        digits[i] = 0;
                    } else {
                        digits[i] += 1;
                        break;
                    }
                }
            }
        }
        while exponent > target {
            digits.push(0);
            exponent -= 1;
        }
        // digits × 10^-places.
        let mut s: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
        while s.len() <= places {
            s.insert(0, '0');
        }
        if places > 0 {
            s.insert(s.len() - places, '.');
        }
        let s = s.trim_start_matches('0');
        let s = if s.starts_with('.') || s.is_empty() {
            format!("0{s}")
        } else {
            s.to_owned()
        };
        let zero = s.bytes().all(|b| b == b'0' || b == b'.');
        if self.negative && !zero {
            format!("-{s}")
        } else {
            s
        }
    }
}

// ---------------------------------------------------------------------------
// Python %-formatting (stringformat)
// ---------------------------------------------------------------------------

/// `("%" + spec) % value`; `None` where Python raises (the filter then gives "").
pub fn percent_format(spec: &str, value: &Value) -> Option<String> {
    let bytes = spec.as_bytes();
    let mut i = 0;
    let mut flags = String::new();
    while i < bytes.len() && b"#0- +".contains(&bytes[i]) {
        flags.push(bytes[i] as char);
        i += 1;
    }
    let width_start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let width: usize = spec[width_start..i].parse().unwrap_or(0);
    let mut precision: Option<usize> = None;
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        let p_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        precision = Some(spec[p_start..i].parse().unwrap_or(0));
    }
    while i < bytes.len() && b"hlL".contains(&bytes[i]) {
        i += 1;
    }
    if i + 1 != bytes.len() {
        // A conversion followed by more text: Python formats the rest literally only
        // when it has no further conversions; keep it simple and support one conversion.
        if i >= bytes.len() {
            return None;
        }
        let tail = &spec[i + 1..];
        if tail.contains('%') {
            return None;
        }
        let head = percent_format(&spec[..=i], value)?;
        return Some(format!("{head}{tail}"));
    }
    let conv = bytes[i] as char;
    let left = flags.contains('-');
    let zero = flags.contains('0') && !left;
    let plus = flags.contains('+');
    let space = flags.contains(' ');
    let alt = flags.contains('#');
    let sign_of = |negative: bool| {
        if negative {
            "-"
        } else if plus {
            "+"
        } else if space {
            " "
        } else {
            ""
        }
    };
    let (sign, body, numeric) = match conv {
        's' | 'r' | 'a' => {
            let mut s = if conv == 's' {
                value.to_py_str()
            } else {
                value.repr()
            };
            if let Some(p) = precision {
                s = s.chars().take(p).collect();
            }
            (String::new(), s, false)
        }
        'd' | 'i' | 'u' => {
            let n = int_of(value)?;
            let mut digits = n.unsigned_abs().to_string();
            if let Some(p) = precision {
                while digits.len() < p {
                    digits.insert(0, '0');
                }
            }
            (sign_of(n < 0).to_owned(), digits, true)
        }
        'x' | 'X' | 'o' => {
            let n = value.as_int()?;
            let mut digits = match conv {
                'x' => format!("{:x}", n.unsigned_abs()),
                'X' => format!("{:X}", n.unsigned_abs()),
                _ => format!("{:o}", n.unsigned_abs()),
            };
            if let Some(p) = precision {
                while digits.len() < p {
                    digits.insert(0, '0');
                }
            }
            if alt {
                digits = format!(
                    "{}{digits}",
                    match conv {
                        'x' => "0x",
                        'X' => "0X",
                        _ => "0o",
                    }
                );
            }
            (sign_of(n < 0).to_owned(), digits, true)
        }
        'f' | 'F' | 'e' | 'E' | 'g' | 'G' => {
            let f = match value {
                Value::Str(..)
                | Value::None
                | Value::List(_)
                | Value::Dict(_)
                | Value::Tuple(_) => return None,
                other => other.as_number()?,
            };
            let p = precision.unwrap_or(6);
            let body = float_conv(f.abs(), conv, p, alt);
            (
                sign_of(f.is_sign_negative() && !f.is_nan()).to_owned(),
                body,
                true,
            )
        }
        'c' => match value {
            Value::Int(n) => (
                String::new(),
                char::from_u32(u32::try_from(*n).ok()?)?.to_string(),
                false,
            ),
            Value::Str(s, _) if s.chars().count() == 1 => (String::new(), s.to_string(), false),
            _ => return None,
        },
        '%' => (String::new(), "%".to_owned(), false),
        _ => return None,
    };
    let len = sign.chars().count() + body.chars().count();
    if len >= width {
        return Some(format!("{sign}{body}"));
    }
    let pad = width - len;
    Some(if left {
        format!("{sign}{body}{}", " ".repeat(pad))
    } else if zero && numeric {
        format!("{sign}{}{body}", "0".repeat(pad))
    } else {
        format!("{}{sign}{body}", " ".repeat(pad))
    })
}

fn int_of(value: &Value) -> Option<i64> {
    match value {
        Value::Float(f) if f.is_finite() => Some(f.trunc() as i64),
        other => other.as_int(),
    }
}

/// `%f`, `%e`, `%g` of a non-negative float.
fn float_conv(f: f64, conv: char, p: usize, alt: bool) -> String {
    if f.is_nan() {
        return if conv.is_uppercase() { "NAN" } else { "nan" }.into();
    }
    if f.is_infinite() {
        return if conv.is_uppercase() { "INF" } else { "inf" }.into();
    }
    match conv {
        'f' | 'F' => format!("{f:.p$}"),
        'e' | 'E' => {
            let s = exp_format(f, p);
            if conv == 'E' {
                s.to_uppercase()
            } else {
                s
            }
        }
        _ => {
            let p = if p == 0 { 1 } else { p };
            let exp = if f == 0.0 {
                0
            } else {
                let s = format!("{:.*e}", p - 1, f);
                s.split_once('e')
                    .map_or(0, |(_, e)| e.parse::<i32>().unwrap_or(0))
            };
            let mut s = if exp < -4 || exp >= p as i32 {
                exp_format(f, p - 1)
            } else {
                format!("{:.*}", (p as i32 - 1 - exp).max(0) as usize, f)
            };
            if !alt {
                s = strip_g_zeros(&s);
            }
            if conv == 'G' {
                s.to_uppercase()
            } else {
                s
            }
        }
    }
}

fn exp_format(f: f64, p: usize) -> String {
    let s = format!("{f:.p$e}");
    let (mantissa, exp) = s.split_once('e').expect("exponent");
    let exp: i32 = exp.parse().expect("exponent");
    format!(
        "{mantissa}e{}{:02}",
        if exp < 0 { '-' } else { '+' },
        exp.abs()
    )
}

fn strip_g_zeros(s: &str) -> String {
    let (mantissa, exp) = match s.find('e') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let mantissa = if mantissa.contains('.') {
        mantissa.trim_end_matches('0').trim_end_matches('.')
    } else {
        mantissa
    };
    format!("{mantissa}{exp}")
}

// ---------------------------------------------------------------------------
// Dates (`{% now %}`): Django's dateformat for a UTC datetime, English names.
// ---------------------------------------------------------------------------

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const MONTHS_AP: [&str; 12] = [
    "Jan.", "Feb.", "March", "April", "May", "June", "July", "Aug.", "Sept.", "Oct.", "Nov.",
    "Dec.",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// The `en` locale's named formats.
pub fn named_format(name: &str) -> Option<&'static str> {
    Some(match name {
        "DATE_FORMAT" => "N j, Y",
        "DATETIME_FORMAT" => "N j, Y, P",
        "TIME_FORMAT" => "P",
        "YEAR_MONTH_FORMAT" => "F Y",
        "MONTH_DAY_FORMAT" => "F j",
        "SHORT_DATE_FORMAT" => "m/d/Y",
        "SHORT_DATETIME_FORMAT" => "m/d/Y P",
        _ => return None,
    })
}

/// Django's `dateformat.format(dt, fmt)` for an aware UTC datetime.
pub fn date_format(dt: DateTime<Utc>, fmt: &str) -> String {
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
            continue;
        }
        match date_char(dt, c) {
            Some(s) => out.push_str(&s),
            None => out.push(c),
        }
    }
    out
}

fn twelve_hour(h: u32) -> u32 {
    match h % 12 {
        0 => 12,
        x => x,
    }
}

fn date_char(dt: DateTime<Utc>, c: char) -> Option<String> {
    let (h, m, s) = (dt.hour(), dt.minute(), dt.second());
    let month0 = dt.month0() as usize;
    Some(match c {
        'a' => if h < 12 { "a.m." } else { "p.m." }.into(),
        'A' => if h < 12 { "AM" } else { "PM" }.into(),
        'b' => MONTHS[month0][..3].to_lowercase(),
        'c' => {
            let micros = dt.timestamp_subsec_micros();
            let base = dt.format("%Y-%m-%dT%H:%M:%S").to_string();
            if micros > 0 {
                format!("{base}.{micros:06}+00:00")
            } else {
                format!("{base}+00:00")
            }
        }
        'd' => format!("{:02}", dt.day()),
        'D' => DAYS[dt.weekday().num_days_from_monday() as usize][..3].into(),
        'e' | 'T' => "UTC".into(),
        'E' | 'F' => MONTHS[month0].into(),
        'f' => {
            let hour = twelve_hour(h);
            if m == 0 {
                hour.to_string()
            } else {
                format!("{hour}:{m:02}")
            }
        }
        'g' => twelve_hour(h).to_string(),
        'G' => h.to_string(),
        'h' => format!("{:02}", twelve_hour(h)),
        'H' => format!("{h:02}"),
        'i' => format!("{m:02}"),
        'I' => "0".into(),
        'j' => dt.day().to_string(),
        'l' => DAYS[dt.weekday().num_days_from_monday() as usize].into(),
        'L' => if dt.date_naive().leap_year() {
            "True"
        } else {
            "False"
        }
        .into(),
        'm' => format!("{:02}", dt.month()),
        'M' => MONTHS[month0][..3].into(),
        'n' => dt.month().to_string(),
        'N' => MONTHS_AP[month0].into(),
        'o' => dt.iso_week().year().to_string(),
        'O' => "+0000".into(),
        'P' => {
            if m == 0 && h == 0 {
                "midnight".into()
            } else if m == 0 && h == 12 {
                "noon".into()
            } else {
                format!(
                    "{} {}",
                    date_char(dt, 'f').expect("f"),
                    date_char(dt, 'a').expect("a")
                )
            }
        }
        'r' => dt.format("%a, %d %b %Y %H:%M:%S +0000").to_string(),
        's' => format!("{s:02}"),
        'S' => {
            let d = dt.day();
            match d {
                11..=13 => "th",
                _ => match d % 10 {
                    1 => "st",
                    2 => "nd",
                    3 => "rd",
                    _ => "th",
                },
            }
            .into()
        }
        't' => {
            let (y, mo) = (dt.year(), dt.month());
            let next = if mo == 12 {
                chrono::NaiveDate::from_ymd_opt(y + 1, 1, 1)
            } else {
                chrono::NaiveDate::from_ymd_opt(y, mo + 1, 1)
            }
            .expect("valid date");
            next.pred_opt().expect("valid").day().to_string()
        }
        'u' => format!("{:06}", dt.timestamp_subsec_micros()),
        'U' => dt.timestamp().to_string(),
        'w' => dt.weekday().num_days_from_sunday().to_string(),
        'W' => dt.iso_week().week().to_string(),
        'y' => format!("{:02}", dt.year() % 100),
        'Y' => format!("{:04}", dt.year()),
        'z' => dt.ordinal().to_string(),
        'Z' => "0".into(),
        _ => return None,
    })
}

/// Format characters that read nothing from the value but its time zone: for a value that
/// is not a date, Django's `date` filter prints "" for these and fails for the others.
pub fn is_timezone_only(c: char) -> bool {
    matches!(c, 'e' | 'I' | 'O' | 'T' | 'Z')
}

/// Whether `c` is a dateformat character at all.
pub fn is_format_char(c: char) -> bool {
    "aAbcdDeEfFgGhHiIjlLmMnNoOPrsStTuUwWyYzZ".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_round_half_up() {
        let d = Decimal::parse("34.26000").unwrap();
        assert_eq!(d.quantize_half_up(1), "34.3");
        assert_eq!(Decimal::parse("2.5").unwrap().quantize_half_up(0), "3");
        assert_eq!(Decimal::parse("-0.04").unwrap().quantize_half_up(1), "0.0");
        assert_eq!(Decimal::parse("9.99").unwrap().quantize_half_up(1), "10.0");
        assert_eq!(Decimal::parse("1E+3").unwrap().int_digits(), "1000");
    }

    #[test]
    fn percent_formats() {
        assert_eq!(percent_format("05d", &Value::Int(42)).unwrap(), "00042");
        assert_eq!(
            percent_format(".2f", &Value::Float(1.23456)).unwrap(),
            "1.23"
        );
        assert_eq!(percent_format("x", &Value::Int(255)).unwrap(), "ff");
        assert_eq!(percent_format("s", &Value::str("a")).unwrap(), "a");
        assert_eq!(
            percent_format("e", &Value::Float(12345.678)).unwrap(),
            "1.234568e+04"
        );
        assert_eq!(
            percent_format("g", &Value::Float(0.00001234)).unwrap(),
            "1.234e-05"
        );
        assert!(percent_format("d", &Value::str("a")).is_none());
    }

    #[test]
    fn localized_floats() {
        assert_eq!(localize(&Value::Float(1e20)), "100000000000000000000");
        assert_eq!(localize(&Value::Float(1.5e-5)), "0.000015");
        assert_eq!(localize(&Value::Float(2.5)), "2.5");
        assert_eq!(group_thousands("-1234567"), "-1,234,567");
    }
}
