"""The web layer: the reference FastAPI service (``service``) and its middleware."""
