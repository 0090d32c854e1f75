//! NUL characters (U+0000) in text input, refused where input enters the server.
//!
//! PostgreSQL cannot store a NUL in a text column: such input reached the database and came
//! back as a 500 there, while SQLite stored it. Every request passes `reject_nul`: a `%00` in
//! the path or query string is a `400 invalid_parameter` at once, and a request body (JSON on
//! every route but the firmware upload) is scanned as it streams in, so a `\u0000` escape
//! anywhere in it, nested strings and keys included, fails the body's reading and becomes a
//! `400 invalid_body` (see `error::payload_error`). Device frames go through `has_nul` too.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::HttpMessage;
use futures_util::Stream;

use crate::error::{ApiError, ErrorCode, NulInBody};

/// Why NUL input is refused, for every message that refuses it.
pub use crate::store::error::NUL_REFUSED;

/// Routes whose body is binary, not JSON text, and is therefore not scanned.
pub const BINARY_BODY_ROUTES: &[(&str, &str)] = &[("POST", "/api/v1/firmware/releases")];

/// Finds a NUL in JSON text fed to it in pieces: a `\u0000` escape (the only way JSON spells
/// one) or a raw NUL byte (never valid JSON). Escapes are followed, so the six characters of
/// `\\u0000` (an escaped backslash, then text) are not a NUL.
#[derive(Debug, Default, Clone, Copy)]
pub struct NulScanner {
    state: ScanState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ScanState {
    #[default]
    Text,
    /// After an unescaped backslash.
    Backslash,
    /// After `\u` and this many zeros.
    Unicode(u8),
}

impl NulScanner {
    /// Reads the next bytes; true when a NUL is among them (an escape split across two calls
    /// is found in the second).
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            self.state = match (self.state, b) {
                (_, 0) | (ScanState::Unicode(3), b'0') => return true,
                (ScanState::Unicode(n), b'0') => ScanState::Unicode(n + 1),
                (ScanState::Backslash, b'u') => ScanState::Unicode(0),
                (ScanState::Backslash, _) => ScanState::Text,
                (_, b'\\') => ScanState::Backslash,
                _ => ScanState::Text,
            };
        }
        false
    }
}

/// Whether JSON text holds a NUL anywhere.
pub fn has_nul(json: &[u8]) -> bool {
    NulScanner::default().feed(json)
}

/// A request body that fails with `NulInBody` at the chunk that holds a NUL.
struct NulCheckedPayload {
    inner: Payload,
    scanner: NulScanner,
    refused: bool,
}

impl Stream for NulCheckedPayload {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.refused {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) if self.scanner.feed(&chunk) => {
                self.refused = true;
                Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    NulInBody,
                )))))
            }
            other => other,
        }
    }
}

/// Whether a request's body is text to scan: any body but a binary upload's. A WebSocket
/// upgrade is a GET, whose "body" is the socket's stream and must pass untouched.
fn scans_body(req: &ServiceRequest) -> bool {
    let method = req.method();
    let has_body = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(method);
    has_body
        && !BINARY_BODY_ROUTES
            .iter()
            .any(|(m, path)| method.as_str() == *m && req.path() == *path)
}

/// The middleware: refuses `%00` in the URI and scans text bodies (see the module comment).
pub async fn reject_nul(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    // `%00` is the only way a NUL gets into a URI: the request parser refuses a raw one.
    let place = if req.path().contains("%00") {
        Some("path")
    } else if req.query_string().contains("%00") {
        Some("query string")
    } else {
        None
    };
    if let Some(place) = place {
        let refused = ApiError::bad_request(
            ErrorCode::InvalidParameter,
            format!("the {place} contains %00: {NUL_REFUSED}"),
        );
        return Ok(req.error_response(refused).map_into_right_body());
    }
    if scans_body(&req) {
        let checked = NulCheckedPayload {
            inner: req.take_payload(),
            scanner: NulScanner::default(),
            refused: false,
        };
        req.set_payload(Payload::Stream {
            payload: Box::pin(checked),
        });
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_raw_bytes_are_found() {
        assert!(has_nul(br#"{"username": "ad\u0000min"}"#));
        assert!(has_nul(br#"{"a": {"b": ["x", "\u0000"]}}"#));
        assert!(has_nul(br#"{"k\u0000": 1}"#));
        assert!(has_nul(b"{\"a\": \"\0\"}"));
        assert!(
            has_nul(br#"["\\\u0000"]"#),
            "an escaped backslash, then a NUL"
        );
    }

    #[test]
    fn look_alikes_are_not_nul() {
        assert!(!has_nul(br#"{"a": "\\u0000"}"#), "a backslash, then text");
        assert!(!has_nul(br#"{"a": "\u0001 \u0020 \u00e9"}"#));
        assert!(!has_nul(br#"{"a": "u0000 \\\\u0000 \n0000"}"#));
        assert!(!has_nul(br#"{"a": "\u1000 \u0100 \u0010"}"#));
    }

    #[test]
    fn an_escape_split_across_chunks_is_found() {
        let text = br#"{"a": "x\u0000"}"#;
        for cut in 0..text.len() {
            let mut scanner = NulScanner::default();
            let found = scanner.feed(&text[..cut]) || scanner.feed(&text[cut..]);
            assert!(found, "cut at {cut}");
        }
        let text = br#"{"a": "x\\u0000"}"#;
        for cut in 0..text.len() {
            let mut scanner = NulScanner::default();
            let found = scanner.feed(&text[..cut]) || scanner.feed(&text[cut..]);
            assert!(!found, "cut at {cut}");
        }
    }

    #[test]
    fn the_binary_routes_exist() {
        for route in BINARY_BODY_ROUTES {
            assert!(crate::ROUTES.contains(route), "{route:?} is not a route");
        }
    }
}
