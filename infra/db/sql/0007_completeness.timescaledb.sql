-- Completeness: what a series is missing, and why.
-- - late_samples: every raw sample the stream worker refused as late (past the lateness
--   horizon) and dead-lettered, one row per dead letter (the raw topic's partition and offset
--   are its key, so a letter read twice counts once). The sink writes them from
--   metrics.dlq.v1; the read path counts them per bucket, by the sample's own time.
-- - server_status_history: every online/offline change from metrics.status.v1, kept by the
--   registry; `event_at` is the event time it concerns (the first sample of an online spell, the
--   last one before an offline one). The read path names a bucket's gap `offline` from it.
CREATE TABLE late_samples (
    source_partition INTEGER     NOT NULL,
    source_offset    BIGINT      NOT NULL,
    server_id        VARCHAR(36) NOT NULL,
    "timestamp"      TIMESTAMPTZ NOT NULL,
    CONSTRAINT late_samples_pkey PRIMARY KEY (source_partition, source_offset)
);
CREATE INDEX idx_late_samples_server_time ON late_samples (server_id, "timestamp");

CREATE TABLE server_status_history (
    server_id  VARCHAR(36) NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    changed_at TIMESTAMPTZ NOT NULL,
    event_at   TIMESTAMPTZ NOT NULL,
    online     BOOLEAN     NOT NULL,
    CONSTRAINT server_status_history_pkey PRIMARY KEY (server_id, changed_at)
);
CREATE INDEX idx_server_status_history_at ON server_status_history (server_id, event_at);

-- The grants of migration 0005, and those of the two tables.
CREATE OR REPLACE FUNCTION fleetpulse_grant_roles() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regrole('fleetpulse_sink') IS NOT NULL THEN
        GRANT SELECT, INSERT, UPDATE ON metrics_snapshots, metrics_hourly, metrics_daily
            TO fleetpulse_sink;
        GRANT SELECT, INSERT, DELETE ON late_samples TO fleetpulse_sink;
        GRANT SELECT ON schema_migrations TO fleetpulse_sink;
    END IF;
    IF to_regrole('fleetpulse_registry') IS NOT NULL THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON users, servers, sessions, login_failures
            TO fleetpulse_registry;
        GRANT SELECT, INSERT, DELETE ON server_status_history TO fleetpulse_registry;
        GRANT SELECT ON metrics_snapshots, metrics_hourly, metrics_daily, late_samples
            TO fleetpulse_registry;
    END IF;
    IF to_regrole('fleetpulse_reader') IS NOT NULL THEN
        GRANT SELECT ON metrics_snapshots, metrics_hourly, metrics_daily, late_samples,
            server_status_history TO fleetpulse_reader;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION fleetpulse_grant_roles() FROM PUBLIC;

SELECT fleetpulse_grant_roles();
