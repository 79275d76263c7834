"""Settings: one pydantic-settings object at the edge, from ``CORRAL_*`` env and flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    max_body_bytes: int = 1024 * 1024
    max_payload_bytes: int = 256 * 1024
    k8s_storage_class: str | None = None  # workspace PVCs (default: the cluster's default)
    k8s_workspace_size: str = "10Gi"
    k8s_nats_namespace: str = "nats"  # where NATS runs, for the allow-NATS NetworkPolicy
    k8s_nats_port: int = 4222
    kubeconfig: str | None = None  # default: in-cluster, then KUBECONFIG, then ~/.kube/config
    log_level: str = "INFO"
    plans_file: Path | None = None  # YAML list of extra plans (see README "Plans")
    auto_provision: bool = True  # provision an agent for a role with queued work and no agent
    heartbeat_seconds: float = 5.0

    @property
    def resolved_gateway_port(self) -> int:
        if self.gateway_port is not None:
            return self.gateway_port
        return 0 if self.port == 0 else self.port + 1

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'corral.db'}"
