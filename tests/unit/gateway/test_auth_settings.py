"""Token settings, the cluster refusal and the local token (no database, no Ray)."""

from __future__ import annotations

import pytest

from pipeline.config import GatewaySettings, RaySettings, Settings
from pipeline.errors import ConfigError
from pipeline.gateway.auth import local_token, require_tokens


def test_tokens_are_read_from_the_environment_by_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_GATEWAY__API_TOKENS", "read:" + "a" * 20 + ", metrics:" + "b" * 20)
    settings = Settings()
    assert settings.gateway.tokens() == {"read": (b"a" * 20,), "metrics": (b"b" * 20,)}
    assert "a" * 20 not in repr(settings.gateway)  # a SecretStr


@pytest.mark.parametrize("raw", ["write:" + "a" * 20, "a" * 20, "read:short"])
def test_a_bad_token_pair_fails_at_start_up_without_echoing_the_token(raw: str) -> None:
    with pytest.raises(ValueError, match="pair 1") as info:
        GatewaySettings(api_tokens=raw)
    assert "a" * 20 not in str(info.value)


def test_yaml_off_is_auth_off() -> None:
    assert GatewaySettings(auth=False).auth == "off"  # type: ignore[arg-type]


def test_a_cluster_gateway_without_tokens_refuses_to_start() -> None:
    cluster = Settings(ray=RaySettings(address="ray://head:10001"))
    with pytest.raises(ConfigError, match="PIPELINE_GATEWAY__API_TOKENS") as info:
        require_tokens(cluster, "on ray://head:10001")
    assert info.value.setting == "gateway.api_tokens"
    require_tokens(Settings(gateway=GatewaySettings(auth="off")), "x")
    require_tokens(Settings(gateway=GatewaySettings(api_tokens="read:" + "t" * 20)), "x")


def test_a_local_run_gets_a_token_for_both_scopes() -> None:
    made = local_token(Settings())
    assert made is not None
    tokens = made.settings.gateway.tokens()
    assert tokens["read"] == tokens["metrics"] == (made.token.encode(),) and len(made.token) >= 16
    assert f"Authorization: Bearer {made.token}" in made.hint() and "/api/v1/gpus" in made.hint()
    assert local_token(made.settings) is None
    assert local_token(Settings(gateway=GatewaySettings(auth="off"))) is None


def test_the_start_up_error_names_the_variable_and_not_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_GATEWAY__API_TOKENS", "read:" + "s" * 20 + ",oops")
    with pytest.raises(ConfigError, match="PIPELINE_GATEWAY__API_TOKENS") as info:
        Settings.load(None)
    assert "s" * 20 not in str(info.value)
