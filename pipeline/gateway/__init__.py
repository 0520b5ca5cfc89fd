"""The REST gateway: a FastAPI app (``app``) and its Ray Serve hosting (``serve``)."""
