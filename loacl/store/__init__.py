"""Persistence: SQLite, migrations, the event codec, the event store and projections."""
