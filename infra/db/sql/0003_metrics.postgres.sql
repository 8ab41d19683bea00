-- Metric tables on plain PostgreSQL: range-partitioned by time, one partition per day for
-- 5 s rows (per month for hourly, per year for daily rows). Rows are keyed by
-- (server_id, time): a hypertable/partitioned table cannot have a unique key without its
-- time column, so the seed's BIGSERIAL id is not kept. The primary key's index is the seed's
-- idx_metrics_server_time.

-- Creates the missing partitions of `parent` covering [from_ts, to_ts), aligned to `unit`
-- ('day', 'month' or 'year') in UTC, named <parent>_p<start>. Returns how many it created.
-- Safe to call from several processes at once.
CREATE FUNCTION fleetpulse_ensure_partitions(
    parent regclass, unit text, from_ts timestamptz, to_ts timestamptz
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    step   interval := ('1 ' || unit)::interval;
    fmt    text := CASE unit WHEN 'day' THEN 'YYYYMMDD' WHEN 'month' THEN 'YYYYMM'
                             WHEN 'year' THEN 'YYYY' END;
    base   text;
    lo     timestamp;  -- UTC wall time of the partition start
    part   text;
    made   integer := 0;
BEGIN
    IF fmt IS NULL THEN
        RAISE EXCEPTION 'unit must be day, month or year, not %', unit;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('fleetpulse_ensure_partitions'));
    SELECT c.relname INTO base FROM pg_class c WHERE c.oid = parent;
    lo := date_trunc(unit, from_ts AT TIME ZONE 'UTC');
    WHILE (lo AT TIME ZONE 'UTC') < to_ts LOOP
        part := format('%s_p%s', base, to_char(lo, fmt));
        IF to_regclass(quote_ident(part)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                part, parent, (lo AT TIME ZONE 'UTC'), ((lo + step) AT TIME ZONE 'UTC'));
            made := made + 1;
        END IF;
        lo := lo + step;
    END LOOP;
    RETURN made;
END
$$;

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
) PARTITION BY RANGE ("timestamp");

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
) PARTITION BY RANGE (bucket);

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
) PARTITION BY RANGE (bucket);

-- Partitions for the retention window behind and a week ahead; the maintenance job keeps
-- creating them ahead and drops those past retention.
SELECT fleetpulse_ensure_partitions('metrics_snapshots', 'day', now() - interval '30 days', now() + interval '7 days');
SELECT fleetpulse_ensure_partitions('metrics_hourly', 'month', now() - interval '400 days', now() + interval '62 days');
SELECT fleetpulse_ensure_partitions('metrics_daily', 'year', now() - interval '2 years', now() + interval '1 year');
