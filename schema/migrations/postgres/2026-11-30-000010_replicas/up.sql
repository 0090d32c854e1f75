-- Replicas (issue 17): which server process holds which device's socket, until when. A replica
-- renews the leases of its rows by heartbeat; a row whose lease has passed belongs to a replica
-- that died, and any replica may delete it and mark its device OFFLINE.
CREATE TABLE device_presence (
    device_id  TEXT PRIMARY KEY NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    replica_id TEXT NOT NULL,
    expires_at TIMESTAMP NOT NULL
);
-- The heartbeat renews, and a starting replica clears, the rows of one replica.
CREATE INDEX device_presence_replica_idx ON device_presence (replica_id);
-- Expiry reads by time alone.
CREATE INDEX device_presence_expires_idx ON device_presence (expires_at);
