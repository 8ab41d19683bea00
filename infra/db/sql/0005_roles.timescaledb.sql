-- One login role per service, each with what it needs and nothing more (README, "Database
-- roles"). The migrations run as the owner, who keeps every table; `fleetpulse stack up`
-- creates the login roles (as the cluster's superuser) and runs fleetpulse_grant_roles() again
-- after, so the order of the two does not matter. A cluster without those roles (the
-- TimescaleDB stand-in, a server of one's own) is migrated all the same: only the roles that
-- exist get grants.
--
-- No ALTER DEFAULT PRIVILEGES: TimescaleDB gives each new chunk its hypertable's privileges
-- (and a GRANT on a hypertable reaches its chunks), and a default for every table the owner
-- creates would also hand the registry's future tables to the sink and the reader. Retention
-- and compression are TimescaleDB's background jobs, run as the owner: the sink's maintenance
-- only reads timescaledb_information.jobs, which every role may.

-- What each service role may do, granted to those that exist. Safe to run again.
-- - fleetpulse_sink: upserts into the metric tables (INSERT … ON CONFLICT DO UPDATE needs
--   SELECT, and so does its COPY staging table, made LIKE the target), and reads which storage
--   mode the migrations chose.
-- - fleetpulse_registry: its own tables, and reads of the metric tables (the metrics API).
-- - fleetpulse_reader: reads of the metric tables, for dashboards.
CREATE FUNCTION fleetpulse_grant_roles() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regrole('fleetpulse_sink') IS NOT NULL THEN
        GRANT SELECT, INSERT, UPDATE ON metrics_snapshots, metrics_hourly, metrics_daily
            TO fleetpulse_sink;
        GRANT SELECT ON schema_migrations TO fleetpulse_sink;
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
