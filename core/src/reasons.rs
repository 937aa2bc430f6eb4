//! The reason codes a `validation_error` answers per field: one table for every endpoint,
//! each code spelled and meant as the original datamailer answers it (its `api.py`,
//! `transactional.py`, `senders.py`, `recipient_lists.py`, `contact_import_export.py`,
//! `mailchimp.py` and views), plus the few we add, marked *ours*.

use std::fmt;

/// One reason code. `code()` is the wire string; `meaning()` says when it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Absent, null, not the expected kind, or a blank string where a value is needed
    /// (the original's `not isinstance(v, str) or not v.strip()`).
    Required,
    /// Present but not a string.
    MustBeString,
    /// Present, and not a string or only whitespace (optional fields that, when given,
    /// must say something: `idempotency_key`, `category_tag`, `reply_to`, `cc.N`).
    MustBeNonEmptyString,
    /// A list whose items must all be non-empty strings has one that is not (`tags`).
    MustBeNonEmptyStrings,
    /// Present but not a list.
    MustBeList,
    /// Absent, not a list, or an empty list where at least one item is needed (`senders`).
    MustBeNonEmptyList,
    /// Present but not a JSON object (also the body itself: `body: must_be_object`).
    MustBeObject,
    /// Present but not `true`/`false` (a string "yes" or "true" is not a boolean).
    MustBeBoolean,
    /// Not an integer (query parameters such as `limit`, `cursor`).
    MustBeInteger,
    /// Not an ISO 8601 date-time (`verified_at`, `validated_at`, `updated_since`).
    MustBeIsoDatetime,
    /// An integer that must be ≥ 1 is not (`cursor`).
    MustBePositive,
    /// A CSV body that is not UTF-8.
    MustBeUtf8,
    /// Longer than the field allows (subjects, keys, URLs).
    TooLong,
    /// Content over its size limit (`message_parts.N.content` > 200,000 characters).
    TooLarge,
    /// More items than allowed (`headers` > 20, `message_parts` > 10, test `emails` > 25).
    TooMany,
    /// The right kind of value but not an acceptable one (a bad email address, a non-slug
    /// id, an unknown enum value, a key with `/`).
    Invalid,
    /// The request body is not JSON (`body: invalid_json`).
    InvalidJson,
    /// No such object in the caller's scope (404 for path objects, 400 for `audience`).
    NotFound,
    /// A scope field naming another client (`client`); answered with status 403.
    Forbidden,
    /// A sender id that is not among the client's senders, or no sender at all.
    NotConfigured,
    /// The same id twice in one list (`senders.N.id`, `mappings.N`).
    Duplicate,
    /// A duplicate item in a bulk import (a result's `reason`, not a field error).
    DuplicateInput,
    /// A header name outside `[A-Za-z0-9-]{1,80}`.
    InvalidName,
    /// A header value that is not a string or contains CR/LF.
    InvalidValue,
    /// A header the service sets itself (from, to, cc, bcc, reply-to, subject, content-type).
    Reserved,
    /// A message part whose content type is not `text/*`.
    Unsupported,
    /// A sender email that does not parse as an address (operator sender tooling).
    InvalidEmail,
    /// A CSV without its header row.
    MissingHeader,
    /// A Mailchimp API key without its `-<dc>` suffix.
    MissingDatacenterSuffix,
    /// Enabling a category for a hard-suppressed contact (409).
    SuppressedContactCannotBeEnabled,
    /// A campaign key already used in another audience (409).
    AudienceMismatch,
    /// A campaign that is no longer a draft (409).
    NotEditable,
    /// A campaign that can no longer be cancelled (409).
    NotCancellable,
    /// *Ours*: pausing a campaign that is not running (409).
    NotPausable,
    /// *Ours*: resuming a campaign that is not paused (409).
    NotResumable,
    /// *Ours*: a template field that is not valid Django template syntax (the original
    /// accepts it and fails every send with a 500).
    InvalidTemplate,
    /// *Ours*: a template that compiles but cannot render with this context (the original
    /// answers 500), e.g. `{{ x|divisibleby:0 }}`.
    RenderFailed,
}

impl Reason {
    /// Every code, in the table's order.
    pub const ALL: [Reason; 37] = [
        Reason::Required,
        Reason::MustBeString,
        Reason::MustBeNonEmptyString,
        Reason::MustBeNonEmptyStrings,
        Reason::MustBeList,
        Reason::MustBeNonEmptyList,
        Reason::MustBeObject,
        Reason::MustBeBoolean,
        Reason::MustBeInteger,
        Reason::MustBeIsoDatetime,
        Reason::MustBePositive,
        Reason::MustBeUtf8,
        Reason::TooLong,
        Reason::TooLarge,
        Reason::TooMany,
        Reason::Invalid,
        Reason::InvalidJson,
        Reason::NotFound,
        Reason::Forbidden,
        Reason::NotConfigured,
        Reason::Duplicate,
        Reason::DuplicateInput,
        Reason::InvalidName,
        Reason::InvalidValue,
        Reason::Reserved,
        Reason::Unsupported,
        Reason::InvalidEmail,
        Reason::MissingHeader,
        Reason::MissingDatacenterSuffix,
        Reason::SuppressedContactCannotBeEnabled,
        Reason::AudienceMismatch,
        Reason::NotEditable,
        Reason::NotCancellable,
        Reason::NotPausable,
        Reason::NotResumable,
        Reason::InvalidTemplate,
        Reason::RenderFailed,
    ];

    /// The code as it goes on the wire.
    pub const fn code(self) -> &'static str {
        match self {
            Reason::Required => "required",
            Reason::MustBeString => "must_be_string",
            Reason::MustBeNonEmptyString => "must_be_non_empty_string",
            Reason::MustBeNonEmptyStrings => "must_be_non_empty_strings",
            Reason::MustBeList => "must_be_list",
            Reason::MustBeNonEmptyList => "must_be_non_empty_list",
            Reason::MustBeObject => "must_be_object",
            Reason::MustBeBoolean => "must_be_boolean",
            Reason::MustBeInteger => "must_be_integer",
            Reason::MustBeIsoDatetime => "must_be_iso_datetime",
            Reason::MustBePositive => "must_be_positive",
            Reason::MustBeUtf8 => "must_be_utf8",
            Reason::TooLong => "too_long",
            Reason::TooLarge => "too_large",
            Reason::TooMany => "too_many",
            Reason::Invalid => "invalid",
            Reason::InvalidJson => "invalid_json",
            Reason::NotFound => "not_found",
            Reason::Forbidden => "forbidden",
            Reason::NotConfigured => "not_configured",
            Reason::Duplicate => "duplicate",
            Reason::DuplicateInput => "duplicate_input",
            Reason::InvalidName => "invalid_name",
            Reason::InvalidValue => "invalid_value",
            Reason::Reserved => "reserved",
            Reason::Unsupported => "unsupported",
            Reason::InvalidEmail => "invalid_email",
            Reason::MissingHeader => "missing_header",
            Reason::MissingDatacenterSuffix => "missing_datacenter_suffix",
            Reason::SuppressedContactCannotBeEnabled => "suppressed_contact_cannot_be_enabled",
            Reason::AudienceMismatch => "audience_mismatch",
            Reason::NotEditable => "not_editable",
            Reason::NotCancellable => "not_cancellable",
            Reason::NotPausable => "not_pausable",
            Reason::NotResumable => "not_resumable",
            Reason::InvalidTemplate => "invalid_template",
            Reason::RenderFailed => "render_failed",
        }
    }

    /// The code for a wire string, if it is one of ours.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Whether the original answers this code (false for the codes we added).
    pub const fn is_original(self) -> bool {
        !matches!(
            self,
            Reason::InvalidTemplate
                | Reason::RenderFailed
                | Reason::NotPausable
                | Reason::NotResumable
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl From<Reason> for String {
    fn from(reason: Reason) -> String {
        reason.code().to_owned()
    }
}

/// `must_be_between_<lo>_and_<hi>`: the original's code for a `limit` out of range
/// (e.g. `must_be_between_1_and_100`).
pub fn must_be_between(lo: i64, hi: i64) -> String {
    format!("must_be_between_{lo}_and_{hi}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Reason) -> &'static str {
        r.code()
    }

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.code()), "duplicate {r}");
            assert_eq!(Reason::from_code(r.code()), Some(r));
            assert!(r
                .code()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
        assert_eq!(Reason::from_code("nope"), None);
    }

    // One test per code: the wire spelling the original answers.
    #[test]
    fn required() {
        assert_eq!(code(Reason::Required), "required");
    }
    #[test]
    fn must_be_string() {
        assert_eq!(code(Reason::MustBeString), "must_be_string");
    }
    #[test]
    fn must_be_non_empty_string() {
        assert_eq!(
            code(Reason::MustBeNonEmptyString),
            "must_be_non_empty_string"
        );
    }
    #[test]
    fn must_be_non_empty_strings() {
        assert_eq!(
            code(Reason::MustBeNonEmptyStrings),
            "must_be_non_empty_strings"
        );
    }
    #[test]
    fn must_be_list() {
        assert_eq!(code(Reason::MustBeList), "must_be_list");
    }
    #[test]
    fn must_be_non_empty_list() {
        assert_eq!(code(Reason::MustBeNonEmptyList), "must_be_non_empty_list");
    }
    #[test]
    fn must_be_object() {
        assert_eq!(code(Reason::MustBeObject), "must_be_object");
    }
    #[test]
    fn must_be_boolean() {
        assert_eq!(code(Reason::MustBeBoolean), "must_be_boolean");
    }
    #[test]
    fn must_be_integer() {
        assert_eq!(code(Reason::MustBeInteger), "must_be_integer");
    }
    #[test]
    fn must_be_iso_datetime() {
        assert_eq!(code(Reason::MustBeIsoDatetime), "must_be_iso_datetime");
    }
    #[test]
    fn must_be_positive() {
        assert_eq!(code(Reason::MustBePositive), "must_be_positive");
    }
    #[test]
    fn must_be_utf8() {
        assert_eq!(code(Reason::MustBeUtf8), "must_be_utf8");
    }
    #[test]
    fn too_long() {
        assert_eq!(code(Reason::TooLong), "too_long");
    }
    #[test]
    fn too_large() {
        assert_eq!(code(Reason::TooLarge), "too_large");
    }
    #[test]
    fn too_many() {
        assert_eq!(code(Reason::TooMany), "too_many");
    }
    #[test]
    fn invalid() {
        assert_eq!(code(Reason::Invalid), "invalid");
    }
    #[test]
    fn invalid_json() {
        assert_eq!(code(Reason::InvalidJson), "invalid_json");
    }
    #[test]
    fn not_found() {
        assert_eq!(code(Reason::NotFound), "not_found");
    }
    #[test]
    fn forbidden() {
        assert_eq!(code(Reason::Forbidden), "forbidden");
    }
    #[test]
    fn not_configured() {
        assert_eq!(code(Reason::NotConfigured), "not_configured");
    }
    #[test]
    fn duplicate() {
        assert_eq!(code(Reason::Duplicate), "duplicate");
    }
    #[test]
    fn duplicate_input() {
        assert_eq!(code(Reason::DuplicateInput), "duplicate_input");
    }
    #[test]
    fn invalid_name() {
        assert_eq!(code(Reason::InvalidName), "invalid_name");
    }
    #[test]
    fn invalid_value() {
        assert_eq!(code(Reason::InvalidValue), "invalid_value");
    }
    #[test]
    fn reserved() {
        assert_eq!(code(Reason::Reserved), "reserved");
    }
    #[test]
    fn unsupported() {
        assert_eq!(code(Reason::Unsupported), "unsupported");
    }
    #[test]
    fn invalid_email() {
        assert_eq!(code(Reason::InvalidEmail), "invalid_email");
    }
    #[test]
    fn missing_header() {
        assert_eq!(code(Reason::MissingHeader), "missing_header");
    }
    #[test]
    fn missing_datacenter_suffix() {
        assert_eq!(
            code(Reason::MissingDatacenterSuffix),
            "missing_datacenter_suffix"
        );
    }
    #[test]
    fn suppressed_contact_cannot_be_enabled() {
        assert_eq!(
            code(Reason::SuppressedContactCannotBeEnabled),
            "suppressed_contact_cannot_be_enabled"
        );
    }
    #[test]
    fn audience_mismatch() {
        assert_eq!(code(Reason::AudienceMismatch), "audience_mismatch");
    }
    #[test]
    fn not_editable() {
        assert_eq!(code(Reason::NotEditable), "not_editable");
    }
    #[test]
    fn not_cancellable() {
        assert_eq!(code(Reason::NotCancellable), "not_cancellable");
        assert_eq!(code(Reason::NotPausable), "not_pausable");
        assert_eq!(code(Reason::NotResumable), "not_resumable");
    }
    #[test]
    fn invalid_template_is_ours() {
        assert_eq!(code(Reason::InvalidTemplate), "invalid_template");
        assert!(!Reason::InvalidTemplate.is_original());
    }
    #[test]
    fn render_failed_is_ours() {
        assert_eq!(code(Reason::RenderFailed), "render_failed");
        assert!(!Reason::RenderFailed.is_original());
        assert!(Reason::Required.is_original());
    }
    #[test]
    fn between() {
        assert_eq!(must_be_between(1, 100), "must_be_between_1_and_100");
        assert_eq!(String::from(Reason::TooMany), "too_many");
        assert_eq!(Reason::Forbidden.to_string(), "forbidden");
    }
}
