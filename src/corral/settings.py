"""Settings: one pydantic-settings object at the edge, from ``CORRAL_*`` env and flags."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "default_data_dir"]


def default_data_dir() -> Path:
    return Path.home() / ".corral"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None  # default: SQLite in the data dir
    nats_url: str | None = None  # default: an embedded nats-server
    nats_operator_seed: SecretStr | None = None  # with nats_url: the operator's signing seed
    nats_system_seed: SecretStr | None = None  # with nats_url: the system account's seed
    nats_max_memory: int = 256 * 1024 * 1024  # embedded server's JetStream memory cap
    nats_max_storage: int = 8 * 1024 * 1024 * 1024  # embedded server's JetStream file cap
    nats_monitoring: bool = False  # embedded server: open its HTTP monitoring port (localhost)
    host: str = "127.0.0.1"
    port: int = 8470
    gateway_port: int | None = None  # the model gateway's own port (default: port + 1)
    runtime: Literal["local", "kubernetes"] = "local"
    idle_timeout: float | None = None  # override every plan's idle timeout (seconds)
    task_retention: float | None = None  # override every plan's finished-task retention (s)
    prune_interval: float = 60.0  # seconds between passes pruning finished tasks
    reconcile_seconds: float = Field(default=10.0, gt=0)  # between two looks of the reconciler
    max_body_bytes: int = 1024 * 1024
    # the reverse proxies whose X-Forwarded-For names the client (addresses or networks):
    # CORRAL_TRUSTED_PROXIES=10.0.0.5,10.1.0.0/16; empty: the header is never believed
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()
    # failed authentications one key may take (from any address), at once and then a second:
    # guesses at a key spread over many addresses run dry on these
    key_failures_burst: int = Field(default=20, ge=1)
    key_failures_per_second: float = Field(default=0.2, gt=0)
    # the largest task payload the API takes (a plan's maxObjectBytes may be lower); one
    # larger than a bus message goes through the org's object store
    max_payload_bytes: int = 16 * 1024 * 1024
    k8s_storage_class: str | None = None  # workspace PVCs (default: the cluster's default)
    k8s_workspace_size: str = "10Gi"
    k8s_nats_namespace: str = "nats"  # where NATS runs, for the allow-NATS NetworkPolicy
    k8s_nats_port: int = 4222
    # plan → RuntimeClass of its agents' Pods (gVisor, Kata): CORRAL_K8S_RUNTIME_CLASSES=
    # "free=gvisor,*=kata" ("*": every other plan); empty: the nodes' default runtime
    k8s_runtime_classes: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    kubeconfig: str | None = None  # default: in-cluster, then KUBECONFIG, then ~/.kube/config
    log_level: str = "INFO"
    # json (one object a line) or text; default: json unless stderr is a terminal
    log_format: Literal["json", "text"] | None = None
    plans_file: Path | None = None  # YAML list of extra plans (see README "Plans")
    auto_provision: bool = True  # declared roles' agents provisioned for their queues
    heartbeat_seconds: float = 5.0
    # the local runtime's sandbox (README "Sandbox"): auto is strict where the kernel allows
    sandbox: Literal["auto", "strict", "best-effort", "off"] = "auto"
    sandbox_uid_base: int = Field(default=200_000, ge=1000)  # as root: each org's own uid...
    sandbox_uid_count: int = Field(default=65_536, ge=1)  # ...from this range
    # TCP ports agents may connect to besides the bus's: CORRAL_SANDBOX_ALLOW_PORTS=443,8080
    sandbox_allow_ports: Annotated[tuple[int, ...], NoDecode] = ()
    # more paths agents may read (their programs, if not under /usr, /opt or the interpreter):
    # CORRAL_SANDBOX_READ_ONLY=/srv/agents,/opt/tools
    sandbox_read_only: Annotated[tuple[str, ...], NoDecode] = ()
    fork_server: bool = True  # start built-in agents from a per-org fork server (else exec)
    # replicas (docs/ha.md): any number of control planes on one PostgreSQL and one external
    # NATS, one leading under a lease, the others standing by
    ha: bool = False
    lease_seconds: float = Field(default=5.0, gt=0)  # a leader not renewing for this long is
    # replaced
    replica_name: str | None = None  # unique per replica (default: host name and pid)
    # how long the local agents of a control plane that died (or a deposed leader) keep
    # running for the next one to adopt them (nobody adopting them in time ends them); 0:
    # they die with it, and the next one starts them again
    adopt_seconds: float = Field(default=60.0, ge=0)
    advertise_url: str | None = None  # where other replicas reach this one's API
    # where traces go, over OTLP/HTTP (http://collector:4318): the control plane's spans and
    # its agents' (their sandbox may connect to its port). Unset: the standard
    # OTEL_EXPORTER_OTLP_ENDPOINT; neither: no tracing, and nothing on the hot path
    otlp_endpoint: str | None = Field(
        default_factory=lambda: os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    )

    @field_validator("sandbox_allow_ports", mode="before")
    @classmethod
    def _ports(cls, value: object) -> object:
        """A comma-separated list from the environment, a sequence from code."""
        if isinstance(value, str):
            return tuple(int(p) for p in value.replace(" ", "").split(",") if p)
        return value

    @field_validator("sandbox_read_only", mode="before")
    @classmethod
    def _paths(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(p.strip() for p in value.split(",") if p.strip())
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses_or_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Each as an address (``10.0.0.5``) or a network (``10.1.0.0/16``), normalized."""
        normal = []
        for proxy in value:
            try:
                if "/" in proxy:
                    normal.append(str(ipaddress.ip_network(proxy, strict=False)))
                else:
                    normal.append(str(ipaddress.ip_address(proxy)))
            except ValueError:
                raise ValueError(
                    f"a trusted proxy is not an IP address or network: {proxy!r}"
                ) from None
        return tuple(normal)

    @field_validator("k8s_runtime_classes", mode="before")
    @classmethod
    def _classes(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = [p.split("=", 1) for p in value.replace(" ", "").split(",") if p]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError("expected PLAN=RUNTIMECLASS pairs separated by commas")
            return dict(pairs)
        return value

    @field_validator("sandbox_allow_ports")
    @classmethod
    def _ports_in_range(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not all(0 < port < 65536 for port in value):
            raise ValueError(f"a port is out of range: {list(value)}")
        return value

    @field_validator("otlp_endpoint")
    @classmethod
    def _an_http_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"the OTLP endpoint {value!r} is not an http(s) URL like http://collector:4318"
            )
        return value.strip().rstrip("/")

    @property
    def otlp_ports(self) -> tuple[int, ...]:
        """The TCP port of the OTLP endpoint (none: no tracing)."""
        if self.otlp_endpoint is None:
            return ()
        parts = urlsplit(self.otlp_endpoint)
        return (parts.port or (443 if parts.scheme == "https" else 80),)

    @property
    def agent_tracing_env(self) -> dict[str, str]:
        """What tells an agent where its spans go (nothing: no tracing)."""
        if self.otlp_endpoint is None:
            return {}
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_endpoint}

    @property
    def resolved_gateway_port(self) -> int:
        if self.gateway_port is not None:
            return self.gateway_port
        return 0 if self.port == 0 else self.port + 1

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'corral.db'}"
