-- Accounts and login sessions. Authoritative on the primary; shards carry the same (empty) tables so every database
-- has one schema. Ids are BIGINT: the protocol's player id is a uint64.

CREATE TABLE players (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username       TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_login     TIMESTAMPTZ,
    is_banned      BOOLEAN NOT NULL DEFAULT FALSE,
    ban_reason     TEXT,
    ban_expires    TIMESTAMPTZ,
    failed_logins  INT NOT NULL DEFAULT 0,
    locked_until   TIMESTAMPTZ
);

-- Usernames are unique regardless of case; logins look them up by lower(username), which uses this index.
CREATE UNIQUE INDEX players_username_lower_key ON players (lower(username));

CREATE TABLE sessions (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    player_id   BIGINT NOT NULL REFERENCES players (id) ON DELETE CASCADE,
    token_hash  BYTEA NOT NULL CHECK (octet_length(token_hash) = 32), -- SHA-256 of the token; the token is never stored
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    ip_address  TEXT,
    user_agent  TEXT
);

CREATE INDEX idx_sessions_token_hash ON sessions (token_hash);
CREATE INDEX idx_sessions_expires_at ON sessions (expires_at);
CREATE INDEX idx_sessions_player_id ON sessions (player_id);
