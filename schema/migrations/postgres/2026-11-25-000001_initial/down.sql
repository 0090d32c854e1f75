DROP TABLE audit_log;
DROP TABLE commands;
DROP TABLE devices;
DROP TABLE users;
