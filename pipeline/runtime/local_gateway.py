"""The gateway as ``run`` and ``serve`` deploy it on a local cluster (the one-command experience).

On a cluster the gateway is its own Serve application, deployed declaratively from the Serve config;
the pipeline never starts or shuts down Serve there. Locally, ``run`` deploys the same application
under the same name and removes only that application when it ends (it never shuts Serve down,
which would remove every application on a shared cluster).
"""

from __future__ import annotations

import logging

from ray import serve

from pipeline.config import Settings
from pipeline.gateway.serve import gateway_app, http_options

__all__ = ["APP_NAME", "deploy", "remove"]

log = logging.getLogger(__name__)
APP_NAME = "gateway"


def deploy(settings: Settings, conninfo: str) -> None:
    """Start Serve's proxy on the gateway's host and port and run the gateway application (1..2 replicas)."""
    serve.start(http_options=http_options(settings.gateway.host, settings.gateway.port))
    serve.run(gateway_app(settings, conninfo, min_replicas=1, max_replicas=2), name=APP_NAME, route_prefix="/")


def remove() -> None:
    """Delete the gateway application this process deployed (other Serve applications are left alone)."""
    try:
        serve.delete(APP_NAME)
    except Exception as exc:  # Serve is going away with the local cluster anyway; report and go on
        log.warning("could not delete the %s application: %s", APP_NAME, exc)
