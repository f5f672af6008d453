DROP TABLE refresh_tokens;
DROP INDEX sessions_user;
DROP TABLE sessions;
DROP TABLE users;
