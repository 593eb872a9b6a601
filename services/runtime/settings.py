"""One `Settings` object for every process; environment variables prefixed `PARTNERHUB_`."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ServiceName = Literal["gateway", "onboarding", "lifecycle", "metrics"]
SERVICES: tuple[ServiceName, ...] = ("gateway", "onboarding", "lifecycle", "metrics")
DEFAULT_PORTS: dict[str, int] = {"gateway": 8000, "onboarding": 8001, "lifecycle": 8002, "metrics": 8003}

DEFAULT_RATE_LIMITS: dict[str, dict[str, float]] = {
    "strategic": {"per_second": 200, "burst": 400},
    "innovation": {"per_second": 100, "burst": 200},
    "platform_integration": {"per_second": 50, "burst": 100},
    "ops": {"per_second": 500, "burst": 1000},
    "default": {"per_second": 20, "burst": 40},
}


class Settings(BaseSettings):
    """Configuration of a partnerhub process; fails fast on a bad value."""

    model_config = SettingsConfigDict(env_prefix="PARTNERHUB_", extra="ignore", frozen=True)

    env: Literal["dev", "test", "production"] = "dev"
    var_dir: Path = Path("var")
    host: str = "127.0.0.1"

    # Ports and where each service is reached (the gateway proxies to these).
    gateway_port: int = DEFAULT_PORTS["gateway"]
    onboarding_port: int = DEFAULT_PORTS["onboarding"]
    lifecycle_port: int = DEFAULT_PORTS["lifecycle"]
    metrics_port: int = DEFAULT_PORTS["metrics"]
    gateway_url: str | None = None
    onboarding_url: str | None = None
    lifecycle_url: str | None = None
    metrics_url: str | None = None

    # One store per service; SQLite files under var/ unless a URL is given.
    gateway_database_url: str | None = None
    onboarding_database_url: str | None = None
    lifecycle_database_url: str | None = None
    metrics_database_url: str | None = None
    database_pool_size: int = 10

    # Kafka. Unset bootstrap → `partnerhub up` spawns the embedded Tansu broker.
    kafka_bootstrap: str | None = None
    kafka_partitions: int = 6
    kafka_replication_factor: int = 1
    kafka_topic_prefix: str = "partnerhub"
    relay_batch_size: int = 500
    relay_poll_interval: float = 0.05
    consumer_max_retries: int = 5
    consumer_session_timeout_ms: int = 10_000
    consumer_heartbeat_interval_ms: int = 1_000
    consumer_fetch_max_wait_ms: int = Field(default=25, ge=1, le=5_000)

    # OAuth / tokens.
    issuer: str | None = None
    audience: str = "partnerhub"
    access_token_ttl: int = 3600
    jwks_refetch_interval: float = 10.0
    secret_pepper: str | None = None
    # The service-to-service client (scope events:read) consumers use for log-API catch-up.
    internal_client_id: str | None = None
    internal_client_secret: str | None = None

    # Gateway proxy.
    rate_limits: Annotated[dict[str, dict[str, float]], NoDecode] = Field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    redis_url: str | None = None
    max_body_bytes: int = 1_048_576
    upstream_connect_timeout: float = 2.0
    upstream_read_timeout: float = 15.0
    breaker_failure_threshold: int = 5
    breaker_reset_timeout: float = 10.0
    traffic_window_seconds: int = 60
    # Keys of the shared rate-limit buckets in Redis start with this (one prefix per deployment).
    redis_key_prefix: str = "partnerhub:rl:"
    # How often services (and gateway replicas) pick up revoked tokens and clients.
    revocation_poll_interval: float = 2.0

    # Webhooks and probes.
    webhook_allow_nets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_attempt_timeout: float = 15.0
    probe_interval: float = 30.0
    probe_timeout: float = 5.0

    # Telemetry.
    log_level: str = "INFO"
    traces_dir: Path | None = None
    trace_file: bool = True
    trace_console: bool = False

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _parse_rate_limits(cls, value: object) -> object:
        if isinstance(value, str):
            value = json.loads(value)
        if isinstance(value, dict):
            merged = dict(DEFAULT_RATE_LIMITS)
            for tier, limit in value.items():
                if not isinstance(limit, dict) or not {"per_second", "burst"} <= set(limit):
                    raise ValueError(f"rate limit for {tier!r} needs per_second and burst")
                if float(limit["per_second"]) <= 0 or float(limit["burst"]) < 1:
                    raise ValueError(f"rate limit for {tier!r} must be positive")
                merged[tier] = {"per_second": float(limit["per_second"]), "burst": float(limit["burst"])}
            return merged
        return value

    @field_validator("webhook_allow_nets", mode="before")
    @classmethod
    def _parse_nets(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                value = json.loads(value)
            else:
                value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            for net in value:
                ipaddress.ip_network(str(net), strict=False)
        return value

    def port_of(self, service: str) -> int:
        """The TCP port `service` listens on."""
        return int(getattr(self, f"{service}_port"))

    def url_of(self, service: str) -> str:
        """Base URL at which `service` is reached."""
        explicit = getattr(self, f"{service}_url")
        return str(explicit) if explicit else f"http://{self.host}:{self.port_of(service)}"

    def database_url_of(self, service: str) -> str:
        """SQLAlchemy async URL of `service`'s own store."""
        explicit = getattr(self, f"{service}_database_url")
        if explicit:
            return str(explicit)
        return f"sqlite+aiosqlite:///{(self.var_dir / f'{service}.db').resolve()}"

    @property
    def token_issuer(self) -> str:
        """The `iss` of access tokens: the gateway's public base URL."""
        return self.issuer or self.url_of("gateway")

    def topic_of(self, service: str) -> str:
        """Kafka topic carrying `service`'s events."""
        return f"{self.kafka_topic_prefix}.{service}.events"

    @property
    def traces_path(self) -> Path:
        """Directory where spans are written as JSON lines."""
        return self.traces_dir or self.var_dir / "traces"
