"""PostgreSQL's migrations of the log's tables: the same numbers as SQLite's for the same
tables (``store.migrations``); the read tables have none here yet."""
