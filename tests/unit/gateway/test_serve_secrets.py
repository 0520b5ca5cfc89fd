"""Secrets never become Serve bind arguments (Ray keeps those in its cluster state); replicas read them."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest

from pipeline.config import GatewaySettings, RaySettings, Settings
from pipeline.errors import ConfigError
from pipeline.gateway.serve import build, gateway_app, replica_settings

URL = "postgresql://gateway:db-password-123@db.example/telemetry"
REDIS = "redis://:redis-password-456@cache.example/0"
TOKENS = "read:" + "t" * 24 + ",metrics:" + "u" * 24


def bind_args(app: object) -> bytes:
    deployment = app._bound_deployment  # type: ignore[attr-defined]
    return pickle.dumps((deployment.init_args, deployment.init_kwargs))


def test_a_local_app_binds_a_private_file_not_the_secrets(tmp_path: Path) -> None:
    settings = Settings(gateway=GatewaySettings(redis_url=REDIS, api_tokens=TOKENS, default_limit=7))
    app = gateway_app(settings, URL)
    blob = bind_args(app)
    for secret in (b"db-password-123", b"redis-password-456", b"t" * 24, b"u" * 24):
        assert secret not in blob
    gateway, _, _, secrets_file, config, cluster = app._bound_deployment.init_args  # type: ignore[attr-defined]
    assert stat.S_IMODE(os.stat(secrets_file).st_mode) == 0o600 and cluster is False
    conninfo, replica, _ = replica_settings(gateway, secrets_file, config)
    os.unlink(secrets_file)
    assert conninfo == URL and replica.default_limit == 7
    assert replica.redis_url is not None and replica.redis_url.get_secret_value() == REDIS
    assert replica.tokens()["read"] == (b"t" * 24,)


def test_a_serve_config_app_reads_everything_from_the_replica_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", URL)
    monkeypatch.setenv("PIPELINE_GATEWAY__API_TOKENS", TOKENS)
    app = build({"min_replicas": 1})
    assert b"db-password-123" not in bind_args(app) and b"t" * 24 not in bind_args(app)
    gateway, _, _, secrets_file, config, cluster = app._bound_deployment.init_args  # type: ignore[attr-defined]
    assert secrets_file is None and cluster is True
    conninfo, replica, _ = replica_settings(gateway, secrets_file, config)
    assert conninfo == URL and replica.tokens()["metrics"] == (b"u" * 24,)
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        build({"database_url": URL})


def test_a_cluster_gateway_without_tokens_does_not_deploy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", URL)
    monkeypatch.delenv("PIPELINE_GATEWAY__API_TOKENS", raising=False)
    with pytest.raises(ConfigError, match="PIPELINE_GATEWAY__AUTH=off"):
        build({})
    with pytest.raises(ConfigError, match="API tokens"):
        gateway_app(Settings(ray=RaySettings(address="ray://head:10001")), URL)
    monkeypatch.setenv("PIPELINE_GATEWAY__AUTH", "off")
    build({})
