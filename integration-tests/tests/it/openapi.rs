//! `GET /api/v1/openapi.json` from the real server (SQLite): served without a token as
//! JSON, OpenAPI 3, its paths exactly `server::ROUTES`, each operation's security the access
//! the route-table test (`security.rs`) holds the server to, and bodies by schema reference.

use std::collections::BTreeSet;

use integration_tests::*;
use serde_json::{json, Value};

use crate::security::{cases, Access};

/// An actix pattern as an OpenAPI path: `{path:.*}` → `{path}`. Written again here, not
/// taken from the server, so the server's own normalization is checked too.
fn openapi_path(pattern: &str) -> String {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("a closed segment") + start;
        let name = rest[start + 1..end].split(':').next().unwrap_or_default();
        out.push_str(&format!("{{{name}}}"));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn fetch(server: &ServerProcess) -> Value {
    let reply = Api::new(server).call("GET", "/api/v1/openapi.json", None, &[]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let kind = reply.headers["content-type"].to_str().unwrap_or_default();
    assert_eq!(kind, "application/json");
    assert!(reply.body.is_object(), "not a JSON object: {}", reply.body);
    reply.body
}

/// Every operation of the document as (METHOD, path).
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            found.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    found
}

/// The scheme names of an operation's security, one set per alternative.
fn schemes(operation: &Value) -> Vec<Vec<String>> {
    operation["security"]
        .as_array()
        .expect("security on every operation")
        .iter()
        .map(|alt| {
            alt.as_object()
                .expect("a requirement")
                .keys()
                .cloned()
                .collect()
        })
        .collect()
}

#[test]
fn the_document_describes_every_route_of_the_server() {
    let server = ServerProcess::start(Backend::Sqlite);
    let doc = fetch(&server);
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3."),
        "{}",
        doc["openapi"]
    );

    let routes: BTreeSet<(String, String)> = server::ROUTES
        .iter()
        .map(|(method, pattern)| ((*method).to_owned(), openapi_path(pattern)))
        .collect();
    let documented = operations(&doc);
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routes).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes without an operation: {undocumented:?}; operations without a route: {unrouted:?}"
    );

    // Each operation's security is the access the route table holds the server to.
    let roles = ["VIEWER", "OPERATOR", "MANAGER", "ADMIN"];
    for ((method, pattern), case) in cases() {
        let path = openapi_path(pattern);
        let operation = &doc["paths"][&path][method.to_ascii_lowercase()];
        let name = format!("{method} {path}");
        let want: Vec<Vec<&str>> = match case.access {
            Access::Public => vec![],
            Access::Enrollment => vec![vec!["enrollmentKey"]],
            Access::DeviceSocket => vec![vec!["deviceJwt"], vec!["socketQueryToken"]],
            Access::DashboardSocket => vec![vec!["userJwt"], vec!["socketQueryToken"]],
            Access::DeviceToken => vec![vec!["deviceJwt"]],
            Access::MinRole(_) => vec![vec!["userJwt"]],
            Access::UserOrDevice => vec![vec!["userJwt"], vec!["deviceJwt"]],
            Access::AdminSecret => vec![vec!["otaAdminSecret"]],
            Access::MetricsToken => vec![vec!["metricsToken"]],
            Access::OtaBoard => vec![vec!["otaJwt"], vec!["otaQueryToken"]],
        };
        assert_eq!(schemes(operation), want, "{name}");
        let role = operation["x-required-role"].as_str();
        match case.access {
            Access::MinRole(rank) => assert_eq!(role, Some(roles[rank as usize]), "{name}"),
            _ => assert_eq!(role, None, "{name}"),
        }
        let responses = operation["responses"].as_object().expect("responses");
        let ok = match case.access {
            // The table sends sockets a plain GET, which fails the handshake; an upgrade is 101.
            Access::DeviceSocket | Access::DashboardSocket => "101".to_owned(),
            _ => case.ok.to_string(),
        };
        assert!(
            responses.contains_key(&ok),
            "{name} answers {ok}, which the document does not list"
        );
    }

    // Bodies: JSON by reference to the protocol's schemas, the firmware upload as bytes.
    let schema_of = |method: &str, path: &str, status: &str| {
        doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
            .clone()
    };
    let create_user = &doc["paths"]["/api/v1/users"]["post"];
    assert_eq!(
        create_user["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CreateUserRequest"
    );
    assert_eq!(
        schema_of("post", "/api/v1/users", "201")["properties"]["data"]["$ref"],
        "#/components/schemas/UserInfo"
    );
    assert_eq!(
        schema_of("get", "/api/v1/devices/{id}/metrics", "200")["properties"]["data"]["$ref"],
        "#/components/schemas/DeviceMetrics"
    );
    let metrics = &doc["paths"]["/api/v1/devices/{id}/metrics"]["get"]["responses"]["200"];
    assert!(metrics["content"]["text/csv"].is_object(), "{metrics}");
    let upload = &doc["paths"]["/api/v1/firmware/releases"]["post"]["requestBody"]["content"];
    assert_eq!(
        upload,
        &json!({"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}})
    );
    assert_eq!(
        doc["paths"]["/api/v1/users"]["post"]["responses"]["409"]["$ref"],
        "#/components/responses/Conflict"
    );

    // A schema says what the server really answers: a user as the API lists it has every
    // field `UserInfo` requires.
    let admin = Api::admin(&server);
    let users = admin.get("/api/v1/users");
    let user = &users.data()["items"][0];
    let info = &doc["components"]["schemas"]["UserInfo"];
    for field in info["required"].as_array().expect("required fields") {
        let field = field.as_str().expect("a name");
        assert!(!user[field].is_null(), "{field} missing from {user}");
    }
}
