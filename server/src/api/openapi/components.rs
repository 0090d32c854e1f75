//! The parts of the OpenAPI document that operations point to: the security schemes, the
//! error responses by status, and the envelope and page shapes wrapped around the `protocol`
//! schemas.

use protocol::rest::{ErrorCode, ErrorEnvelope};
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, Ref, RefOr, Response, ResponseBuilder, Schema,
};
use utoipa::{PartialSchema, ToSchema};

/// A security scheme's name in `components.securitySchemes`, as operations name it.
pub const USER_JWT: &str = "userJwt";
pub const DEVICE_JWT: &str = "deviceJwt";
pub const SOCKET_QUERY_TOKEN: &str = "socketQueryToken";
pub const ENROLLMENT_KEY: &str = "enrollmentKey";
pub const METRICS_TOKEN: &str = "metricsToken";
pub const OTA_JWT: &str = "otaJwt";
pub const OTA_QUERY_TOKEN: &str = "otaQueryToken";
pub const OTA_ADMIN_SECRET: &str = "otaAdminSecret";

/// Every security scheme the routes use.
fn security_schemes() -> Vec<(&'static str, SecurityScheme)> {
    let bearer = |format: &str, about: &str| {
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format(format)
                .description(Some(about))
                .build(),
        )
    };
    let header = |name: &str, about: &str| {
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(name, about)))
    };
    let query = |name: &str, about: &str| {
        SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(name, about)))
    };
    vec![
        (
            USER_JWT,
            bearer(
                "JWT",
                "A user's token from `POST /api/v1/auth/login`, as `Authorization: Bearer`. \
                 What it may do is its user's role (VIEWER < OPERATOR < MANAGER < ADMIN); each \
                 operation names the least role in `x-required-role`.",
            ),
        ),
        (
            DEVICE_JWT,
            bearer(
                "JWT",
                "A device's token from `POST /api/v1/devices/{id}/token`, as \
                 `Authorization: Bearer`. A user token is refused where a device token is due.",
            ),
        ),
        (
            SOCKET_QUERY_TOKEN,
            query(
                "token",
                "The token of a WebSocket upgrade in the URL (`?token=`), for compatibility \
                 only; a server setting turns it off. A first frame \
                 `{\"type\": \"auth\", \"token\": …}` within 10 s is the other way.",
            ),
        ),
        (
            ENROLLMENT_KEY,
            header(
                "X-Enrollment-Key",
                "The enrollment key the server was started with (`--enrollment-key`).",
            ),
        ),
        (
            METRICS_TOKEN,
            bearer(
                "opaque",
                "The metrics token (`--metrics-token`), as `Authorization: Bearer`; while none \
                 is set the route answers 403.",
            ),
        ),
        (
            OTA_JWT,
            bearer(
                "JWT",
                "A board's OTA token from `POST /admin/generate_token` (`aud: ota_api`), as \
                 `Authorization: Bearer`; the board names itself in `X-Device-ID` (or \
                 `?device_id=`). Not needed while the server runs with `--ota-no-jwt`.",
            ),
        ),
        (
            OTA_QUERY_TOKEN,
            query(
                "token",
                "A board's OTA token in the URL (`?token=`), as boards of the seed send it.",
            ),
        ),
        (
            OTA_ADMIN_SECRET,
            header(
                "X-Admin-Secret",
                "The OTA admin secret (`--ota-admin-secret`); while none is set the routes \
                 answer 403.",
            ),
        ),
    ]
}

/// The error statuses an operation may list, each a shared response of the error body.
pub const ERROR_STATUSES: &[(u16, &str, &str)] = &[
    (
        400,
        "BadRequest",
        "Bad input: `invalid_body` (malformed JSON, a missing field, an unknown field named in \
         the message, a NUL character), `invalid_parameter` (a path or query value), \
         `invalid_command`, `unknown_command_type`, `range_too_large`, `invalid_signature` (an \
         unreadable signature), `bad_request`.",
    ),
    (
        401,
        "Unauthorized",
        "No credential, or one that is invalid, expired or revoked: `unauthorized`, \
         `invalid_token`, `token_expired`, `invalid_credentials`, `invalid_enrollment_key`, \
         `invalid_admin_secret`.",
    ),
    (
        403,
        "Forbidden",
        "A valid credential without the right (`forbidden`, with the permission the role \
         lacks), a feature switched off (`enrollment_disabled`), or a device syncing another \
         company's records (`company_mismatch`).",
    ),
    (
        404,
        "NotFound",
        "No such thing: `not_found`, `user_not_found`, `device_not_found`, \
         `command_not_found`, `group_not_found`, `release_not_found`, \
         `deployment_not_found`, `board_not_found`.",
    ),
    (
        405,
        "MethodNotAllowed",
        "The path is a route's under another method (`method_not_allowed`); `Allow` lists \
         the methods it takes. Any path of this document answers it for a method it does \
         not list.",
    ),
    (
        409,
        "Conflict",
        "A conflict with what is stored: `username_taken`, `last_admin`, `device_exists`, \
         `duplicate_command_id`, `command_in_flight`, `command_not_cancellable`, \
         `group_name_taken`, `release_exists`, `release_deployed`, `deployment_state`, \
         `device_in_deployment`.",
    ),
    (
        413,
        "PayloadTooLarge",
        "The body is over the route's limit (1 MiB of JSON; the firmware size limit; a sync \
         batch's record count or record size): `payload_too_large`, `too_many_targets`.",
    ),
    (
        422,
        "Unprocessable",
        "Well-formed but not allowed: `confirmation_required` (a dangerous command without \
         `\"confirm\": true`), `invalid_signature`, `signature_required`, \
         `signature_expired`.",
    ),
    (
        429,
        "TooManyRequests",
        "Too many refused attempts from this address or for this account (`rate_limited`), \
         or every download slot of a production line is taken (`download_busy`); \
         `Retry-After` says when to ask again.",
    ),
    (
        503,
        "Unavailable",
        "The database cannot be reached (`database_unavailable`), its queue is full or too \
         many password checks wait (`server_busy`), or every download slot is taken \
         (`download_busy`); `Retry-After` says when to ask again.",
    ),
];

/// The name of the shared response of an error status.
pub fn error_response_name(status: u16) -> Option<&'static str> {
    ERROR_STATUSES
        .iter()
        .find(|(s, _, _)| *s == status)
        .map(|(_, name, _)| *name)
}

fn error_response(status: u16, about: &str) -> Response {
    let mut response = ResponseBuilder::new().description(about).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(ErrorEnvelope::name())))
            .build(),
    );
    if matches!(status, 429 | 503) {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(u64::schema())
                .description(Some("Seconds to wait before asking again."))
                .build(),
        );
    }
    if status == 405 {
        response = response.header(
            "Allow",
            HeaderBuilder::new()
                .schema(String::schema())
                .description(Some("The methods the path takes."))
                .build(),
        );
    }
    response.build()
}

/// The components: security schemes, error responses and the schemas `schemas` collected.
pub fn components(schemas: Vec<(String, RefOr<Schema>)>) -> utoipa::openapi::Components {
    let mut builder = ComponentsBuilder::new();
    for (name, scheme) in security_schemes() {
        builder = builder.security_scheme(name, scheme);
    }
    for (status, name, about) in ERROR_STATUSES {
        builder = builder.response(*name, error_response(*status, about));
    }
    let mut all = schemas;
    collect::<ErrorEnvelope>(&mut all);
    collect::<ErrorCode>(&mut all);
    builder.schemas_from_iter(all).build()
}

/// Adds `T`'s schema and those it refers to.
pub fn collect<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
}

/// A reference to `T`'s schema, which `collect` adds.
pub fn reference<T: ToSchema>() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

/// A schema written as JSON, for the answers no `protocol` type describes.
pub fn inline(json: serde_json::Value) -> RefOr<Schema> {
    match serde_json::from_value::<Schema>(json.clone()) {
        Ok(schema) => RefOr::T(schema),
        // A mistyped schema is a bug in this file, which the document test shows at once.
        Err(e) => panic!("not a schema ({e}): {json}"),
    }
}

/// `{"success": true, "data": …}` around `data`.
pub fn envelope(data: RefOr<Schema>) -> RefOr<Schema> {
    let data = serde_json::to_value(&data).unwrap_or_default();
    inline(serde_json::json!({
        "type": "object",
        "required": ["success", "data"],
        "properties": {
            "success": {"type": "boolean", "enum": [true]},
            "data": data,
        },
    }))
}

/// `{"items": [...], "total": N}` of `item`.
pub fn page(item: RefOr<Schema>) -> RefOr<Schema> {
    let item = serde_json::to_value(&item).unwrap_or_default();
    inline(serde_json::json!({
        "type": "object",
        "required": ["items", "total"],
        "properties": {
            "items": {"type": "array", "items": item},
            "total": {"type": "integer", "format": "int64", "minimum": 0},
        },
    }))
}

/// The `x-…` extensions of an operation that needs a user role.
pub fn role_extensions(role: &str, permission: &str) -> utoipa::openapi::extensions::Extensions {
    ExtensionsBuilder::new()
        .add("x-required-role", role)
        .add("x-permission", permission)
        .build()
}
