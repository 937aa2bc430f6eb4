//! `GET /api-docs/openapi.json`: the OpenAPI 3.1 document of the client API.
//!
//! [`ROUTES`] is the one table of client routes: the router takes each route's allowed
//! methods from it ([`methods`], which panics on a path the table lacks, so a route cannot be
//! added without its entry), and the document is generated from it. The test in
//! `web/tests/openapi.rs` checks the other direction: every documented method of every path
//! reaches a handler.

use serde_json::{json, Map, Value};

/// One client route: its path (axum syntax), methods and a summary per method.
pub struct RouteDoc {
    pub path: &'static str,
    pub tag: &'static str,
    pub methods: &'static [&'static str],
    pub summaries: &'static [&'static str],
}

macro_rules! route {
    ($path:literal, $tag:literal, [$($method:literal => $summary:literal),+ $(,)?]) => {
        RouteDoc { path: $path, tag: $tag, methods: &[$($method),+], summaries: &[$($summary),+] }
    };
}

pub const ROUTES: &[RouteDoc] = &[
    route!("/api/transactional/send", "transactional", ["POST" => "Send a transactional email from a template"]),
    route!("/api/transactional/templates/{template_key}", "transactional", [
        "GET" => "Read a template", "PUT" => "Create or update a template"]),
    route!("/api/transactional/messages/{message_id}", "transactional", ["GET" => "A message's status and events"]),
    route!("/api/client/senders", "client", ["GET" => "The client's senders", "PUT" => "Replace the client's senders"]),
    route!("/api/client/webhook", "client", ["GET" => "The client's webhook URL (never its token)", "PUT" => "Set or clear the client's webhook"]),
    route!("/api/contacts", "contacts", ["GET" => "List contacts in scope", "POST" => "Upsert a contact"]),
    route!("/api/contacts.csv", "contacts", ["GET" => "Export contacts as CSV (streamed)"]),
    route!("/api/contacts/status", "contacts", ["GET" => "A contact's status and eligibility"]),
    route!("/api/contacts/imports", "contacts", ["POST" => "Import contacts from JSON"]),
    route!("/api/contacts/imports/csv", "contacts", ["POST" => "Import contacts from CSV"]),
    route!("/api/contacts/erase", "contacts", ["POST" => "Erase a contact, keeping a suppression tombstone"]),
    route!("/api/contacts/preferences", "contacts", ["GET" => "Category preferences", "PUT" => "Update category preferences"]),
    route!("/api/contacts/{contact_id}/tags", "contacts", ["PUT" => "Replace a contact's tags"]),
    route!("/api/contacts/{contact_id}/tags/{tag_slug}", "contacts", ["POST" => "Add a tag", "DELETE" => "Remove a tag"]),
    route!("/api/contacts/{contact_id}/verification", "contacts", ["PATCH" => "Set or clear verification"]),
    route!("/api/contacts/{contact_id}/validation", "contacts", ["PATCH" => "Set the validation status"]),
    route!("/api/contacts/{contact_id}/suppression", "contacts", ["PATCH" => "Set or clear suppressions"]),
    route!("/api/contacts/{contact_id}/history", "contacts", ["GET" => "A contact's history in scope"]),
    route!("/api/subscriptions/subscribe", "subscriptions", ["POST" => "Subscribe a contact"]),
    route!("/api/subscriptions/unsubscribe", "subscriptions", ["POST" => "Unsubscribe a contact (client, audience or global)"]),
    route!("/api/recipient-lists/{list_key}", "recipient-lists", ["GET" => "Read a list", "PUT" => "Create or update a list"]),
    route!("/api/recipient-lists/{list_key}/members", "recipient-lists", ["GET" => "List members"]),
    route!("/api/recipient-lists/{list_key}/members/bulk-upsert", "recipient-lists", ["POST" => "Upsert many members atomically"]),
    route!("/api/recipient-lists/{list_key}/members/reconcile", "recipient-lists", ["POST" => "Reconcile members (optionally a dry run)"]),
    route!("/api/recipient-lists/{list_key}/members/{source_object_key}", "recipient-lists", [
        "DELETE" => "Remove a member", "PUT" => "Upsert a member"]),
    route!("/api/recipient-lists/{list_key}/transactional-send", "recipient-lists", [
        "POST" => "Send a transactional template to every active member (optionally syncing members first)"]),
    route!("/api/transient-recipient-lists/transactional-send", "recipient-lists", [
        "POST" => "Send a transactional template to members given in the body (nothing stored about the list)"]),
    route!("/api/recipient-lists/{list_key}/imports", "recipient-lists", ["POST" => "Start an import job from a JSONL URL"]),
    route!("/api/recipient-lists/{list_key}/imports/{job_id}", "recipient-lists", ["GET" => "An import job's state"]),
    route!("/api/campaigns", "campaigns", ["GET" => "List campaigns (status filter, keyset pages)"]),
    route!("/api/campaigns/{key}", "campaigns", ["GET" => "Read a campaign", "PUT" => "Create or update a draft campaign"]),
    route!("/api/campaigns/{key}/queue", "campaigns", ["POST" => "Queue a draft (202 at once; sent now or at scheduled_at)"]),
    route!("/api/campaigns/{key}/cancel", "campaigns", ["POST" => "Cancel a campaign that has not finished"]),
    route!("/api/campaigns/{key}/pause", "campaigns", ["POST" => "Pause a running campaign"]),
    route!("/api/campaigns/{key}/resume", "campaigns", ["POST" => "Resume a paused campaign"]),
    route!("/api/campaigns/{key}/estimate", "campaigns", ["POST" => "Who the snapshot would reach now, by skip reason (writes nothing)"]),
    route!("/api/campaigns/{key}/preview", "campaigns", ["POST" => "The mail as recipients get it, with placeholder tokens"]),
    route!("/api/campaigns/{key}/test-send", "campaigns", ["POST" => "Send the campaign to 1-25 test addresses (inert links)"]),
];

/// The allowed methods of a client route, for its 405 answer.
pub fn methods(path: &str) -> &'static [&'static str] {
    ROUTES
        .iter()
        .find(|r| r.path == path)
        .map(|r| r.methods)
        .unwrap_or_else(|| panic!("route {path} is not in openapi::ROUTES"))
}

fn parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            let integer = name.ends_with("_id");
            json!({"name": name, "in": "path", "required": true,
                   "schema": {"type": if integer { "integer" } else { "string" }}})
        })
        .collect()
}

/// The document, with `server_url` as its server.
pub fn document(server_url: &str) -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let mut item = Map::new();
        for (method, summary) in r.methods.iter().zip(r.summaries) {
            let mut op = json!({
                "tags": [r.tag],
                "summary": summary,
                "operationId": format!("{}_{}", method.to_lowercase(),
                    r.path.trim_start_matches("/api/").replace(['/', '{', '}', '.', '-'], "_")),
                "responses": {
                    "200": {"description": "Success", "content": {"application/json": {"schema": {"type": "object"}}}},
                    "400": {"$ref": "#/components/responses/ValidationError"},
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "403": {"$ref": "#/components/responses/ValidationError"},
                    "404": {"$ref": "#/components/responses/ValidationError"},
                },
            });
            let params = parameters(r.path);
            if !params.is_empty() {
                op["parameters"] = Value::Array(params);
            }
            if matches!(*method, "POST" | "PUT" | "PATCH") {
                op["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": {"type": "object"}}}});
            }
            if r.path == "/api/contacts.csv" {
                op["responses"]["200"] = json!({"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}});
            }
            if r.path.ends_with("/imports")
                && *method == "POST"
                && r.path.contains("recipient-lists")
            {
                op["responses"]["202"] = json!({"description": "Import job created"});
            }
            if r.path == "/api/transactional/send" {
                op["responses"]["202"] = json!({"description": "Accepted"});
                op["responses"]["409"] = json!({"description": "Suppressed recipient"});
            }
            item.insert(method.to_lowercase(), op);
        }
        paths.insert(r.path.to_string(), Value::Object(item));
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "datamailer client API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Every call takes `Authorization: Bearer dm_<public_id>_<secret>`. See docs/api.md."},
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "ValidationError": {"description": "validation_error with a reason per field",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ValidationError"}}}},
                "Unauthorized": {"description": "missing_authorization, invalid_authorization, invalid_api_key or inactive_client",
                    "content": {"application/json": {"schema": {"type": "object"}}}},
            },
            "schemas": {
                "ValidationError": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "object", "properties": {
                        "code": {"type": "string", "const": "validation_error"},
                        "fields": {"type": "object", "additionalProperties": {"type": "string"}}}}}},
            },
        },
    })
}
