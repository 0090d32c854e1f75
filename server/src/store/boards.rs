//! Boards listed per OTA project (`ota_boards`): who may download a project's firmware on the
//! board routes, and which line's download budget a board counts against.

use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::ota::OtaBoard;
use protocol::rest::Page;
use schema::schema::ota_boards;

use crate::store::db::DbConnection;
use crate::store::error::{ErrorCode, StoreError, StoreResult};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = ota_boards)]
pub struct BoardRow {
    pub project: String,
    pub device_id: String,
    pub fw_access: bool,
    pub production_line_id: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

impl BoardRow {
    pub fn to_api(&self) -> OtaBoard {
        OtaBoard {
            project: self.project.clone(),
            device_id: self.device_id.clone(),
            fw_access: self.fw_access,
            production_line_id: self.production_line_id.clone(),
            created_at: self.created_at.and_utc(),
            updated_at: self.updated_at.and_utc(),
        }
    }
}

pub fn not_found() -> StoreError {
    StoreError::not_found(
        ErrorCode::BoardNotFound,
        "no such board is listed for this project",
    )
}

pub fn find(
    conn: &mut DbConnection,
    project: &str,
    device_id: &str,
) -> StoreResult<Option<BoardRow>> {
    Ok(ota_boards::table
        .find((project, device_id))
        .select(BoardRow::as_select())
        .first(conn)
        .optional()?)
}

/// Lists the board or changes its access and line; answers the row as stored.
pub fn put(
    conn: &mut DbConnection,
    project: &str,
    device_id: &str,
    fw_access: bool,
    production_line_id: Option<String>,
) -> StoreResult<BoardRow> {
    let now = Utc::now().naive_utc();
    let changed = diesel::update(ota_boards::table.find((project, device_id)))
        .set((
            ota_boards::fw_access.eq(fw_access),
            ota_boards::production_line_id.eq(production_line_id.clone()),
            ota_boards::updated_at.eq(now),
        ))
        .execute(conn)?;
    if changed == 0 {
        diesel::insert_into(ota_boards::table)
            .values(&BoardRow {
                project: project.to_owned(),
                device_id: device_id.to_owned(),
                fw_access,
                production_line_id,
                created_at: now,
                updated_at: now,
            })
            .execute(conn)?;
    }
    find(conn, project, device_id)?.ok_or_else(not_found)
}

/// Takes the board off the project's list; 404 when it was not on it.
pub fn delete(conn: &mut DbConnection, project: &str, device_id: &str) -> StoreResult<()> {
    let n = diesel::delete(ota_boards::table.find((project, device_id))).execute(conn)?;
    if n == 0 {
        return Err(not_found());
    }
    Ok(())
}

/// One page of a project's boards, by device id.
pub fn page(
    conn: &mut DbConnection,
    project: &str,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<OtaBoard>> {
    let total: i64 = ota_boards::table
        .filter(ota_boards::project.eq(project))
        .count()
        .get_result(conn)?;
    let rows: Vec<BoardRow> = ota_boards::table
        .filter(ota_boards::project.eq(project))
        .order(ota_boards::device_id.asc())
        .limit(limit)
        .offset(offset)
        .select(BoardRow::as_select())
        .load(conn)?;
    Ok(Page {
        items: rows.iter().map(BoardRow::to_api).collect(),
        total,
    })
}
