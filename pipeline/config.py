"""Settings: one model built from small sub-models.

Sources, strongest first: explicit overrides (command-line flags), environment variables
(``PIPELINE_<SECTION>__<KEY>``, plus the conventional ``DATABASE_URL``, ``REDIS_URL`` and
``RAY_ADDRESS``), an optional YAML file (``--config``), then the defaults below. Only entrypoints
build settings; everything else receives the sub-model it needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pipeline.errors import ConfigError

__all__ = [
    "AttributionSettings",
    "CollectorSettings",
    "DatabaseSettings",
    "GatewaySettings",
    "QueueSettings",
    "RaySettings",
    "ScalingSettings",
    "Settings",
    "StorageSettings",
    "StreamerSettings",
    "default_data_dir",
]

ENV_PREFIX = "PIPELINE_"
MiB = 1 << 20
GiB = 1 << 30


def default_data_dir() -> Path:
    """Where local state (the embedded database) lives unless configured."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "gpu-telemetry"


class DatabaseSettings(BaseModel):
    """PostgreSQL: a URL, or an embedded server under ``embedded_dir``."""

    model_config = ConfigDict(extra="forbid")

    url: SecretStr | None = None
    embedded_dir: Path = Field(default_factory=lambda: default_data_dir() / "postgres")
    connect_timeout_s: float = Field(5.0, gt=0)
    # Sessions of the write path: locks of a half-open connection are freed within seconds.
    idle_in_transaction_timeout_s: float = Field(10.0, gt=0)
    lock_timeout_s: float = Field(3.0, gt=0)
    statement_timeout_s: float = Field(120.0, gt=0)
    keepalives_idle_s: int = Field(10, ge=1)
    pool_min: int = Field(1, ge=0)
    pool_max: int = Field(8, ge=1)


class QueueSettings(BaseModel):
    """The topic, its brokers, budgets and persistence."""

    model_config = ConfigDict(extra="forbid")

    partitions: int = Field(16, ge=1, le=4096)
    brokers: int = Field(1, ge=1, le=256)
    partition_budget_bytes: int = Field(16 * MiB, ge=64 * 1024)  # uncommitted bytes before producers wait
    group: str = Field("telemetry-collectors", min_length=1)
    session_timeout_s: float = Field(10.0, gt=0)
    # Deadline of one call to a broker; a broker away longer is waited out (callers retry), never fatal.
    call_timeout_s: float = Field(120.0, gt=0)
    dir: Path | None = None
    # Disk, per partition. The defaults fit the smallest overlay volume: dev's 5 GiB claim holds all
    # 16 partitions of its one broker (16 x 256 MiB = 4 GiB); staging's 20 GiB and prod's 50 GiB
    # claims hold 6 and 4 partitions each. Segments are small enough for retention to free space
    # a quarter budget at a time.
    segment_bytes: int = Field(64 * MiB, ge=1 * MiB)
    retention_s: float = Field(7 * 24 * 3600.0, gt=0)
    retention_bytes: int | None = Field(128 * MiB, ge=1 * MiB)  # committed data kept, besides retention_s
    disk_budget_bytes: int | None = Field(256 * MiB, ge=1 * MiB)  # producers wait when it is full
    fsync: bool = True  # fsync every append before acknowledging it (with dir)
    # Replication (docs/architecture.md, "Replicated partitions"): each partition on this many brokers
    # (a leader and followers on different nodes); a flush is acknowledged once `min_insync` of them
    # hold it. 1 keeps the single-copy path. An election needs `replication_factor - min_insync + 1`
    # live replicas, producing needs `min_insync`: 3 and 2 tolerate one broker lost for both.
    replication_factor: int = Field(1, ge=1, le=7)
    min_insync: int = Field(1, ge=1, le=7)
    failover_s: float = Field(3.0, gt=0)  # a leader silent this long is replaced by the supervisor
    replica_lag_s: float = Field(10.0, gt=0)  # a follower not caught up for this long leaves the in-sync set

    @model_validator(mode="after")
    def _replication(self) -> QueueSettings:
        if self.min_insync > self.replication_factor:
            raise ValueError(
                f"min_insync ({self.min_insync}) exceeds replication_factor ({self.replication_factor}) "
                "[PIPELINE_QUEUE__MIN_INSYNC]"
            )
        if self.replication_factor > self.brokers:
            raise ValueError(
                f"replication_factor ({self.replication_factor}) needs at least as many brokers "
                f"(queue.brokers is {self.brokers}) [PIPELINE_QUEUE__REPLICATION_FACTOR, PIPELINE_QUEUE__BROKERS]"
            )
        return self


class StreamerSettings(BaseModel):
    """Streamers: what they read and how fast.

    ``interval_s`` is the time between passes over the source (one pass = one scrape of the fleet);
    0 streams as fast as possible. ``batch_rows`` caps the rows of one published message.
    ``source`` picks what streamers read; ``auto`` means scrape targets if any are given, else the
    CSV if given, else a synthetic fleet. Streamers split ``scrape`` targets (plus those listed in
    ``scrape_file``, re-read when it changes) between them.
    """

    model_config = ConfigDict(extra="forbid")

    count: int = Field(1, ge=0, le=1024)
    source: Literal["auto", "csv", "synthetic", "scrape", "nvml"] = "auto"
    csv: Path | None = None
    scrape: list[str] = Field(default_factory=list)  # dcgm-exporter endpoints; host[:port] = http://host:9400/metrics
    scrape_file: Path | None = None
    scrape_timeout_s: float = Field(2.0, gt=0)
    scrape_retries: int = Field(2, ge=0, le=10)
    hosts: int = Field(32, ge=1, le=100_000)  # synthetic fleet size when no CSV is given
    gpus_per_host: int = Field(8, ge=1, le=64)
    synthetic_events: bool = False  # the synthetic fleet also has MIG devices, XID codes and a GPU that goes silent
    interval_s: float = Field(1.0, ge=0)
    batch_rows: int = Field(100_000, ge=1)
    passes: int | None = Field(None, ge=1)
    duration_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _source(self) -> StreamerSettings:
        if self.source == "scrape" and not (self.scrape or self.scrape_file):
            raise ValueError("source `scrape` needs scrape targets (scrape or scrape_file)")
        if self.source == "csv" and self.csv is None:
            raise ValueError("source `csv` needs a CSV file (csv)")
        return self


class CollectorSettings(BaseModel):
    """Collectors: how much they write per transaction."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(2, ge=0, le=1024)  # two overlap one's encoding with the other's COPY
    max_rows: int = Field(200_000, ge=1)  # rows per transaction, across partitions
    poll_timeout_s: float = Field(0.2, gt=0)


class AttributionSettings(BaseModel):
    """What collectors derive from samples in their transactions: allocations, latest values, usage, events.

    ``latest_every_s``: how often a collector rewrites the latest-value rows of the GPUs it saw (0: every
    transaction); the gateway's ``health_grace_s`` must cover it. Usage: a GPU_UTIL sample holds until the
    GPU's next one, at most ``max_gap_s``; it is active above ``active_above_percent`` and holds memory
    idle at or below it with FB_USED above ``memory_held_mib``. The supervisor folds the usage log into
    the rollups every ``compact_every_s``.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    latest_every_s: float = Field(5.0, ge=0)
    active_above_percent: float = Field(5.0, ge=0, le=100)
    memory_held_mib: float = Field(1024.0, ge=0)
    max_gap_s: float = Field(120.0, gt=0)
    compact_every_s: float = Field(30.0, gt=0)


class StorageSettings(BaseModel):
    """Time partitions of ``telemetry`` on plain PostgreSQL (TimescaleDB manages its own chunks)."""

    model_config = ConfigDict(extra="forbid")

    partition_interval_s: float = Field(86_400.0, ge=60)  # daily; hourly for fleets of 10k+ GPUs
    partitions_ahead: int = Field(3, ge=1)
    retention_s: float = Field(7 * 86_400.0, gt=0)
    ensure_every_s: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _retention(self) -> StorageSettings:
        if self.retention_s <= self.partition_interval_s:
            raise ValueError(
                f"retention_s ({self.retention_s:g}) must be longer than partition_interval_s "
                f"({self.partition_interval_s:g})"
            )
        return self


class ScalingSettings(BaseModel):
    """The elastic controller (seed HPA behaviour); off unless enabled or given min < max."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    period_s: float = Field(5.0, gt=0)  # how often the controller decides
    collectors_min: int | None = Field(None, ge=0)  # default: collector.count
    collectors_max: int | None = Field(None, ge=1)
    streamers_min: int | None = Field(None, ge=0)  # default: streamer.count
    streamers_max: int | None = Field(None, ge=1)
    target_lag: float = Field(1000.0, gt=0)  # rows of lag per collector
    target_utilization: float = Field(0.7, gt=0, le=1)  # busy fraction per streamer
    up_window_s: float = Field(60.0, ge=0)
    down_window_s: float = Field(300.0, ge=0)
    up_percent: float = Field(50.0, gt=0)
    down_percent: float = Field(25.0, gt=0, le=100)
    rate_period_s: float = Field(60.0, gt=0)


class GatewaySettings(BaseModel):
    """The REST gateway."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # tokens never in an error

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    redis_url: SecretStr | None = None
    # Bearer tokens: comma-separated `<scope>:<token>` pairs, scopes `read` (the API) and `metrics`.
    api_tokens: SecretStr | None = None
    auth: Literal["on", "off"] = "on"  # `off` serves the API without tokens (explicitly; never by default)
    max_url_bytes: int = Field(8192, ge=256)  # path and query of one request; longer is a 414
    gzip_min_bytes: int = Field(8192, ge=0)  # JSON/HTML/CSV/text bodies this large: gzipped if taken; 0: never
    cors_origins: list[str] = []  # origins allowed to call the API from a browser; none by default
    cursor_secret: SecretStr | None = None  # HMAC key of page cursors; default: derived from api_tokens
    default_limit: int = Field(1000, ge=1)
    max_limit: int = Field(10_000, ge=1)
    gpu_list_ttl_s: float = Field(5.0, ge=0)
    export_max_rows: int = Field(1_000_000, ge=1)  # CSV / Arrow export: samples per request
    export_chunk_rows: int = Field(10_000, ge=1)
    export_concurrency: int = Field(4, ge=1)  # exports streaming at once per replica; more get 503
    export_write_timeout_s: float = Field(10.0, gt=0)  # a client that takes longer to accept a chunk is cut off
    export_deadline_s: float = Field(100.0, gt=0)  # cut off after this (below Serve's request_timeout_s, 120)
    max_buckets: int = Field(10_000, ge=1)  # aggregate buckets per request
    max_window_s: float = Field(31 * 86400, gt=0)  # time span of one telemetry request (pages and exports)
    max_aggregate_window_s: float = Field(366 * 86400, gt=0)  # span of one aggregate, whole buckets included
    recent_window_s: float = Field(5.0, ge=0)  # a window ending this close to now is "recent" (cached briefly)
    recent_ttl_s: float = Field(1.0, ge=0)
    # Health: a GPU is missing when its newest sample is older than missing_intervals x scrape_interval_s
    # plus health_grace_s (the latest-value table's flush period and ingest latency).
    scrape_interval_s: float = Field(1.0, gt=0)
    missing_intervals: int = Field(3, ge=1)
    health_grace_s: float = Field(10.0, ge=0)

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_word(cls, value: Any) -> Any:
        return {False: "off", True: "on"}.get(value, value) if isinstance(value, bool) else value  # YAML's `off`

    @field_validator("api_tokens")
    @classmethod
    def _token_pairs(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        _decode_tokens(value.get_secret_value())
        return value

    def missing_after_s(self, intervals: int | None = None) -> float:
        """Seconds without a sample after which a GPU counts as missing (``intervals`` scrape intervals + grace)."""
        return (intervals or self.missing_intervals) * self.scrape_interval_s + self.health_grace_s

    def tokens(self) -> dict[str, tuple[bytes, ...]]:
        """The API tokens by scope (``read``, ``metrics``); empty when none are configured."""
        return _decode_tokens(self.api_tokens.get_secret_value()) if self.api_tokens is not None else {}

    @model_validator(mode="after")
    def _limits(self) -> GatewaySettings:
        if self.default_limit > self.max_limit:
            raise ValueError(f"default_limit {self.default_limit} exceeds max_limit {self.max_limit}")
        return self


def collectors_problem(partitions: int, collectors: int) -> str | None:
    """Why ``collectors`` cannot share ``partitions`` (each collector needs one), or None when they can."""
    if collectors > partitions:
        return (
            f"queue.partitions ({partitions}) must be at least the largest number of collectors ({collectors}) "
            "[PIPELINE_QUEUE__PARTITIONS, --partitions]"
        )
    return None


def _decode_tokens(raw: str) -> dict[str, tuple[bytes, ...]]:
    """``read:abc,metrics:def`` as tokens by scope; ``ValueError`` naming the bad pair (never the token)."""
    tokens: dict[str, list[bytes]] = {"read": [], "metrics": []}
    for i, pair in enumerate(p.strip() for p in raw.split(",")):
        if not pair:
            continue
        scope, sep, token = (part.strip() for part in pair.partition(":"))
        if not sep or scope not in tokens:
            raise ValueError(f"pair {i + 1} is not `<scope>:<token>` with scope read or metrics")
        if len(token) < 16:
            raise ValueError(f"pair {i + 1}: a token needs at least 16 characters")
        tokens[scope].append(token.encode())
    return {scope: tuple(values) for scope, values in tokens.items()}


class RaySettings(BaseModel):
    """Where Ray runs: an existing cluster (``address``) or a local one."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    namespace: str = "gpu-telemetry"
    num_cpus: int | None = Field(None, ge=1)
    dashboard: bool = True
    # On KubeRay each worker group advertises a custom resource per role ({"streamer": 1}, ...);
    # with placement on, actors request it, so the autoscaler grows the right group and broker i
    # lands beside its own queue volume ({"broker": 1, "broker_<i>": 1}).
    placement: bool = False


class Settings(BaseSettings):
    """Everything configurable, in one model."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)  # type: ignore[arg-type]
    queue: QueueSettings = Field(default_factory=QueueSettings)  # type: ignore[arg-type]
    streamer: StreamerSettings = Field(default_factory=StreamerSettings)  # type: ignore[arg-type]
    collector: CollectorSettings = Field(default_factory=CollectorSettings)  # type: ignore[arg-type]
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)  # type: ignore[arg-type]
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)  # type: ignore[arg-type]
    storage: StorageSettings = Field(default_factory=StorageSettings)  # type: ignore[arg-type]
    attribution: AttributionSettings = Field(default_factory=AttributionSettings)  # type: ignore[arg-type]
    ray: RaySettings = Field(default_factory=RaySettings)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _scaling_bounds(self) -> Settings:
        sc = self.scaling
        for role, count in (("collectors", self.collector.count), ("streamers", self.streamer.count)):
            low = getattr(sc, f"{role}_min")
            high = getattr(sc, f"{role}_max")
            low = count if low is None else low
            high = max(count, low) if high is None else high
            if low > high:
                raise ValueError(f"scaling.{role}_min ({low}) exceeds scaling.{role}_max ({high})")
        problem = collectors_problem(self.queue.partitions, self.policy_bounds("collector")[1])
        if problem:
            raise ValueError(problem)
        if self.attribution.enabled and self.gateway.health_grace_s < self.attribution.latest_every_s:
            raise ValueError(
                f"gateway.health_grace_s ({self.gateway.health_grace_s:g}) must cover attribution.latest_every_s "
                f"({self.attribution.latest_every_s:g}): otherwise healthy GPUs look missing between flushes"
            )
        return self

    def policy_bounds(self, role: str) -> tuple[int, int]:
        """(min, max) actors for ``collector`` or ``streamer``."""
        sc = self.scaling
        count = self.collector.count if role == "collector" else self.streamer.count
        low = getattr(sc, f"{role}s_min")
        high = getattr(sc, f"{role}s_max")
        low = count if low is None else low
        high = max(count, low) if high is None else high
        return low, high

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Overrides beat the environment; the YAML file is merged beneath both in load().
        return (init_settings, env_settings)

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Build settings from a YAML file, the environment and overrides; fail naming the bad key."""
        env = os.environ if environ is None else environ
        merged: dict[str, dict[str, Any]] = {}
        if config_file is not None:
            _deep_merge(merged, _read_yaml(Path(config_file)))
        conventional = {
            ("database", "url"): env.get("DATABASE_URL"),
            ("gateway", "redis_url"): env.get("REDIS_URL"),
            ("ray", "address"): env.get("RAY_ADDRESS"),
        }
        for (section, key), value in conventional.items():
            if value and f"{ENV_PREFIX}{section}__{key}".upper() not in {k.upper() for k in env}:
                merged.setdefault(section, {})[key] = value
        # Environment variables beat the file: drop file values that the environment sets.
        for name in env:
            upper = name.upper()
            if upper.startswith(ENV_PREFIX) and "__" in upper:
                section, _, key = upper[len(ENV_PREFIX) :].lower().partition("__")
                merged.get(section, {}).pop(key, None)
        for section, values in (overrides or {}).items():
            merged.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
        try:
            if environ is None:
                return cls(**merged)  # type: ignore[arg-type]
            saved = dict(os.environ)
            try:
                os.environ.clear()
                os.environ.update(environ)
                return cls(**merged)  # type: ignore[arg-type]
            finally:
                os.environ.clear()
                os.environ.update(saved)
        except PydanticValidationError as exc:
            raise ConfigError(_describe(exc)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def _deep_merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        elif isinstance(value, Mapping):
            into[key] = {}
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _describe(exc: PydanticValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        var = ENV_PREFIX + "__".join(loc).upper() if loc else "settings"
        dotted = ".".join(loc)
        value = err.get("input")
        secret = bool(loc) and loc[-1] in ("api_tokens", "cursor_secret", "redis_url")  # never echo a secret
        shown = "" if isinstance(value, dict) or secret else f" (got {value!r})"
        parts.append(f"{dotted} [{var}]: {err['msg']}{shown}")
    return "invalid settings: " + "; ".join(parts)
