"""Continuous replication of the database with Litestream: the replica's URL and the config
LOACL generates from it (``urls``), the ``litestream`` binary and its commands
(``litestream``), where the replica has got to (``status``), restoring from it (``restore``),
and the supervisor that runs Litestream beside ``loacl serve`` (``supervisor``)."""
