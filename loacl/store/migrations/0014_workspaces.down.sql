DROP INDEX workspace_invites_workspace;
DROP TABLE workspace_invites;
DROP INDEX workspace_members_user;
DROP TABLE workspace_members;
DROP TABLE workspaces;
