-- The registry service: sessions, failed-login tracking, and when a server was last seen.

-- Bearer sessions. Only the SHA-256 of the token is stored: a copy of this table lets no one in.
CREATE TABLE sessions (
    token_hash BYTEA        PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    user_id    VARCHAR(36)  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ  NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ  NOT NULL
);
CREATE INDEX idx_sessions_user ON sessions (user_id);
CREATE INDEX idx_sessions_expires ON sessions (expires_at);

-- Failed logins per (lower-cased) e-mail, known or not, so every registry worker sees the same
-- count and an unknown address is treated like a known one.
CREATE TABLE login_failures (
    email           VARCHAR(255) PRIMARY KEY,
    failures        INTEGER      NOT NULL,
    first_failed_at TIMESTAMPTZ  NOT NULL,
    locked_until    TIMESTAMPTZ
);

-- metrics.status.v1 keeps these current: the latest event seen and the time of the status change
-- applied last (older or replayed changes are ignored).
ALTER TABLE servers ADD COLUMN last_seen_at TIMESTAMPTZ;
ALTER TABLE servers ADD COLUMN status_changed_at TIMESTAMPTZ;
