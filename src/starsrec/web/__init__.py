"""The HTTP API (FastAPI) and the explorer page with its read-only endpoints."""
