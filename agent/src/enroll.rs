//! Enrollment: trading the shared enrollment key for a device JWT.

use std::time::Duration;

use protocol::rest::{DeviceTokenResponse, Envelope, ErrorEnvelope};
use serde::Serialize;

use crate::config::{Config, Secret};

/// How long the server gets to answer the token request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest answer body read; a token answer is a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;
/// How much of an unexpected body is quoted in a log line.
const QUOTE_LEN: usize = 200;

/// Everything the token request needs, cloned out of the config so it can move into a
/// future.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub server_url: String,
    pub device_id: String,
    pub key: Option<Secret>,
    pub name: String,
    pub company_id: Option<String>,
    pub production_line_id: Option<String>,
    /// The firmware version this process runs.
    pub version: String,
}

impl Enrollment {
    pub fn from_config(config: &Config, version: &str) -> Self {
        Enrollment {
            server_url: config.server_url.clone(),
            device_id: config.device_id.clone(),
            key: config.enrollment_key.clone(),
            name: config.name.clone(),
            company_id: config.company_id.clone(),
            production_line_id: config.production_line_id.clone(),
            version: version.to_owned(),
        }
    }

    /// The path of the token route; the device id is already limited to URL-safe characters.
    fn url(&self) -> String {
        format!(
            "{}/api/v1/devices/{}/token",
            self.server_url, self.device_id
        )
    }

    fn query(&self) -> TokenQuery<'_> {
        TokenQuery {
            name: &self.name,
            company_id: self.company_id.as_deref(),
            production_line_id: self.production_line_id.as_deref(),
            version: &self.version,
        }
    }

    /// The request, ready to send; absent values are left out of the query.
    fn request(&self, client: &awc::Client) -> Result<awc::ClientRequest, EnrollError> {
        let mut request = client
            .post(self.url())
            .timeout(REQUEST_TIMEOUT)
            .query(&self.query())
            .map_err(|e| EnrollError::Request(e.to_string()))?;
        if let Some(key) = &self.key {
            request = request.insert_header(("X-Enrollment-Key", key.expose()));
        }
        Ok(request)
    }
}

/// The query string of the token route, in the contract's camelCase.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenQuery<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    company_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    production_line_id: Option<&'a str>,
    version: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("token request failed: {0}")]
    Request(String),
    #[error("server refused enrollment with {status}: {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("server answered {status} with an unexpected body: {quote}")]
    Unexpected { status: u16, quote: String },
}

/// Asks the server for a device token. Neither the key nor the token appears in any error.
pub async fn request_token(
    client: &awc::Client,
    enrollment: &Enrollment,
) -> Result<DeviceTokenResponse, EnrollError> {
    let mut response = enrollment
        .request(client)?
        .send()
        .await
        .map_err(|e| EnrollError::Request(crate::http::reason(&e)))?;
    let status = response.status();
    let body = response
        .body()
        .limit(MAX_BODY)
        .await
        .map_err(|e| EnrollError::Request(format!("reading the answer: {e}")))?;
    let answer = read_answer(status.as_u16(), &body)?;
    if answer.device_id != enrollment.device_id {
        tracing::warn!(
            expected = %enrollment.device_id,
            got = %answer.device_id,
            "token was issued for another device id"
        );
    }
    Ok(answer)
}

/// Interprets the status and body of the token route's answer.
fn read_answer(status: u16, body: &[u8]) -> Result<DeviceTokenResponse, EnrollError> {
    if (200..300).contains(&status) {
        match serde_json::from_slice::<Envelope<DeviceTokenResponse>>(body) {
            Ok(envelope) if envelope.success && !envelope.data.token.is_empty() => {
                Ok(envelope.data)
            }
            // A 2xx body may hold the token, so it is never quoted.
            _ => Err(EnrollError::Unexpected {
                status,
                quote: "not a token envelope".into(),
            }),
        }
    } else {
        match serde_json::from_slice::<ErrorEnvelope>(body) {
            Ok(error) => Err(EnrollError::Refused {
                status,
                code: error.error.code,
                message: error.error.message,
            }),
            Err(_) => Err(EnrollError::Unexpected {
                status,
                quote: quote(body),
            }),
        }
    }
}

/// The start of a body as one printable line.
fn quote(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(QUOTE_LEN)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrollment() -> Enrollment {
        Enrollment {
            server_url: "http://factory:8080".into(),
            device_id: "edge-1".into(),
            key: Some("k3y".parse().unwrap()),
            name: "Line 1 & 2/ü".into(),
            company_id: Some("acme".into()),
            production_line_id: None,
            version: "1.2.3".into(),
        }
    }

    #[actix::test]
    async fn request_has_path_encoded_query_and_key_header() {
        let client = awc::Client::new();
        let request = enrollment().request(&client).unwrap();
        let uri = request.get_uri().to_string();
        // The version is the one the enrollment carries (the installed firmware's).
        assert_eq!(
            uri,
            "http://factory:8080/api/v1/devices/edge-1/token?name=Line+1+%26+2%2F%C3%BC&companyId=acme&version=1.2.3"
        );
        assert_eq!(request.get_method(), awc::http::Method::POST);
        assert_eq!(request.headers().get("X-Enrollment-Key").unwrap(), "k3y");
    }

    #[test]
    fn success_envelope_gives_the_token() {
        let body = br#"{"success":true,"data":{"token":"t","deviceId":"edge-1","expiresAt":"2030-01-01T00:00:00Z"}}"#;
        let answer = read_answer(200, body).unwrap();
        assert_eq!(answer.token, "t");
        assert_eq!(answer.device_id, "edge-1");
    }

    #[test]
    fn error_envelope_is_reported_with_code_and_message() {
        let body =
            br#"{"success":false,"error":{"code":"invalid_enrollment_key","message":"wrong key"}}"#;
        let err = read_answer(401, body).unwrap_err();
        assert_eq!(
            err.to_string(),
            "server refused enrollment with 401: invalid_enrollment_key: wrong key"
        );
    }

    #[test]
    fn odd_answers_are_errors_not_panics() {
        assert!(read_answer(200, b"").is_err());
        assert!(read_answer(200, br#"{"success":true,"data":{"token":""}}"#).is_err());
        let err = read_answer(502, b"<html>\nBad gateway</html>").unwrap_err();
        assert!(!err.to_string().contains('\n'));
        assert!(read_answer(500, &[0xff, 0xfe]).is_err());
    }
}
