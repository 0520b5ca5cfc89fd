"""Ray token authentication for clients of an existing cluster (no Ray import here, on purpose)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["use_token_auth"]


def use_token_auth() -> None:
    """Make this process present Ray's auth token when it connects to an existing cluster.

    Ray 2.60 turns token mode on for a cluster that ``ray.init()`` starts locally, but a client that
    connects to an address only presents a token when ``RAY_AUTH_MODE=token``. Ray reads that at
    import, so call this before ``import ray``. If a token is at hand (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and no mode was chosen, choose token mode;
    an explicit ``RAY_AUTH_MODE`` is always respected.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    if (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").exists()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"
