//! The recipient-lists API (facts §4.5): lists keyed by `:`-paths in the caller's scope,
//! members with cascade memberships in every ancestor, bulk upsert, reconcile, and import
//! jobs that a maintenance task works ([`imports`]).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};

use crate::auth::AuthClient;
use crate::contacts::as_map;
use crate::error::{ApiError, ApiResult};
use crate::json::JsonObject;
use crate::scope::{self, QueryMap, Scope};
use crate::AppState;

pub mod imports;
pub mod model;
pub mod send;
pub mod tree;

use model::{path_key, ListRow};
use tree::Owner;

pub(crate) fn owner(scope: &Scope) -> Owner {
    Owner {
        client_id: scope.client_id,
        audience_id: scope.audience_id,
    }
}

fn list_payload(list: &ListRow, scope: &Scope) -> Value {
    list.payload(&scope.audience_slug, &scope.client_slug)
}

pub(crate) async fn list_scope(
    state: &AppState,
    auth: &AuthClient,
    data: &Map<String, Value>,
) -> Result<Scope, ApiError> {
    scope::resolve(state, auth, data, false).await
}

/// `PUT /api/recipient-lists/{key}`.
pub async fn put_list(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(key): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let key = path_key(Some(&key), "list_key")?;
    let data = as_map(&body);
    let scope = list_scope(&state, &auth, data).await?;
    let defaults = model::list_defaults(data, &key)?;
    let mut tx = state.db.begin().await?;
    let (list, created) = tree::put_list(&mut tx, owner(&scope), &key, &defaults, true).await?;
    let list = tree::refresh_counts(&mut tx, list.id).await?;
    tx.commit().await?;
    Ok(Json(
        json!({"recipient_list": list_payload(&list, &scope), "created": created}),
    ))
}

async fn existing_list(
    state: &AppState,
    auth: &AuthClient,
    key: &str,
    data: &Map<String, Value>,
) -> Result<(Scope, ListRow), ApiError> {
    let key = path_key(Some(key), "list_key")?;
    let scope = list_scope(state, auth, data).await?;
    let list = tree::find_list(&state.db, owner(&scope), &key)
        .await?
        .ok_or_else(|| ApiError::not_found("list_key"))?;
    Ok((scope, list))
}

/// `GET /api/recipient-lists/{key}`.
pub async fn get_list(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(key): Path<String>,
    QueryMap(query): QueryMap,
) -> ApiResult<Json<Value>> {
    let (scope, list) = existing_list(&state, &auth, &key, &query).await?;
    Ok(Json(json!({"recipient_list": list_payload(&list, &scope)})))
}

/// `GET /api/recipient-lists/{key}/members`: ordered by source key, `limit` ≤ 10,000.
pub async fn members(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(key): Path<String>,
    QueryMap(query): QueryMap,
) -> ApiResult<Json<Value>> {
    let (scope, list) = existing_list(&state, &auth, &key, &query).await?;
    let include_removed = match query
        .get("include_removed")
        .and_then(Value::as_str)
        .unwrap_or("false")
    {
        "" | "false" | "0" | "no" => false,
        "true" | "1" | "yes" => true,
        _ => return Err(ApiError::field("include_removed", "must_be_boolean")),
    };
    let limit = crate::contacts::by_id::limit_param(query.get("limit"), 1000, 10_000)?;
    let sql = format!(
        "SELECT {} FROM recipient_list_members WHERE recipient_list_id = $1 AND ($2 OR active)
         ORDER BY source_object_key, id LIMIT $3",
        model::MEMBER_COLUMNS
    );
    let rows = sqlx::query(&sql)
        .bind(list.id)
        .bind(include_removed)
        .bind(limit + 1)
        .fetch_all(&state.db)
        .await?;
    let mut members = rows
        .iter()
        .map(model::MemberRow::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let has_more = members.len() as i64 > limit;
    members.truncate(limit as usize);
    Ok(Json(json!({
        "recipient_list": list_payload(&list, &scope),
        "members": members.iter().map(model::MemberRow::payload).collect::<Vec<_>>(),
        "count": members.len(),
        "has_more": has_more,
    })))
}

/// `PUT /api/recipient-lists/{key}/members/{source_object_key}`.
pub async fn put_member(
    State(state): State<AppState>,
    auth: AuthClient,
    Path((key, source)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let key = path_key(Some(&key), "list_key")?;
    let source = path_key(Some(&source), "source_object_key")?;
    let data = as_map(&body);
    let scope = list_scope(&state, &auth, data).await?;
    let defaults = model::list_defaults(data, &key)?;
    let input = model::member_input(data, "member.")?;
    let mut tx = state.db.begin().await?;
    let (list, _) = tree::put_list(&mut tx, owner(&scope), &key, &defaults, true).await?;
    let (member, created) = tree::upsert_member(&mut tx, &list, &source, &input).await?;
    tree::cascade(&mut tx, owner(&scope), &list, &member).await?;
    let list = tree::refresh_counts(&mut tx, list.id).await?;
    tx.commit().await?;
    Ok(Json(json!({
        "recipient_list": list_payload(&list, &scope),
        "member": member.payload(),
        "created": created,
    })))
}

/// `DELETE /api/recipient-lists/{key}/members/{source_object_key}` (idempotent).
pub async fn delete_member(
    State(state): State<AppState>,
    auth: AuthClient,
    Path((key, source)): Path<(String, String)>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let key = path_key(Some(&key), "list_key")?;
    let source = path_key(Some(&source), "source_object_key")?;
    let data = as_map(&body);
    let scope = list_scope(&state, &auth, data).await?;
    let defaults = model::list_defaults(data, &key)?;
    let mut tx = state.db.begin().await?;
    let Some(list) = tree::find_list(&mut *tx, owner(&scope), &key).await? else {
        return Ok(Json(json!({
            "recipient_list": model::preview_payload(&key, &defaults, &scope.audience_slug, &scope.client_slug),
            "member": model::removed_preview(&source),
            "removed": false,
        })));
    };
    let Some(member) = tree::member_by_source(&mut tx, list.id, &source).await? else {
        let list = tree::refresh_counts(&mut tx, list.id).await?;
        tx.commit().await?;
        return Ok(Json(json!({
            "recipient_list": list_payload(&list, &scope),
            "member": model::removed_preview(&source),
            "removed": false,
        })));
    };
    let was_active = member.active;
    let member = if was_active {
        tree::remove_member(&mut tx, owner(&scope), &list, &member).await?
    } else {
        member
    };
    let list = tree::refresh_counts(&mut tx, list.id).await?;
    tx.commit().await?;
    Ok(Json(json!({
        "recipient_list": list_payload(&list, &scope),
        "member": member.payload(),
        "removed": was_active,
    })))
}

/// `members: [{source_object_key, email, status?, metadata?}]`, all checked before any write.
pub(crate) fn parse_members(
    data: &Map<String, Value>,
) -> Result<Vec<(String, model::MemberInput)>, ApiError> {
    let Some(Value::Array(items)) = data.get("members") else {
        return Err(ApiError::field("members", "must_be_list"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let Value::Object(item) = item else {
                return Err(ApiError::field(format!("members.{i}"), "must_be_object"));
            };
            let source = path_key(
                item.get("source_object_key").and_then(Value::as_str),
                &format!("members.{i}.source_object_key"),
            )?;
            let mut plain = item.clone();
            plain.remove("member");
            Ok((source, model::member_input(&plain, "member.")?))
        })
        .collect()
}

/// `POST /api/recipient-lists/{key}/members/bulk-upsert`: atomic, any bad item refuses all.
pub async fn bulk_upsert(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(key): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let key = path_key(Some(&key), "list_key")?;
    let data = as_map(&body);
    if !matches!(data.get("members"), Some(Value::Array(_))) {
        return Err(ApiError::field("members", "must_be_list"));
    }
    let scope = list_scope(&state, &auth, data).await?;
    let defaults = model::list_defaults(data, &key)?;
    let members = parse_members(data)?;
    let mut tx = state.db.begin().await?;
    let synced = sync_members(&mut tx, &scope, &key, &defaults, &members, None).await?;
    tx.commit().await?;
    Ok(Json(synced.bulk_upsert_payload(&scope)))
}

/// What a member sync did.
pub(crate) struct Synced {
    /// The list after the sync, counts refreshed.
    pub list: ListRow,
    pub created: usize,
    pub updated: usize,
    pub removed: usize,
}

impl Synced {
    /// The bulk-upsert answer.
    pub fn bulk_upsert_payload(&self, scope: &Scope) -> Value {
        json!({
            "recipient_list": list_payload(&self.list, scope),
            "created_count": self.created,
            "updated_count": self.updated,
        })
    }

    /// The reconcile answer (not a dry run).
    pub fn reconcile_payload(&self, scope: &Scope) -> Value {
        json!({
            "recipient_list": list_payload(&self.list, scope),
            "dry_run": false,
            "upsert_count": self.created + self.updated,
            "removed_count": self.removed,
        })
    }
}

/// Upserts `members` into the list `key` (created with `defaults` if missing) with their
/// cascades, inside the caller's transaction. `reconcile` = Some(remove_absent) also
/// removes (when true) the active members not given and stamps `last_reconciled_at`.
pub(crate) async fn sync_members(
    tx: &mut sqlx::PgConnection,
    scope: &Scope,
    key: &str,
    defaults: &model::ListDefaults,
    members: &[(String, model::MemberInput)],
    reconcile: Option<bool>,
) -> Result<Synced, ApiError> {
    let (list, _) = tree::put_list(tx, owner(scope), key, defaults, true).await?;
    let (mut created, mut updated) = (0, 0);
    for (source, input) in members {
        let (member, was_created) = tree::upsert_member(tx, &list, source, input).await?;
        tree::cascade(tx, owner(scope), &list, &member).await?;
        if was_created {
            created += 1;
        } else {
            updated += 1;
        }
    }
    let mut removed = 0;
    if let Some(remove_absent) = reconcile {
        if remove_absent {
            let keep: Vec<String> = members.iter().map(|(k, _)| k.clone()).collect();
            removed = tree::remove_absent(tx, owner(scope), &list, &keep).await?;
        }
        sqlx::query("UPDATE recipient_lists SET last_reconciled_at = now() WHERE id = $1")
            .bind(list.id)
            .execute(&mut *tx)
            .await?;
    }
    let list = tree::refresh_counts(tx, list.id).await?;
    Ok(Synced {
        list,
        created,
        updated,
        removed,
    })
}

/// `POST /api/recipient-lists/{key}/members/reconcile`: upsert the given members and (by
/// default) remove the active ones not given; a dry run only counts.
pub async fn reconcile(
    State(state): State<AppState>,
    auth: AuthClient,
    Path(key): Path<String>,
    JsonObject(body): JsonObject,
) -> ApiResult<Json<Value>> {
    let key = path_key(Some(&key), "list_key")?;
    let data = as_map(&body);
    let scope = list_scope(&state, &auth, data).await?;
    let defaults = model::list_defaults(data, &key)?;
    let flag = |name: &str, default: bool| match data.get(name) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::field(name, "must_be_boolean")),
    };
    let dry_run = flag("dry_run", false)?;
    let remove_absent = flag("remove_absent", true)?;
    let members = parse_members(data)?;
    let keep: Vec<String> = members.iter().map(|(k, _)| k.clone()).collect();
    let existing = tree::find_list(&state.db, owner(&scope), &key).await?;
    if dry_run {
        let absent: i64 = match (&existing, remove_absent) {
            (Some(list), true) => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM recipient_list_members
                 WHERE recipient_list_id = $1 AND active AND NOT (source_object_key = ANY($2))",
                )
                .bind(list.id)
                .bind(&keep)
                .fetch_one(&state.db)
                .await?
            }
            _ => 0,
        };
        let list = match &existing {
            Some(l) => list_payload(l, &scope),
            None => {
                model::preview_payload(&key, &defaults, &scope.audience_slug, &scope.client_slug)
            }
        };
        return Ok(Json(json!({"recipient_list": list, "dry_run": true,
                              "upsert_count": members.len(), "removed_count": absent})));
    }
    let mut tx = state.db.begin().await?;
    let synced = sync_members(
        &mut tx,
        &scope,
        &key,
        &defaults,
        &members,
        Some(remove_absent),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(synced.reconcile_payload(&scope)))
}

/// 202 for a new import job, 200 for a replay of its idempotency key.
pub(crate) fn created_status(created: bool) -> StatusCode {
    if created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    }
}
