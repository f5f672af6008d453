-- Workspaces, their members and invites (projections of workspace.* and member.* events).
-- Every account has a personal workspace whose id is the account's own id: the owner_id that
-- assistants, widgets, conversations, webhooks and usage rows carry is a workspace id. Accounts
-- made before this migration get theirs here, exactly as user.registered makes it on replay.
CREATE TABLE workspaces (
    workspace_id TEXT PRIMARY KEY,
    name         TEXT,              -- NULL: a personal workspace, named after its account
    personal     INTEGER NOT NULL,  -- 1: implied by user.registered (id = the account's)
    created_by   TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL,
    deleted_at   TEXT
);

CREATE TABLE workspace_members (
    workspace_id TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    role         TEXT NOT NULL,     -- owner | admin | agent
    joined_at    TEXT NOT NULL,
    PRIMARY KEY (workspace_id, user_id)
) WITHOUT ROWID;
CREATE INDEX workspace_members_user ON workspace_members (user_id);

CREATE TABLE workspace_invites (
    invite_id    TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    email        TEXT NOT NULL,
    role         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    invited_by   TEXT NOT NULL,
    created_seq  INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    accepted_at  TEXT,
    accepted_by  TEXT,
    revoked_at   TEXT
);
CREATE INDEX workspace_invites_workspace ON workspace_invites (workspace_id, created_seq);

INSERT INTO workspaces (workspace_id, name, personal, created_by, created_at, updated_at)
    SELECT user_id, NULL, 1, user_id, created_at, created_at FROM users;
INSERT INTO workspace_members (workspace_id, user_id, role, joined_at)
    SELECT user_id, user_id, 'owner', created_at FROM users;
