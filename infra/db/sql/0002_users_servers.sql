-- Users and the server inventory, as in the seed.
CREATE TABLE users (
    id            VARCHAR(36)  PRIMARY KEY,
    email         VARCHAR(255) NOT NULL UNIQUE,
    password_hash VARCHAR(255) NOT NULL,
    name          VARCHAR(255) NOT NULL,
    role          user_role    NOT NULL DEFAULT 'user',
    active        BOOLEAN      NOT NULL DEFAULT true,
    provider      auth_provider NOT NULL DEFAULT 'email',
    last_login_at TIMESTAMPTZ,
    created_at    TIMESTAMPTZ  NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE servers (
    id                 VARCHAR(36)     PRIMARY KEY,
    name               VARCHAR(255)    NOT NULL,
    hostname           VARCHAR(255)    NOT NULL UNIQUE,
    ip_address         VARCHAR(45),
    port               INTEGER         NOT NULL CHECK (port BETWEEN 1 AND 65535),
    username           VARCHAR(255)    NOT NULL,
    -- AES-256-GCM ciphertext with a key-version prefix; the key never enters the database.
    encrypted_password TEXT            NOT NULL,
    server_type        server_type     NOT NULL DEFAULT 'linux',
    server_category    server_category NOT NULL DEFAULT 'physical',
    is_online          BOOLEAN         NOT NULL DEFAULT false,
    created_at         TIMESTAMPTZ     NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX idx_servers_hostname_port ON servers (hostname, port);
