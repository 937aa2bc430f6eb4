//! The `audience` + `client` (+ `email`) scope most client endpoints take (facts §4.1,
//! §7.4): the audience must belong to the caller's organization (`not_found`, 400) and the
//! client must be the caller (`forbidden`, 403). Bodies and query strings are both read as a
//! JSON object, so one check serves every method.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, RawQuery};
use axum::http::request::Parts;
use datamailer_core::email;
use datamailer_core::fields::FieldErrors;
use serde_json::{Map, Value};

use crate::auth::AuthClient;
use crate::error::ApiError;
use crate::AppState;

/// A resolved scope: the audience row and the caller (and the stripped email when required).
#[derive(Debug, Clone)]
pub struct Scope {
    pub audience_id: i64,
    pub audience_slug: String,
    pub client_id: i64,
    pub client_slug: String,
    /// The email as given, stripped (empty when not required and absent).
    pub email: String,
}

impl Scope {
    /// The normalized form of [`Scope::email`].
    pub fn normalized_email(&self) -> String {
        email::normalize(&self.email)
    }
}

/// The query string as a JSON object of strings (the last value wins, as Django's `GET`).
pub struct QueryMap(pub Map<String, Value>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let RawQuery(raw) = RawQuery::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound)?;
        Ok(QueryMap(query_map(raw.as_deref().unwrap_or(""))))
    }
}

/// Parses `a=1&b=2` into `{"a":"1","b":"2"}`.
pub fn query_map(raw: &str) -> Map<String, Value> {
    form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

fn non_blank(value: Option<&Value>) -> Option<&str> {
    value
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The field checks of the original's `validate_contact_scope` that need no database,
/// in its order: `email` (required, then a valid address), `audience` (required), `client`
/// (required, then the caller's slug). Returns the stripped email and audience slug.
pub fn check_fields(
    data: &Map<String, Value>,
    auth: &AuthClient,
    require_email: bool,
    errors: &mut FieldErrors,
) -> (String, String) {
    let mut email_out = String::new();
    if require_email {
        match non_blank(data.get("email")) {
            None => {
                errors.insert("email", "required");
            }
            Some(e) if !email::is_valid(e) => {
                errors.insert("email", "invalid");
            }
            Some(e) => email_out = e.to_string(),
        }
    } else if let Some(e) = non_blank(data.get("email")) {
        email_out = e.to_string();
    }
    let audience = match non_blank(data.get("audience")) {
        Some(a) => a.to_string(),
        None => {
            errors.insert("audience", "required");
            String::new()
        }
    };
    match data.get("client") {
        Some(Value::String(c)) if c.trim() == auth.client_slug => {}
        Some(Value::String(c)) if !c.trim().is_empty() => {
            errors.insert("client", "forbidden");
        }
        _ => {
            errors.insert("client", "required");
        }
    }
    (email_out, audience)
}

/// Audience ids by (organization, slug), shared by a process's requests. An audience keeps
/// its id and the API deletes none, so a found id is kept for [`AUDIENCE_TTL`]; a slug not
/// found is looked up again every time, so a new audience is seen at once.
#[derive(Debug, Default)]
pub struct AudienceCache {
    found: Mutex<HashMap<(i64, String), (i64, Instant)>>,
}

/// How long a found audience id is trusted without a read.
pub const AUDIENCE_TTL: Duration = Duration::from_secs(60);

impl AudienceCache {
    fn get(&self, organization_id: i64, slug: &str) -> Option<i64> {
        let found = self.found.lock().expect("audience cache");
        found
            .get(&(organization_id, slug.to_string()))
            .filter(|(_, at)| at.elapsed() < AUDIENCE_TTL)
            .map(|(id, _)| *id)
    }

    fn put(&self, organization_id: i64, slug: &str, id: i64) {
        let mut found = self.found.lock().expect("audience cache");
        if found.len() > 10_000 {
            found.clear(); // a bound, not an eviction policy: ids are cheap to read again
        }
        found.insert((organization_id, slug.to_string()), (id, Instant::now()));
    }
}

/// Resolves scopes, remembering audience lookups (an import names the same audience
/// thousands of times; every request of a client names the same few).
pub struct ScopeResolver<'a> {
    db: &'a sqlx::PgPool,
    cache: &'a AudienceCache,
    auth: &'a AuthClient,
    audiences: HashMap<String, Option<i64>>,
}

impl<'a> ScopeResolver<'a> {
    pub fn new(state: &'a AppState, auth: &'a AuthClient) -> Self {
        Self {
            db: &state.db,
            cache: &state.audiences,
            auth,
            audiences: HashMap::new(),
        }
    }

    async fn audience_id(&mut self, slug: &str) -> Result<Option<i64>, ApiError> {
        if let Some(found) = self.audiences.get(slug) {
            return Ok(*found);
        }
        let org = self.auth.organization_id;
        let found = match self.cache.get(org, slug) {
            Some(id) => Some(id),
            None => {
                let found: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM audiences WHERE organization_id = $1 AND slug = $2",
                )
                .bind(org)
                .bind(slug)
                .fetch_optional(self.db)
                .await?;
                if let Some(id) = found {
                    self.cache.put(org, slug, id);
                }
                found
            }
        };
        self.audiences.insert(slug.to_string(), found);
        Ok(found)
    }

    /// The scope of `data`, or its field errors (400; 403 when `client` is forbidden).
    pub async fn resolve(
        &mut self,
        data: &Map<String, Value>,
        require_email: bool,
    ) -> Result<Result<Scope, FieldErrors>, ApiError> {
        let mut errors = FieldErrors::new();
        let (email, audience) = check_fields(data, self.auth, require_email, &mut errors);
        let mut audience_id = None;
        if !errors.contains_key("audience") {
            audience_id = self.audience_id(&audience).await?;
            if audience_id.is_none() {
                errors.insert("audience", "not_found");
            }
        }
        if !errors.is_empty() {
            return Ok(Err(errors));
        }
        Ok(Ok(Scope {
            audience_id: audience_id.expect("checked above"),
            audience_slug: audience,
            client_id: self.auth.client_id,
            client_slug: self.auth.client_slug.clone(),
            email,
        }))
    }
}

/// One request's scope, as an [`ApiError`] when invalid.
pub async fn resolve(
    state: &AppState,
    auth: &AuthClient,
    data: &Map<String, Value>,
    require_email: bool,
) -> Result<Scope, ApiError> {
    ScopeResolver::new(state, auth)
        .resolve(data, require_email)
        .await?
        .map_err(ApiError::Validation)
}
