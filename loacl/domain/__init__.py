"""The domain: events, state, decisions and errors. Standard library only."""
