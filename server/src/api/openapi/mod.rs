//! `GET /api/v1/openapi.json`: the OpenAPI 3 description of every route, built from the
//! operation table (`operations.rs`, `operations_more.rs`), the `protocol` types' derived
//! schemas and the `Permission` types the handlers' `Authorized<P>` name; and `gaps`, the
//! check that the table and `ROUTES` name the same routes.

mod components;
mod operations;
mod operations_more;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::HttpResponse;
use protocol::rest::Role;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, Parameter, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref, RefOr, Required,
    ResponseBuilder, Schema,
};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use crate::auth::Permission;
use components::{collect, envelope, error_response_name, inline, page, reference};
pub use components::{
    DEVICE_JWT, ENROLLMENT_KEY, METRICS_TOKEN, OTA_ADMIN_SECRET, OTA_JWT, OTA_QUERY_TOKEN,
    SOCKET_QUERY_TOKEN, USER_JWT,
};

/// Where the contract describes the frames of the two WebSocket routes.
const FRAMES_DOC: &str = "docs/contract.md";

/// The tags operations are grouped under, in the order a reader meets them.
const TAGS: &[(&str, &str)] = &[
    ("auth", "Signing in and out, the caller's rights."),
    (
        "users",
        "User accounts (roles VIEWER < OPERATOR < MANAGER < ADMIN).",
    ),
    ("devices", "Edge devices: registry, enrollment, telemetry."),
    (
        "commands",
        "Commands to devices, single, bulk and by group, and their history.",
    ),
    ("groups", "Device groups."),
    (
        "charts",
        "Metric series, production throughput, the fleet summary (JSON or CSV).",
    ),
    ("sync", "Edge → factory records and the cloud queue."),
    ("firmware", "Firmware releases, downloads and deployments."),
    (
        "ota",
        "Boards without an agent: OTA tokens, their board list, their downloads.",
    ),
    ("audit", "The append-only audit log."),
    (
        "operations",
        "Health, metrics, this document, the dashboard's files.",
    ),
    (
        "sockets",
        "WebSocket upgrades; their frames are in the contract.",
    ),
];

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Anyone; the operation's `security` is empty.
    Public,
    /// A user token of at least `role`, which holds `permission`.
    User {
        role: Role,
        permission: &'static str,
    },
    /// A user token of any role, or a device token.
    UserOrDevice,
    Device,
    /// The device socket: a device token in the header, the first frame or the URL.
    DeviceSocket,
    /// The dashboard socket: a user token in the header, the first frame or the URL.
    DashboardSocket,
    Enrollment,
    Metrics,
    /// A board's OTA token in the header or the URL.
    OtaBoard,
    OtaAdmin,
}

/// The least role that holds `P`.
pub fn min_role<P: Permission>() -> Role {
    [Role::Viewer, Role::Operator, Role::Manager, Role::Admin]
        .into_iter()
        .find(|role| P::allows(*role))
        .unwrap_or(Role::Admin)
}

/// A body in each content type it may take, as (content type, schema).
type Contents = Vec<(String, RefOr<Schema>)>;

/// One operation as the table declares it: a route of `ROUTES` by its method and actix
/// pattern, and what the document says of it.
pub struct Doc {
    pub method: &'static str,
    pub pattern: &'static str,
    pub auth: Auth,
    tag: &'static str,
    summary: &'static str,
    about: Vec<String>,
    params: Vec<Parameter>,
    body: Option<(String, RefOr<Schema>, bool)>,
    /// By status: the description and the body in each content type it may take.
    responses: BTreeMap<u16, (String, Contents)>,
    errors: Vec<u16>,
    schemas: Vec<(String, RefOr<Schema>)>,
}

/// Starts the declaration of `METHOD pattern`.
pub fn op(
    method: &'static str,
    pattern: &'static str,
    tag: &'static str,
    summary: &'static str,
) -> Doc {
    Doc {
        method,
        pattern,
        auth: Auth::Public,
        tag,
        summary,
        about: Vec::new(),
        params: Vec::new(),
        body: None,
        responses: BTreeMap::new(),
        errors: Vec::new(),
        schemas: Vec::new(),
    }
}

impl Doc {
    /// A paragraph of the description.
    pub fn about(mut self, text: &str) -> Self {
        self.about.push(text.to_owned());
        self
    }

    /// Needs a user token whose role holds `P`: 401 without one, 403 below the role, 429
    /// after too many refused tokens from the address, 503 when the user cannot be looked up.
    pub fn user<P: Permission>(mut self) -> Self {
        let role = min_role::<P>();
        self.auth = Auth::User {
            role,
            permission: P::NAME,
        };
        self.errors.extend([401, 429, 503]);
        if role > Role::Viewer {
            self.errors.push(403);
        }
        self
    }

    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self.errors.extend(match auth {
            Auth::Public => &[][..],
            Auth::Metrics => &[401, 403][..],
            Auth::OtaAdmin => &[401, 403, 429][..],
            _ => &[401, 429, 503][..],
        });
        self
    }

    /// Statuses it answers beyond those its auth and body bring.
    pub fn errors(mut self, statuses: &[u16]) -> Self {
        self.errors.extend_from_slice(statuses);
        self
    }

    /// A path segment `{name}`.
    pub fn path(mut self, name: &str, about: &str) -> Self {
        self.params.push(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(about))
                .schema(Some(String::schema()))
                .build(),
        );
        self
    }

    /// The query parameters of a handler's query type; a malformed one answers 400.
    pub fn query<Q: IntoParams>(mut self) -> Self {
        self.params
            .extend(Q::into_params(|| Some(ParameterIn::Query)));
        self.errors.push(400);
        self
    }

    /// One query parameter the handler reads itself.
    pub fn query_param(mut self, name: &str, schema: RefOr<Schema>, about: &str) -> Self {
        self.params.push(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(about))
                .schema(Some(schema))
                .build(),
        );
        self
    }

    /// One request header the handler reads.
    pub fn header(mut self, name: &str, required: bool, about: &str) -> Self {
        self.params.push(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Header)
                .required(if required {
                    Required::True
                } else {
                    Required::False
                })
                .description(Some(about))
                .schema(Some(String::schema()))
                .build(),
        );
        self
    }

    /// A JSON body of `T`: 400 when it is not one (unknown fields included), 413 over 1 MiB.
    pub fn json<T: ToSchema>(mut self) -> Self {
        collect::<T>(&mut self.schemas);
        self.body = Some(("application/json".into(), reference::<T>(), true));
        self.errors.extend([400, 413]);
        self
    }

    /// A JSON body written as a schema here, for bodies no `protocol` type is.
    pub fn json_inline(mut self, schema: serde_json::Value) -> Self {
        self.body = Some(("application/json".into(), inline(schema), true));
        self.errors.extend([400, 413]);
        self
    }

    /// A body of another content type.
    pub fn body_of(mut self, content_type: &str, schema: RefOr<Schema>) -> Self {
        self.body = Some((content_type.into(), schema, true));
        self
    }

    /// A success answer of `T` in the envelope.
    pub fn ok<T: ToSchema>(mut self, status: u16, about: &str) -> Self {
        collect::<T>(&mut self.schemas);
        self.respond(
            status,
            about,
            "application/json",
            envelope(reference::<T>()),
        )
    }

    /// A success answer of a page of `T` in the envelope; `limit` and `offset` choose it.
    pub fn page<T: ToSchema>(mut self, about: &str) -> Self {
        collect::<T>(&mut self.schemas);
        self = self.query::<crate::api::paging::Paging>();
        self.respond(
            200,
            about,
            "application/json",
            envelope(page(reference::<T>())),
        )
    }

    /// A success answer in the envelope whose `data` is written as a schema here.
    pub fn ok_inline(self, status: u16, about: &str, data: serde_json::Value) -> Self {
        self.respond(status, about, "application/json", envelope(inline(data)))
    }

    /// An answer of any content type; `schema` describes its body.
    pub fn respond(
        mut self,
        status: u16,
        about: &str,
        content_type: &str,
        schema: RefOr<Schema>,
    ) -> Self {
        self.responses
            .entry(status)
            .or_insert_with(|| (about.into(), Vec::new()))
            .1
            .push((content_type.into(), schema));
        self
    }

    /// Adds `T`'s schema to the components, for a schema written here that refers to it.
    pub fn with_schema<T: ToSchema>(mut self) -> Self {
        collect::<T>(&mut self.schemas);
        self
    }

    /// An answer without a body.
    pub fn empty(mut self, status: u16, about: &str) -> Self {
        self.responses.insert(status, (about.into(), Vec::new()));
        self
    }

    /// A WebSocket upgrade: 101 on success, the frames as the contract describes them.
    pub fn websocket(self, section: &str) -> Self {
        self.about(&format!(
            "A WebSocket: send a GET with the upgrade headers. Its JSON text frames are \
             described in the contract ({FRAMES_DOC}, section \"{section}\"). Without the \
             upgrade headers the request answers 400 `bad_request` once authenticated."
        ))
        .empty(101, "Switching Protocols: the socket is open.")
        .errors(&[400])
    }

    /// The operation as utoipa builds it; `handler` names its id.
    fn operation(&self, handler: &str) -> Operation {
        let mut about = self.about.clone();
        let mut builder = OperationBuilder::new()
            .tag(self.tag)
            .summary(Some(self.summary))
            .operation_id(Some(operation_id(self.method, handler)))
            .parameters(Some(self.params.clone()))
            .securities(Some(security(self.auth)));
        if let Auth::User { role, permission } = self.auth {
            about.push(format!(
                "Needs a user token of role {} or above (permission `{permission}`).",
                role.as_str()
            ));
            builder =
                builder.extensions(Some(components::role_extensions(role.as_str(), permission)));
        }
        if !about.is_empty() {
            builder = builder.description(Some(about.join("\n\n")));
        }
        if let Some((content_type, schema, required)) = &self.body {
            builder = builder.request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        content_type,
                        ContentBuilder::new().schema(Some(schema.clone())).build(),
                    )
                    .required(Some(if *required {
                        Required::True
                    } else {
                        Required::False
                    }))
                    .build(),
            ));
        }
        for (status, (about, content)) in &self.responses {
            let mut response = ResponseBuilder::new().description(about);
            for (content_type, schema) in content {
                response = response.content(
                    content_type,
                    ContentBuilder::new().schema(Some(schema.clone())).build(),
                );
            }
            builder = builder.response(status.to_string(), response.build());
        }
        let mut errors = self.errors.clone();
        errors.sort_unstable();
        errors.dedup();
        for status in errors {
            if self.responses.contains_key(&status) {
                continue;
            }
            let name = error_response_name(status).unwrap_or_else(|| {
                panic!(
                    "{} {}: no error response {status}",
                    self.method, self.pattern
                )
            });
            builder = builder.response(
                status.to_string(),
                RefOr::Ref(Ref::from_response_name(name)),
            );
        }
        builder.build()
    }
}

/// The security requirements of an auth: any one of them lets a request in.
fn security(auth: Auth) -> Vec<SecurityRequirement> {
    let one = |name: &str| SecurityRequirement::new::<_, [&str; 0], &str>(name, []);
    match auth {
        Auth::Public => Vec::new(),
        Auth::User { .. } => vec![one(USER_JWT)],
        Auth::UserOrDevice => vec![one(USER_JWT), one(DEVICE_JWT)],
        Auth::Device => vec![one(DEVICE_JWT)],
        Auth::DeviceSocket => vec![one(DEVICE_JWT), one(SOCKET_QUERY_TOKEN)],
        Auth::DashboardSocket => vec![one(USER_JWT), one(SOCKET_QUERY_TOKEN)],
        Auth::Enrollment => vec![one(ENROLLMENT_KEY)],
        Auth::Metrics => vec![one(METRICS_TOKEN)],
        Auth::OtaBoard => vec![one(OTA_JWT), one(OTA_QUERY_TOKEN)],
        Auth::OtaAdmin => vec![one(OTA_ADMIN_SECRET)],
    }
}

/// `users::list_users` → `users.list_users`; a HEAD shares its GET's handler, so it gets a
/// suffix to keep ids unique.
fn operation_id(method: &str, handler: &str) -> String {
    let id = handler.replace(' ', "").replace("::", ".");
    if method == "HEAD" {
        format!("{id}.head")
    } else {
        id
    }
}

/// An actix pattern as an OpenAPI path: `{path:.*}` → `{path}`.
pub fn openapi_path(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut in_regex = false;
    for c in pattern.chars() {
        match c {
            ':' if out.ends_with(|c: char| c != '/') && open_brace(&out) => in_regex = true,
            '}' => {
                in_regex = false;
                out.push(c);
            }
            _ if in_regex => {}
            _ => out.push(c),
        }
    }
    out
}

/// Whether `text` ends inside a `{…` segment.
fn open_brace(text: &str) -> bool {
    text.rfind('{') > text.rfind('}')
}

fn http_method(method: &str) -> Option<HttpMethod> {
    Some(match method {
        "GET" => HttpMethod::Get,
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "PATCH" => HttpMethod::Patch,
        "DELETE" => HttpMethod::Delete,
        "HEAD" => HttpMethod::Head,
        _ => return None,
    })
}

/// Every operation the table declares.
pub fn table() -> Vec<Doc> {
    let mut docs = operations::all();
    docs.extend(operations_more::all());
    docs
}

/// The whole document, built from `docs`.
pub fn build(docs: &[Doc]) -> OpenApi {
    let handlers: BTreeMap<(&str, &str), &str> = crate::api::ROUTES
        .iter()
        .zip(crate::api::HANDLERS)
        .map(|((method, pattern), handler)| ((*method, *pattern), *handler))
        .collect();
    let mut paths = PathsBuilder::new();
    let mut schemas = Vec::new();
    for doc in docs {
        let method = http_method(doc.method)
            .unwrap_or_else(|| panic!("{} {}: no such method", doc.method, doc.pattern));
        let handler = handlers
            .get(&(doc.method, doc.pattern))
            .copied()
            .unwrap_or(doc.pattern);
        paths = paths.path(
            openapi_path(doc.pattern),
            PathItem::new(method, doc.operation(handler)),
        );
        schemas.extend(doc.schemas.iter().cloned());
    }
    schemas.sort_by(|a, b| a.0.cmp(&b.0));
    schemas.dedup_by(|a, b| a.0 == b.0);
    let tags = TAGS.iter().map(|(name, about)| {
        TagBuilder::new()
            .name(*name)
            .description(Some(*about))
            .build()
    });
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("factory-server")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The factory server's REST and WebSocket routes. Success is \
                     `{\"success\": true, \"data\": …}`; failure is \
                     `{\"success\": false, \"error\": {\"code\", \"message\"}}` (`ErrorEnvelope`) \
                     with the status of its kind (the shared responses). A path answers 405 \
                     `method_not_allowed` with `Allow` for a method it does not list, and any \
                     other path 404 `not_found`. The conventions and the WebSocket frames are \
                     in the contract (docs/contract.md).",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components::components(schemas)))
        .tags(Some(tags))
        .build()
}

/// The document as served, built once.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        build(&table())
            .to_pretty_json()
            .unwrap_or_else(|e| panic!("the OpenAPI document does not serialize: {e}"))
    })
}

/// `GET /api/v1/openapi.json`: public, since it holds no secret, only what the routes take.
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ))
        .body(document_json())
}

/// The routes without an operation, and the operations without a route, each as
/// `METHOD /openapi/path`; both empty when the two agree.
pub fn gaps(routes: &[(&str, &str)], document: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    let documented: Vec<String> = document["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flatten()
                .filter(|(key, _)| http_method(&key.to_ascii_uppercase()).is_some())
                .map(move |(method, _)| format!("{} {path}", method.to_ascii_uppercase()))
        })
        .collect();
    let routed: Vec<String> = routes
        .iter()
        .map(|(method, pattern)| format!("{method} {}", openapi_path(pattern)))
        .collect();
    let undocumented = routed
        .iter()
        .filter(|r| !documented.contains(r))
        .cloned()
        .collect();
    let unrouted = documented
        .iter()
        .filter(|d| !routed.contains(d))
        .cloned()
        .collect();
    (undocumented, unrouted)
}

/// What the table files use to declare operations.
pub mod prelude {
    pub use super::components::{inline, reference};
    pub use super::{op, Auth, Doc};
    pub use utoipa::PartialSchema;
}

#[cfg(test)]
mod tests;
