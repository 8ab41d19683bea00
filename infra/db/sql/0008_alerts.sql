-- Alerts (`fleetpulse alerts`, README "Alerts"):
-- - alert_rules: the rules, managed through the registry API (admins write, users read). A
--   rule's `revision` grows with each edit; the evaluator starts a changed rule afresh.
-- - alert_state: the evaluator's state per rule and server (pending since, firing since, the
--   newest window it judged), written in the same transaction as its input position.
-- - alert_offsets: that position, the next offset per topic partition.
-- - alert_events: every firing and resolved event, once (`event_id` is derived from the
--   fingerprint, the status and when the alert started, so a replay writes nothing new); the
--   history the API reads, and the outbox of the topic, Alertmanager and the webhook: each
--   `*_at` says when that output took the event.
CREATE TABLE alert_rules (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        VARCHAR(100) NOT NULL,
    kind        VARCHAR(16)  NOT NULL CHECK (kind IN ('threshold', 'absence')),
    metric      VARCHAR(32),
    stat        VARCHAR(8),
    resolution  VARCHAR(8),
    op          VARCHAR(2),
    value       DOUBLE PRECISION,
    for_seconds INTEGER      NOT NULL CHECK (for_seconds >= 0),
    severity    VARCHAR(16)  NOT NULL,
    servers     VARCHAR(36)[],  -- NULL: every server
    revision    INTEGER      NOT NULL DEFAULT 1,
    created_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ  NOT NULL DEFAULT now()
);

CREATE TABLE alert_state (
    rule_id         BIGINT      NOT NULL,
    server_id       VARCHAR(36) NOT NULL,
    rule_revision   INTEGER     NOT NULL,
    state           VARCHAR(8)  NOT NULL CHECK (state IN ('pending', 'firing')),
    since           TIMESTAMPTZ NOT NULL,
    fired_at        TIMESTAMPTZ,
    last_window_end TIMESTAMPTZ,
    value           DOUBLE PRECISION,
    CONSTRAINT alert_state_pkey PRIMARY KEY (rule_id, server_id)
);

CREATE TABLE alert_offsets (
    topic       VARCHAR(249) NOT NULL,
    partition   INTEGER      NOT NULL,
    next_offset BIGINT       NOT NULL,
    CONSTRAINT alert_offsets_pkey PRIMARY KEY (topic, partition)
);

CREATE TABLE alert_events (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    event_id        UUID        PRIMARY KEY,
    fingerprint     VARCHAR(32) NOT NULL,
    rule_id         BIGINT      NOT NULL,
    server_id       VARCHAR(36) NOT NULL,
    status          VARCHAR(8)  NOT NULL CHECK (status IN ('firing', 'resolved')),
    starts_at       TIMESTAMPTZ NOT NULL,
    ends_at         TIMESTAMPTZ,
    body            JSONB       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at    TIMESTAMPTZ,
    alertmanager_at TIMESTAMPTZ,
    webhook_at      TIMESTAMPTZ
);
CREATE INDEX idx_alert_events_server ON alert_events (server_id, seq);
CREATE INDEX idx_alert_events_rule ON alert_events (rule_id, seq);
CREATE INDEX idx_alert_events_unpublished ON alert_events (seq) WHERE published_at IS NULL;
CREATE INDEX idx_alert_events_to_alertmanager ON alert_events (seq) WHERE alertmanager_at IS NULL;
CREATE INDEX idx_alert_events_to_webhook ON alert_events (seq) WHERE webhook_at IS NULL;

-- The grants, from here on as rows: each later migration adds its own rows instead of
-- redefining the function. `fleetpulse_grant_roles()` grants every row whose role exists; an
-- object the storage mode lacks (the partition functions under TimescaleDB) is passed over.
CREATE TABLE role_grants (
    role       NAME NOT NULL,
    privileges TEXT NOT NULL,
    objects    TEXT NOT NULL,
    CONSTRAINT role_grants_pkey PRIMARY KEY (role, objects)
);
INSERT INTO role_grants (role, privileges, objects) VALUES
    ('fleetpulse_sink', 'SELECT, INSERT, UPDATE',
        'metrics_snapshots, metrics_hourly, metrics_daily'),
    ('fleetpulse_sink', 'SELECT, INSERT, DELETE', 'late_samples'),
    ('fleetpulse_sink', 'SELECT', 'schema_migrations'),
    ('fleetpulse_sink', 'EXECUTE',
        'FUNCTION fleetpulse_ensure_partitions(regclass, text, timestamptz, timestamptz), '
        'fleetpulse_drop_partitions(regclass, timestamptz)'),
    ('fleetpulse_registry', 'SELECT, INSERT, UPDATE, DELETE',
        'users, servers, sessions, login_failures, alert_rules'),
    ('fleetpulse_registry', 'SELECT, INSERT, DELETE', 'server_status_history'),
    ('fleetpulse_registry', 'SELECT',
        'metrics_snapshots, metrics_hourly, metrics_daily, late_samples, alert_state, '
        'alert_events'),
    ('fleetpulse_alerts', 'SELECT', 'alert_rules, servers'),
    ('fleetpulse_alerts', 'SELECT, INSERT, UPDATE, DELETE', 'alert_state, alert_offsets'),
    ('fleetpulse_alerts', 'SELECT, INSERT, UPDATE', 'alert_events'),
    ('fleetpulse_reader', 'SELECT',
        'metrics_snapshots, metrics_hourly, metrics_daily, late_samples, '
        'server_status_history, alert_rules, alert_events');

CREATE OR REPLACE FUNCTION fleetpulse_grant_roles() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT * FROM role_grants ORDER BY role, objects LOOP
        CONTINUE WHEN to_regrole(g.role) IS NULL;
        BEGIN
            EXECUTE format('GRANT %s ON %s TO %I', g.privileges, g.objects, g.role);
        EXCEPTION WHEN undefined_function OR undefined_table THEN
            NULL;  -- not in this storage mode
        END;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION fleetpulse_grant_roles() FROM PUBLIC;

SELECT fleetpulse_grant_roles();
