-- One login role per service, each with what it needs and nothing more (README, "Database
-- roles"). The migrations run as the owner, who keeps every table; `fleetpulse stack up`
-- creates the login roles (as the cluster's superuser) and runs fleetpulse_grant_roles() again
-- after, so the order of the two does not matter. A cluster without those roles (the
-- TimescaleDB stand-in, a server of one's own) is migrated all the same: only the roles that
-- exist get grants.
--
-- No ALTER DEFAULT PRIVILEGES: partitions made later are reached through their parent table,
-- whose privileges are the ones checked, and a default for every table the owner creates would
-- also hand the registry's future tables to the sink and the reader.

-- Partition maintenance runs inside the sink, whose role can neither create nor drop a table:
-- both functions run as their owner (SECURITY DEFINER), only on partitioned tables of that
-- owner, with every name schema-qualified and a search_path a caller cannot put an object in
-- front of (pg_temp last). Only the sink may run them (EXECUTE is revoked from PUBLIC).
CREATE OR REPLACE FUNCTION fleetpulse_ensure_partitions(
    parent regclass, unit text, from_ts timestamptz, to_ts timestamptz
) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fmt    text := CASE unit WHEN 'day' THEN 'YYYYMMDD' WHEN 'month' THEN 'YYYYMM'
                             WHEN 'year' THEN 'YYYY' END;
    step   interval;
    nsp    text;
    base   text;
    lo     timestamp;  -- UTC wall time of the partition start
    part   text;
    made   integer := 0;
BEGIN
    IF fmt IS NULL THEN
        RAISE EXCEPTION 'unit must be day, month or year, not %', unit;
    END IF;
    step := ('1 ' || unit)::interval;
    SELECT n.nspname, c.relname INTO nsp, base
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = parent AND c.relkind = 'p' AND c.relowner = current_user::regrole;
    IF base IS NULL THEN
        RAISE EXCEPTION '% is not a partitioned table of %', parent, current_user;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('fleetpulse_ensure_partitions'));
    lo := date_trunc(unit, from_ts AT TIME ZONE 'UTC');
    WHILE (lo AT TIME ZONE 'UTC') < to_ts LOOP
        part := format('%s_p%s', base, to_char(lo, fmt));
        IF to_regclass(format('%I.%I', nsp, part)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                nsp, part, nsp, base, (lo AT TIME ZONE 'UTC'), ((lo + step) AT TIME ZONE 'UTC'));
            made := made + 1;
        END IF;
        lo := lo + step;
    END LOOP;
    RETURN made;
END
$$;

-- Drops the partitions of `parent` whose upper bound is at or before `cutoff`; returns their
-- names. The bounds are read back in UTC/ISO, the settings they are printed with here.
CREATE FUNCTION fleetpulse_drop_partitions(parent regclass, cutoff timestamptz)
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    part  record;
    upper timestamptz;
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_class c
        WHERE c.oid = parent AND c.relkind = 'p' AND c.relowner = current_user::regrole
    ) THEN
        RAISE EXCEPTION '% is not a partitioned table of %', parent, current_user;
    END IF;
    FOR part IN
        SELECT c.oid::regclass AS rel, c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = parent
        ORDER BY c.relname
    LOOP
        upper := substring(part.bound FROM 'TO \(''([^'']+)''\)')::timestamptz;
        IF upper IS NOT NULL AND upper <= cutoff THEN
            EXECUTE format('DROP TABLE %s', part.rel);
            RETURN NEXT part.relname;
        END IF;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION fleetpulse_ensure_partitions(regclass, text, timestamptz, timestamptz)
    FROM PUBLIC;
REVOKE ALL ON FUNCTION fleetpulse_drop_partitions(regclass, timestamptz) FROM PUBLIC;

-- What each service role may do, granted to those that exist. Safe to run again.
-- - fleetpulse_sink: upserts into the metric tables (INSERT … ON CONFLICT DO UPDATE needs
--   SELECT, and so does its COPY staging table, made LIKE the target), reads which storage mode
--   the migrations chose, and maintains partitions through the two functions above.
-- - fleetpulse_registry: its own tables, and reads of the metric tables (the metrics API).
-- - fleetpulse_reader: reads of the metric tables, for dashboards.
CREATE FUNCTION fleetpulse_grant_roles() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regrole('fleetpulse_sink') IS NOT NULL THEN
        GRANT SELECT, INSERT, UPDATE ON metrics_snapshots, metrics_hourly, metrics_daily
            TO fleetpulse_sink;
        GRANT SELECT ON schema_migrations TO fleetpulse_sink;
        GRANT EXECUTE ON FUNCTION
            fleetpulse_ensure_partitions(regclass, text, timestamptz, timestamptz),
            fleetpulse_drop_partitions(regclass, timestamptz)
            TO fleetpulse_sink;
    END IF;
    IF to_regrole('fleetpulse_registry') IS NOT NULL THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON users, servers, sessions, login_failures
            TO fleetpulse_registry;
        GRANT SELECT ON metrics_snapshots, metrics_hourly, metrics_daily TO fleetpulse_registry;
    END IF;
    IF to_regrole('fleetpulse_reader') IS NOT NULL THEN
        GRANT SELECT ON metrics_snapshots, metrics_hourly, metrics_daily TO fleetpulse_reader;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION fleetpulse_grant_roles() FROM PUBLIC;

SELECT fleetpulse_grant_roles();
