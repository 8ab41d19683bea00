"""The registry's HTTP API (FastAPI): routes per resource, dependencies in `deps`."""
