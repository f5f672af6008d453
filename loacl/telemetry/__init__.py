"""Metrics: what operators watch a running LOACL with (traces are ``loacl.tracing``, apart,
because the store and the reply loop open spans and must not import what sits above them)."""
