-- Read tables for owner accounts (projections of user.* and session.* events).
CREATE TABLE users (
    user_id           TEXT PRIMARY KEY,
    email             TEXT NOT NULL UNIQUE COLLATE NOCASE,  -- vetoes a second account
    name              TEXT,
    password_hash     TEXT NOT NULL,
    email_verified_at TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);

CREATE TABLE sessions (
    session_id     TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    refreshed_at   TEXT,
    expires_at     TEXT NOT NULL,
    revoked_at     TEXT,
    revoked_reason TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    issued_at  TEXT NOT NULL,
    used_at    TEXT
);
