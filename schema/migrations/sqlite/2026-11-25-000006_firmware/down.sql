DROP TABLE firmware_releases;
