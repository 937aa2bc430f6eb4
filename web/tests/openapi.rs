//! The OpenAPI document and the router agree: every documented method of every documented
//! path reaches its handler (401 without a key, never the unknown-route 404 or a 405), every
//! other method answers 405 with exactly the documented methods, and the router takes its
//! allowed methods from the same table (a route missing from it panics at startup).

mod common;

use axum::http::{Method, StatusCode};
use common::setup;
use datamailer_web::openapi::{self, ROUTES};
use serde_json::Value;

const ALL: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

fn concrete(path: &str) -> String {
    path.split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) if name.ends_with("_id") => "7".to_string(),
                Some(_) => "some-key".to_string(),
                None => seg.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn documented_routes_and_methods_equal_the_routers() {
    let Some(ctx) = setup().await else { return };
    for r in ROUTES {
        let path = concrete(r.path);
        for method in ALL {
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            let (status, body) = ctx.raw(m, &path, None, "").await;
            if r.methods.contains(&method) {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}: {body}"
                );
                if r.path != "/api/transactional/send" {
                    let v: Value = serde_json::from_str(&body).unwrap();
                    let allowed: Vec<&str> = v["error"]["allowed_methods"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|m| m.as_str().unwrap())
                        .collect();
                    assert_eq!(allowed, r.methods, "{path}");
                }
            }
        }
    }
    let (status, body) = ctx
        .raw(Method::GET, "/api-docs/openapi.json", None, "")
        .await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), ROUTES.len());
    for r in ROUTES {
        let item = paths[r.path].as_object().unwrap();
        let mut documented: Vec<String> = item.keys().map(|k| k.to_uppercase()).collect();
        documented.sort();
        let mut table: Vec<String> = r.methods.iter().map(|m| m.to_string()).collect();
        table.sort();
        assert_eq!(documented, table, "{}", r.path);
    }
    assert!(
        !body.contains("dm_") || body.contains("dm_<public_id>"),
        "no key in the document"
    );
}

#[test]
#[should_panic(expected = "not in openapi::ROUTES")]
fn an_undocumented_route_cannot_be_wired() {
    openapi::methods("/api/not-documented");
}
