//! Recipient lists as the API shows them (facts §4.5): rows, payloads and input checks.

use chrono::{DateTime, Utc};
use datamailer_core::email;
use datamailer_core::time::iso_opt;
use serde_json::{json, Map, Value};
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::error::ApiError;

pub const ROOT_KEY: &str = "<all>";
pub const CASCADE_PREFIX: &str = "cascade-contact:";
pub const LIST_TYPES: &[&str] = &[
    "registrants",
    "homework_submitters",
    "project_submitters",
    "custom",
];

#[derive(Debug, Clone)]
pub struct ListRow {
    pub id: i64,
    pub key: String,
    pub list_type: String,
    pub name: String,
    pub metadata: Value,
    pub member_count: i32,
    pub active_member_count: i32,
    pub last_reconciled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub const LIST_COLUMNS: &str = "id, key, type, name, metadata, member_count, active_member_count, \
                                last_reconciled_at, created_at, updated_at";

impl ListRow {
    pub fn from_row(r: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: r.try_get("id")?,
            key: r.try_get("key")?,
            list_type: r.try_get("type")?,
            name: r.try_get("name")?,
            metadata: r.try_get("metadata")?,
            member_count: r.try_get("member_count")?,
            active_member_count: r.try_get("active_member_count")?,
            last_reconciled_at: r.try_get("last_reconciled_at")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }

    pub fn payload(&self, audience: &str, client: &str) -> Value {
        json!({
            "key": self.key,
            "type": self.list_type,
            "name": self.name,
            "audience": audience,
            "client": client,
            "metadata": self.metadata,
            "member_count": self.member_count,
            "active_member_count": self.active_member_count,
            "last_reconciled_at": iso_opt(self.last_reconciled_at),
            "created_at": iso_opt(Some(self.created_at)),
            "updated_at": iso_opt(Some(self.updated_at)),
        })
    }
}

/// A list that does not exist yet, as the original previews it.
pub fn preview_payload(key: &str, d: &ListDefaults, audience: &str, client: &str) -> Value {
    json!({
        "key": key, "type": d.list_type, "name": d.name, "audience": audience, "client": client,
        "metadata": d.metadata, "member_count": 0, "active_member_count": 0,
        "last_reconciled_at": null, "created_at": null, "updated_at": null,
    })
}

#[derive(Debug, Clone)]
pub struct MemberRow {
    pub id: i64,
    pub contact_id: i64,
    pub email: String,
    pub source_object_key: String,
    pub metadata: Value,
    pub active: bool,
    pub removed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub const MEMBER_COLUMNS: &str = "id, contact_id, email, source_object_key, metadata, active, \
                                  removed_at, created_at, updated_at";

impl MemberRow {
    pub fn from_row(r: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: r.try_get("id")?,
            contact_id: r.try_get("contact_id")?,
            email: r.try_get("email")?,
            source_object_key: r.try_get("source_object_key")?,
            metadata: r.try_get("metadata")?,
            active: r.try_get("active")?,
            removed_at: r.try_get("removed_at")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }

    pub fn payload(&self) -> Value {
        json!({
            "source_object_key": self.source_object_key,
            "email": self.email,
            "contact_id": self.contact_id,
            "status": if self.active { "active" } else { "removed" },
            "active": self.active,
            "removed_at": iso_opt(self.removed_at),
            "metadata": self.metadata,
            "created_at": iso_opt(Some(self.created_at)),
            "updated_at": iso_opt(Some(self.updated_at)),
        })
    }
}

pub fn removed_preview(source_object_key: &str) -> Value {
    json!({
        "source_object_key": source_object_key, "email": "", "contact_id": null,
        "status": "removed", "active": false, "removed_at": null, "metadata": {},
        "created_at": null, "updated_at": null,
    })
}

/// The original's `validate_path_key`: required, stripped, no `/`, at most 255 characters.
pub fn path_key(value: Option<&str>, field: &str) -> Result<String, ApiError> {
    match value.map(str::trim) {
        None | Some("") => Err(ApiError::field(field, "required")),
        Some(k) if k.contains('/') || k.chars().count() > 255 => {
            Err(ApiError::field(field, "invalid"))
        }
        Some(k) => Ok(k.to_string()),
    }
}

/// Ancestors of a key, nearest first, ending with `<all>`.
pub fn ancestors(key: &str) -> Vec<String> {
    if key == ROOT_KEY {
        return Vec::new();
    }
    let segments: Vec<&str> = key.split(':').collect();
    let mut out: Vec<String> = (1..segments.len())
        .rev()
        .map(|n| segments[..n].join(":"))
        .collect();
    out.push(ROOT_KEY.to_string());
    out
}

fn metadata(value: Option<&Value>, field: &str) -> Result<Value, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(json!({})),
        Some(Value::String(s)) if s.is_empty() => Ok(json!({})),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(ApiError::field(field, "must_be_object")),
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ListDefaults {
    #[serde(rename = "type")]
    pub list_type: String,
    pub name: String,
    pub metadata: Value,
}

/// `list: {type, name, metadata}` (or the same fields at top level).
pub fn list_defaults(data: &Map<String, Value>, key: &str) -> Result<ListDefaults, ApiError> {
    let list = match data.get("list") {
        None => data,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::field("list", "must_be_object")),
    };
    let list_type = match list.get("type") {
        None | Some(Value::Null) => "custom".to_string(),
        Some(Value::String(s)) if s.is_empty() => "custom".to_string(),
        Some(Value::String(s)) if LIST_TYPES.contains(&s.as_str()) => s.clone(),
        Some(_) => return Err(ApiError::field("type", "invalid")),
    };
    let name = match list.get("name") {
        None => key.to_string(),
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(_) => return Err(ApiError::field("name", "required")),
    };
    Ok(ListDefaults {
        list_type,
        name,
        metadata: metadata(list.get("metadata"), "metadata")?,
    })
}

/// The defaults of an auto-created ancestor.
pub fn ancestor_defaults(key: &str) -> ListDefaults {
    ListDefaults {
        list_type: "custom".into(),
        name: key.to_string(),
        metadata: json!({"tree_node": true}),
    }
}

#[derive(Debug, Clone)]
pub struct MemberInput {
    /// Stripped, as given.
    pub email: String,
    pub active: bool,
    pub metadata: Value,
}

/// `member: {email, status, metadata}` (or the same fields at top level); `prefix` names
/// fields as the original does (`member.` for the API, `line.N.` etc. for imports).
pub fn member_input(data: &Map<String, Value>, prefix: &str) -> Result<MemberInput, ApiError> {
    let member = match data.get("member") {
        None => data,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::field("member", "must_be_object")),
    };
    let email = match member.get("email").and_then(Value::as_str).map(str::trim) {
        None | Some("") => return Err(ApiError::field(format!("{prefix}email"), "required")),
        Some(e) if !email::is_valid(e) => {
            return Err(ApiError::field(format!("{prefix}email"), "invalid"))
        }
        Some(e) => e.to_string(),
    };
    let active = match member.get("status") {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) if s.is_empty() || s == "active" => true,
        Some(Value::String(s)) if s == "removed" => false,
        Some(_) => return Err(ApiError::field(format!("{prefix}status"), "invalid")),
    };
    Ok(MemberInput {
        email,
        active,
        metadata: metadata(member.get("metadata"), &format!("{prefix}metadata"))?,
    })
}

/// The cascade reasons stored in a member's metadata.
pub fn reasons(metadata: &Value) -> Vec<Value> {
    metadata
        .get("membership_reasons")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter(|r| {
                    r.get("list_key").is_some_and(Value::is_string)
                        && r.get("source_object_key").is_some_and(Value::is_string)
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_are_each_shorter_prefix_then_the_root() {
        assert_eq!(
            ancestors("ml-2026:@e:@homework:homework-1"),
            vec!["ml-2026:@e:@homework", "ml-2026:@e", "ml-2026", "<all>"]
        );
        assert_eq!(ancestors("solo"), vec!["<all>"]);
        assert!(ancestors("<all>").is_empty());
    }
}
