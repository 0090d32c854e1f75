//! The edge → factory sync body, `POST /api/v1/sync`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use chrono::{DateTime, Utc};

/// Most records one `POST /api/v1/sync` may carry; a larger batch is refused whole (413).
pub const MAX_SYNC_BATCH_RECORDS: usize = 1000;

/// Largest record one sync may carry, measured as its JSON (`id`, `kind`, `companyId`,
/// `payload`, `createdAt`); a larger one refuses its batch (413). Production records are a
/// few hundred bytes: this bounds what one device can make the server store and queue for
/// the cloud.
pub const MAX_SYNC_RECORD_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Bottle,
    Batch,
    Pallet,
    BatchFixate,
}

impl RecordKind {
    pub const ALL: [RecordKind; 4] = [
        RecordKind::Bottle,
        RecordKind::Batch,
        RecordKind::Pallet,
        RecordKind::BatchFixate,
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SyncRecord {
    pub id: String,
    pub kind: RecordKind,
    pub company_id: String,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncRequest {
    pub records: Vec<SyncRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncResponse {
    pub accepted: u64,
    pub duplicates: u64,
}
