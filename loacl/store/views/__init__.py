"""Typed reads of the read tables: one query function per shape the services need.

Each module here owns the SQL of one area and returns frozen domain objects or msgspec structs,
decoded once; nothing above ``store`` sees a positional row or a JSON column.
"""
