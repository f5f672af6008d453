"""Use cases: load state, decide, append events."""
