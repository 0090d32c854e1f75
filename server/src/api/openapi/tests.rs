//! The OpenAPI document against the route table: both name the same routes, every reference
//! resolves, the error codes are the contract's.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::*;
use crate::api::ROUTES;

fn document() -> Value {
    serde_json::from_str(document_json()).expect("the document is JSON")
}

#[test]
fn every_route_has_an_operation_and_every_operation_a_route() {
    let (undocumented, unrouted) = gaps(ROUTES, &document());
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes without an operation: {undocumented:?}; operations without a route: {unrouted:?}"
    );
}

/// The check above could pass by comparing nothing: here each side lacks one entry.
#[test]
fn gaps_names_a_route_without_an_operation_and_an_operation_without_a_route() {
    let mut routes = ROUTES.to_vec();
    routes.push(("POST", "/api/v1/nowhere/{id:\\d+}"));
    let (undocumented, unrouted) = gaps(&routes, &document());
    assert_eq!(undocumented, vec!["POST /api/v1/nowhere/{id}".to_owned()]);
    assert!(unrouted.is_empty(), "{unrouted:?}");

    let mut doc = document();
    let item = doc["paths"]["/api/v1/device-groups/{id}"]
        .as_object_mut()
        .expect("the group path");
    item.remove("put").expect("a PUT operation");
    doc["paths"]["/api/v1/ghost"] = json!({"get": {"responses": {}}});
    let (undocumented, unrouted) = gaps(ROUTES, &doc);
    assert_eq!(
        undocumented,
        vec!["PUT /api/v1/device-groups/{id}".to_owned()]
    );
    assert_eq!(unrouted, vec!["GET /api/v1/ghost".to_owned()]);
}

/// Two entries for one route would be merged into one operation without a word.
#[test]
fn the_table_declares_each_route_once() {
    let mut seen = BTreeSet::new();
    for doc in table() {
        assert!(
            seen.insert((doc.method, doc.pattern)),
            "{} {} is declared twice",
            doc.method,
            doc.pattern
        );
    }
}

#[test]
fn actix_patterns_become_openapi_paths() {
    assert_eq!(openapi_path("/assets/{path:.*}"), "/assets/{path}");
    assert_eq!(openapi_path("/a/{id}/b/{n:\\d+}/c"), "/a/{id}/b/{n}/c");
    assert_eq!(openapi_path("/api/v1/openapi.json"), "/api/v1/openapi.json");
}

/// Every `$ref` the document holds, with where it is.
fn refs(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if key == "$ref" {
                    out.push((at.to_owned(), inner.as_str().unwrap_or_default().to_owned()));
                } else {
                    refs(inner, &format!("{at}/{key}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                refs(inner, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_document_is_openapi_3_and_every_reference_resolves() {
    let doc = document();
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let mut found = Vec::new();
    refs(&doc, "", &mut found);
    assert!(found.len() > 100, "only {} references", found.len());
    for (at, target) in found {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: {target} is not local"));
        assert!(
            doc.pointer(pointer).is_some(),
            "{at}: {target} points at nothing"
        );
    }
}

#[test]
fn every_operation_has_a_summary_a_security_and_an_answer() {
    let doc = document();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let name = format!("{method} {path}");
            assert!(operation["summary"].is_string(), "{name}: no summary");
            assert!(operation["security"].is_array(), "{name}: no security");
            assert!(operation["operationId"].is_string(), "{name}: no id");
            let responses = operation["responses"].as_object().expect("responses");
            assert!(
                responses
                    .keys()
                    .any(|status| status.starts_with('2') || status == "101"),
                "{name}: no success answer in {:?}",
                responses.keys().collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn the_error_body_names_every_error_code_in_snake_case() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let codes = schemas["ErrorCode"]["enum"].as_array().expect("an enum");
    for code in codes {
        let parsed: protocol::rest::ErrorCode =
            serde_json::from_value(code.clone()).expect("a code the server writes");
        assert_eq!(code.as_str(), Some(parsed.as_str()));
    }
    for code in [
        "invalid_body",
        "method_not_allowed",
        "server_busy",
        "range_too_large",
    ] {
        assert!(
            codes.contains(&json!(code)),
            "{code} missing from {codes:?}"
        );
    }
    let body = &schemas["ErrorBody"]["properties"]["code"];
    assert_eq!(body["$ref"], "#/components/schemas/ErrorCode", "{body}");
    let answer = &doc["components"]["responses"]["Conflict"]["content"]["application/json"];
    assert_eq!(
        answer["schema"]["$ref"],
        "#/components/schemas/ErrorEnvelope"
    );
}

#[test]
fn operations_carry_the_role_and_scheme_their_handlers_check() {
    let doc = document();
    let op = |method: &str, path: &str| doc["paths"][path][method].clone();
    let users = op("get", "/api/v1/users");
    assert_eq!(users["x-required-role"], "MANAGER");
    assert_eq!(users["x-permission"], "users.list");
    assert_eq!(users["security"], json!([{USER_JWT: []}]));
    assert_eq!(op("post", "/api/v1/users")["x-required-role"], "ADMIN");
    assert_eq!(op("get", "/api/v1/auth/me")["x-required-role"], "VIEWER");
    assert_eq!(op("post", "/api/v1/auth/login")["security"], json!([]));
    assert_eq!(op("get", "/api/v1/openapi.json")["security"], json!([]));
    assert_eq!(
        op("post", "/api/v1/devices/{id}/token")["security"],
        json!([{ENROLLMENT_KEY: []}])
    );
    assert_eq!(
        op("post", "/api/v1/sync")["security"],
        json!([{DEVICE_JWT: []}])
    );
    assert_eq!(
        op("get", "/metrics")["security"],
        json!([{METRICS_TOKEN: []}])
    );
    assert_eq!(
        op("get", "/firmware/{project}/latest")["security"],
        json!([{OTA_JWT: []}, {OTA_QUERY_TOKEN: []}])
    );
    let upload = op("post", "/api/v1/firmware/releases");
    let content = upload["requestBody"]["content"]
        .as_object()
        .expect("a body");
    assert_eq!(
        content.keys().collect::<Vec<_>>(),
        vec!["application/octet-stream"]
    );
    for (method, pattern) in crate::input::BINARY_BODY_ROUTES {
        let operation = op(&method.to_ascii_lowercase(), pattern);
        assert!(
            operation["requestBody"]["content"]["application/json"].is_null(),
            "{method} {pattern} takes a binary body"
        );
    }
    let socket = op("get", "/ws/device");
    assert!(socket["responses"]["101"].is_object(), "{socket}");
}
