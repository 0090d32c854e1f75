DROP INDEX device_presence_expires_idx;
DROP INDEX device_presence_replica_idx;
DROP TABLE device_presence;
