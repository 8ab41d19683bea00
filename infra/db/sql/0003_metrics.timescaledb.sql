-- Metric tables on TimescaleDB: hypertables with 1-day chunks for 5 s rows, compression of
-- chunks older than 7 days (segmented by server), 30-day retention on 5 s data, installed as
-- TimescaleDB background policies. Rows are keyed by (server_id, time): a hypertable cannot
-- have a unique key without its time column, so the seed's BIGSERIAL id is not kept. The
-- primary key's index is the seed's idx_metrics_server_time.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE metrics_snapshots (
    server_id        VARCHAR(36)      NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    "timestamp"      TIMESTAMPTZ      NOT NULL,
    -- 5 s window averages under the seed's names, with the window's min and max beside.
    cpu_usage        DOUBLE PRECISION NOT NULL,
    memory_usage     DOUBLE PRECISION NOT NULL,
    disk_usage       DOUBLE PRECISION NOT NULL,
    cpu_usage_min    DOUBLE PRECISION NOT NULL,
    cpu_usage_max    DOUBLE PRECISION NOT NULL,
    memory_usage_min DOUBLE PRECISION NOT NULL,
    memory_usage_max DOUBLE PRECISION NOT NULL,
    disk_usage_min   DOUBLE PRECISION NOT NULL,
    disk_usage_max   DOUBLE PRECISION NOT NULL,
    sample_count     SMALLINT         NOT NULL CHECK (sample_count > 0),
    -- Bytes received / sent during the window.
    network_rx       BIGINT           NOT NULL CHECK (network_rx >= 0),
    network_tx       BIGINT           NOT NULL CHECK (network_tx >= 0),
    processes        JSONB            NOT NULL,
    CONSTRAINT idx_metrics_server_time PRIMARY KEY (server_id, "timestamp")
);
SELECT create_hypertable('metrics_snapshots', by_range('timestamp', INTERVAL '1 day'),
                         create_default_indexes => false);
ALTER TABLE metrics_snapshots SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'server_id',
    timescaledb.compress_orderby = '"timestamp" DESC'
);
SELECT add_compression_policy('metrics_snapshots', INTERVAL '7 days');
SELECT add_retention_policy('metrics_snapshots', INTERVAL '30 days');

CREATE TABLE metrics_hourly (
    server_id        VARCHAR(36)      NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    bucket           TIMESTAMPTZ      NOT NULL,
    sample_count     INTEGER          NOT NULL CHECK (sample_count > 0),
    cpu_usage_avg    DOUBLE PRECISION NOT NULL,
    cpu_usage_min    DOUBLE PRECISION NOT NULL,
    cpu_usage_max    DOUBLE PRECISION NOT NULL,
    memory_usage_avg DOUBLE PRECISION NOT NULL,
    memory_usage_min DOUBLE PRECISION NOT NULL,
    memory_usage_max DOUBLE PRECISION NOT NULL,
    disk_usage_avg   DOUBLE PRECISION NOT NULL,
    disk_usage_min   DOUBLE PRECISION NOT NULL,
    disk_usage_max   DOUBLE PRECISION NOT NULL,
    network_rx       BIGINT           NOT NULL CHECK (network_rx >= 0),
    network_tx       BIGINT           NOT NULL CHECK (network_tx >= 0),
    CONSTRAINT metrics_hourly_pkey PRIMARY KEY (server_id, bucket)
);
-- Rollups are small: a month per chunk for hourly rows, a year for daily rows.
SELECT create_hypertable('metrics_hourly', by_range('bucket', INTERVAL '30 days'),
                         create_default_indexes => false);
ALTER TABLE metrics_hourly SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'server_id',
    timescaledb.compress_orderby = 'bucket DESC'
);
SELECT add_compression_policy('metrics_hourly', INTERVAL '60 days');
SELECT add_retention_policy('metrics_hourly', INTERVAL '400 days');

CREATE TABLE metrics_daily (
    server_id        VARCHAR(36)      NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    bucket           TIMESTAMPTZ      NOT NULL,
    sample_count     INTEGER          NOT NULL CHECK (sample_count > 0),
    cpu_usage_avg    DOUBLE PRECISION NOT NULL,
    cpu_usage_min    DOUBLE PRECISION NOT NULL,
    cpu_usage_max    DOUBLE PRECISION NOT NULL,
    memory_usage_avg DOUBLE PRECISION NOT NULL,
    memory_usage_min DOUBLE PRECISION NOT NULL,
    memory_usage_max DOUBLE PRECISION NOT NULL,
    disk_usage_avg   DOUBLE PRECISION NOT NULL,
    disk_usage_min   DOUBLE PRECISION NOT NULL,
    disk_usage_max   DOUBLE PRECISION NOT NULL,
    network_rx       BIGINT           NOT NULL CHECK (network_rx >= 0),
    network_tx       BIGINT           NOT NULL CHECK (network_tx >= 0),
    CONSTRAINT metrics_daily_pkey PRIMARY KEY (server_id, bucket)
);
SELECT create_hypertable('metrics_daily', by_range('bucket', INTERVAL '365 days'),
                         create_default_indexes => false);
