"""HTTP and WebSocket adapters (Starlette)."""
