"""Metrics and traces: what operators watch a running LOACL with."""
