DROP TABLE ota_boards;
ALTER TABLE firmware_releases DROP COLUMN security_floor;
ALTER TABLE firmware_releases DROP COLUMN allow_downgrade;
