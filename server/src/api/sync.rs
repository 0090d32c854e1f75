//! Edge → factory sync, `POST /api/v1/sync`: production records from agents, stored once each
//! in their `aggregated_*` table and in `cloud_sync_queue`, in one transaction.
//!
//! Agents resend whatever they did not see acknowledged, so every record id is checked: one
//! seen before is a duplicate and changes nothing. The check runs inside the transaction, and
//! a unique violation from a concurrent request with the same id counts as a duplicate too.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use protocol::rest::Envelope;
use protocol::sync::{RecordKind, SyncRecord, MAX_SYNC_RECORD_BYTES};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;
use crate::store::db::DbConnection;
use crate::store::sync::*;

/// Most records one request may carry; agents send at most this many per call.
pub const MAX_SYNC_RECORDS: usize = protocol::sync::MAX_SYNC_BATCH_RECORDS;
/// Largest body accepted: room for `MAX_SYNC_RECORDS` records of up to 16 KiB each. One
/// record is limited further, to `MAX_SYNC_RECORD_BYTES`.
pub const MAX_SYNC_BODY: usize = 16 * 1024 * 1024;
/// Longest record id accepted.
pub const MAX_RECORD_ID_LEN: usize = 128;

/// The body as received, before each record is checked: `payload` may be anything and
/// `kind` any string, so that a bad record is refused with its index and reason.
#[derive(Deserialize)]
struct RawRequest {
    records: Vec<Value>,
}

/// Checks one record; the reason names what is wrong with it.
fn check_record(value: Value) -> Result<SyncRecord, String> {
    if let Some(kind) = value.get("kind").and_then(Value::as_str) {
        if serde_json::from_value::<RecordKind>(Value::String(kind.to_owned())).is_err() {
            return Err(format!(
                "unknown kind `{kind}` (bottle, batch, pallet or batch_fixate)"
            ));
        }
    }
    let record: SyncRecord = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if record.id.trim().is_empty() {
        return Err("id must not be empty".into());
    }
    if record.id.len() > MAX_RECORD_ID_LEN {
        return Err(format!("id is longer than {MAX_RECORD_ID_LEN} bytes"));
    }
    if record.company_id.trim().is_empty() {
        return Err("companyId must not be empty".into());
    }
    if !record.payload.is_object() {
        return Err("payload must be a JSON object".into());
    }
    Ok(record)
}

/// Parses and checks the whole body; the first bad record refuses the batch. Public for the
/// fuzz suite.
pub fn parse_body(body: &[u8]) -> ApiResult<Vec<SyncRecord>> {
    let raw: RawRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidBody, e.to_string()))?;
    if raw.records.len() > MAX_SYNC_RECORDS {
        return Err(too_large(format!(
            "{} records in one request; at most {MAX_SYNC_RECORDS} are accepted",
            raw.records.len()
        )));
    }
    raw.records
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            let size = json_len(&value);
            if size > MAX_SYNC_RECORD_BYTES {
                return Err(too_large(format!(
                    "records[{index}]: {size} bytes as JSON; a record may be at most \
                     {MAX_SYNC_RECORD_BYTES} bytes (nothing was stored)"
                )));
            }
            check_record(value).map_err(|reason| {
                ApiError::bad_request(
                    ErrorCode::InvalidBody,
                    format!("records[{index}]: {reason}"),
                )
            })
        })
        .collect()
}

/// The length of a value written as compact JSON, counted without building the text.
fn json_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` into a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// A device writes records for its own company only, the `company_id` of its device row (set
/// at enrollment, changed by an admin): one record for another company refuses the whole
/// batch, so a device cannot fill another company's tables and cloud queue, and nothing of a
/// refused batch is stored.
fn check_company(
    conn: &mut DbConnection,
    device_id: &str,
    records: &[SyncRecord],
) -> ApiResult<()> {
    let own = crate::store::devices::company_of(conn, device_id)?;
    let Some(own) = own else {
        return Err(ApiError::forbidden_with(
            ErrorCode::CompanyMismatch,
            "this device has no company; an admin sets its companyId before it can sync",
        ));
    };
    match records.iter().position(|r| r.company_id != own) {
        None => Ok(()),
        Some(index) => Err(ApiError::forbidden_with(
            ErrorCode::CompanyMismatch,
            format!(
                "records[{index}]: companyId `{}` is not this device's company `{own}` \
                 (nothing was stored)",
                records[index].company_id
            ),
        )),
    }
}

fn too_large(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        message,
    )
}

/// Reads the body up to `MAX_SYNC_BODY`; the app-wide JSON limit is too small for a full batch.
async fn read_body(mut payload: web::Payload) -> ApiResult<web::BytesMut> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| crate::error::payload_error(&e))?;
        if body.len() + chunk.len() > MAX_SYNC_BODY {
            return Err(too_large(format!(
                "body is larger than {MAX_SYNC_BODY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `POST /api/v1/sync`: a device's records, stored once each.
pub async fn ingest(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    // Authentication comes before the body is read, so a stranger cannot make the server
    // buffer 16 MiB.
    let token = crate::auth::bearer_token(&req)
        .ok_or_else(|| ApiError::unauthorized(ErrorCode::Unauthorized, "device token required"))?
        .to_owned();
    let checked = crate::auth::verify_device_token(&state, &token).await;
    let source = crate::auth::source_of(&req);
    let device = crate::refusals::count_token(&state, source.as_deref(), checked).await?;
    let body = read_body(payload).await?;
    let records = parse_body(&body)?;
    let total = records.len();
    let device_id = device.device_id.clone();
    let stored = state
        .db
        .run(move |conn| {
            check_company(conn, &device_id, &records)?;
            Ok(store(conn, &device_id, records)?)
        })
        .await?;
    crate::metrics::sync_ingested(stored.accepted, stored.duplicates);
    tracing::debug!(
        device_id = %device.device_id,
        records = total,
        accepted = stored.accepted,
        duplicates = stored.duplicates,
        "sync batch stored"
    );
    Ok(HttpResponse::Ok().json(Envelope::ok(stored)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(id: &str) -> Value {
        json!({"id": id, "kind": "bottle", "companyId": "acme",
               "payload": {"code": "x"}, "createdAt": "2030-01-01T00:00:00Z"})
    }

    fn body(records: Vec<Value>) -> Vec<u8> {
        json!({ "records": records }).to_string().into_bytes()
    }

    #[test]
    fn a_good_batch_parses() {
        let parsed = parse_body(&body(vec![record("a"), record("b")])).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].id, "b");
    }

    #[test]
    fn the_first_bad_record_is_named_with_its_index_and_reason() {
        let cases = [
            ("id", json!(""), "id must not be empty"),
            ("id", json!("x".repeat(129)), "longer than 128"),
            ("companyId", json!(" "), "companyId must not be empty"),
            ("payload", json!([1, 2]), "payload must be a JSON object"),
            ("kind", json!("crate"), "unknown kind `crate`"),
            (
                "createdAt",
                json!("yesterday"),
                "input contains invalid characters",
            ),
        ];
        for (field, value, reason) in cases {
            let mut bad = record("bad");
            bad[field] = value;
            let err = parse_body(&body(vec![record("ok"), bad, json!(7)])).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidBody);
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.message.starts_with("records[1]: "), "{}", err.message);
            assert!(err.message.contains(reason), "{} / {reason}", err.message);
        }
        let err = parse_body(b"{\"records\": 3}").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidBody);
    }

    #[test]
    fn a_record_over_the_size_limit_refuses_the_batch_by_its_index() {
        let mut big = record("big");
        big["payload"]["code"] = json!("x".repeat(MAX_SYNC_RECORD_BYTES));
        let err = parse_body(&body(vec![record("ok"), big])).unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(err.code, ErrorCode::PayloadTooLarge);
        assert!(err.message.starts_with("records[1]: "), "{}", err.message);
        assert!(
            err.message.contains(&MAX_SYNC_RECORD_BYTES.to_string()),
            "{}",
            err.message
        );
        // Just under the limit is accepted.
        let mut fits = record("fits");
        let room = MAX_SYNC_RECORD_BYTES - json_len(&fits) - 20;
        fits["payload"]["pad"] = json!("y".repeat(room));
        assert!(json_len(&fits) <= MAX_SYNC_RECORD_BYTES);
        assert_eq!(parse_body(&body(vec![fits])).unwrap().len(), 1);
    }

    #[test]
    fn json_len_is_the_compact_text_length() {
        let value = record("a\"b");
        assert_eq!(json_len(&value), value.to_string().len());
    }

    #[test]
    fn more_than_the_maximum_is_too_large() {
        let records = (0..=MAX_SYNC_RECORDS)
            .map(|i| record(&i.to_string()))
            .collect();
        let err = parse_body(&body(records)).unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(err.code, ErrorCode::PayloadTooLarge);
        let records = (0..MAX_SYNC_RECORDS)
            .map(|i| record(&i.to_string()))
            .collect();
        assert_eq!(parse_body(&body(records)).unwrap().len(), MAX_SYNC_RECORDS);
    }
}
