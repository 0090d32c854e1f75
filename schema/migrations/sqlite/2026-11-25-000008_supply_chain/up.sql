-- The signed manifest's rollback fields, stored with the release so that every
-- update_firmware carries what the signature covers: the downgrade permission and the
-- security floor (NULL: none, the original manifest).
ALTER TABLE firmware_releases ADD COLUMN allow_downgrade BOOLEAN NOT NULL DEFAULT 0;
ALTER TABLE firmware_releases ADD COLUMN security_floor BIGINT;

-- Boards that may fetch a project's firmware on the OTA routes (`/firmware/…`): a board
-- names itself in X-Device-ID, which must be its token's subject, and must be listed here
-- with fw_access for the project, unless the server runs with --ota-legacy-boards.
-- production_line_id, when given, puts its downloads under that line's download budget.
CREATE TABLE ota_boards (
    project            TEXT NOT NULL,
    device_id          TEXT NOT NULL,
    fw_access          BOOLEAN NOT NULL,
    production_line_id TEXT,
    created_at         TIMESTAMP NOT NULL,
    updated_at         TIMESTAMP NOT NULL,
    PRIMARY KEY (project, device_id)
);
