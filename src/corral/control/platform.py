"""The composition root: one object that owns every service of a running control plane.

Start order: store → vault (proves the master key) → bus (embedded nats-server or an
external one, then the PLATFORM connection) → runtime → reconcile what was left running →
services (dispatcher, event consumer, crash watcher, vault responder, the bus ingress
watchdog). Stop in reverse; on exit the local runtime stops every agent it started, so nothing
runs unsupervised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from corral.bus.accounts import BusAuthority, JetStreamCaps
from corral.bus.platform import PlatformBus
from corral.bus.server import EmbeddedNats, ServerOptions
from corral.bus.vault_requests import VaultRequest
from corral.control.background import Background
from corral.control.dispatch import Dispatcher
from corral.control.documents import Documents
from corral.control.gateway.running import GatewayService
from corral.control.hub import EventHub
from corral.control.ingress import watch as watch_ingress
from corral.control.keys import ADMIN_KEY_FILE, new_key, write_private
from corral.control.lifecycle import Controller
from corral.control.monitoring import refresh_metrics
from corral.control.retention import Retention, retention_of
from corral.control.tenants import OrgHooks, TenantService
from corral.domain.agent_auth import AgentIdentity, RegisteredAgent
from corral.domain.agents import Agent, AgentState
from corral.domain.errors import CorralError, NotFound, PermissionDenied
from corral.domain.ids import AgentId, OrgId
from corral.domain.secrets import AuditAction
from corral.domain.tenancy import Organization
from corral.observability.metrics import Metrics
from corral.runtime.base import AgentRuntime, Phase
from corral.runtime.local.confinement import Confinement
from corral.settings import Settings
from corral.store.agents import AgentRepository
from corral.store.db import Database
from corral.store.quota import QuotaLedger
from corral.store.task_journal import TaskJournal
from corral.store.tasks import TaskRepository
from corral.store.tenants import OrgRepository
from corral.store.vault_repo import SqlVaultStore
from corral.store.writer_lock import WriterLock
from corral.vault.access import SecretAccess
from corral.vault.keys import Keyring
from corral.vault.service import Vault

__all__ = ["Platform", "load_plans"]

from corral.control.plans_file import load_plans  # noqa: E402  (re-exported)

log = logging.getLogger("corral.platform")


class Platform:
    """Start with ``async with Platform(settings) as p:``; everything stops on exit."""

    def __init__(self, settings: Settings, *, services: bool = True) -> None:
        self.settings = settings
        self.data_dir: Path = settings.data_dir
        self.db = Database(settings.resolved_database_url)
        self.orgs = OrgRepository(self.db)
        self.ledger = QuotaLedger(self.db)
        self.agents = AgentRepository(self.db)
        self.tasks = TaskRepository(self.db)
        self.hub = EventHub()
        self.metrics = Metrics()
        self.hooks = OrgHooks(on_create=[], on_delete=[])
        self.tenants = TenantService(self.orgs, self.ledger, self.hooks)
        self.new_admin_key: str | None = None  # set on the first start only
        self._services = services
        self._stack = AsyncExitStack()
        self._background = Background()
        # set in __aenter__
        self.vault: Vault
        self.access: SecretAccess
        self.bus: PlatformBus
        self.nats: EmbeddedNats | None = None
        self.runtime: AgentRuntime
        self.sandbox: Confinement | None = None  # the local runtime's; None on Kubernetes
        self._org_uids: dict[str, int] = {}  # org slug → its agents' uid (root, sandbox on)
        self.controller: Controller
        self.dispatcher: Dispatcher
        self.models: GatewayService  # the model gateway: models, budgets, metering

    async def __aenter__(self) -> Platform:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if self.settings.plans_file is not None:
            load_plans(self.settings.plans_file)
        await self.db.start()
        self._stack.push_async_callback(self.db.close)
        for kept in self.data_dir.glob("corral.db*"):  # the SQLite file, its WAL and lock
            kept.chmod(0o600)
        writer = WriterLock(self.db)
        await writer.acquire()  # one control plane per database: see corral.store.writer_lock
        self._stack.push_async_callback(writer.release)
        await self._ensure_admin_key()

        self.vault = Vault(SqlVaultStore(self.db), Keyring.open(self.data_dir))
        await self.vault.start()
        self.access = SecretAccess(self.vault, self._registered_agent)
        self.models = await self._stack.enter_async_context(
            GatewayService(
                self.db,
                self.vault,
                self.metrics,
                self.agents,
                self.orgs.get_by_id,
                host=self.settings.host,
                port=self.settings.resolved_gateway_port,
            )
        )

        await self._start_bus()
        self.runtime = await self._start_runtime()
        self.controller = Controller(
            agents=self.agents,
            ledger=self.ledger,
            bus=self.bus,
            runtime=self.runtime,
            hub=self.hub,
            org_lookup=self.orgs.get_by_id,
            extra_env=self._agent_env(),
            heartbeat_seconds=self.settings.heartbeat_seconds,
            agent_env=self.models.agent_env,
        )
        self._stack.push_async_callback(self.controller.close)
        idle = self.settings.idle_timeout
        self.documents = Documents(self.bus.objects, self.orgs.get_by_id, self._background.spawn)
        self.retention = Retention(
            self.tasks,
            interval=self.settings.prune_interval,
            override=self.settings.task_retention,
            forget=self.documents.forget_tasks,
        )
        self.dispatcher = Dispatcher(
            tasks=self.tasks,
            journal=TaskJournal(self.db),
            orgs=self.orgs,
            ledger=self.ledger,
            controller=self.controller,
            bus=self.bus,
            hub=self.hub,
            auto_provision=self.settings.auto_provision,
            heartbeat_seconds=self.settings.heartbeat_seconds,
            retention=lambda org: retention_of(org.plan, self.settings.task_retention),
            idle_timeout=(lambda org: idle)
            if idle is not None
            else (lambda org: org.plan.idle_timeout_seconds),
        )
        self._stack.push_async_callback(self.dispatcher.close)
        self.dispatcher.on_dispatched = self.metrics.dispatch_latency.labels("all").observe
        self.controller.on_capacity = self.dispatcher.capacity_changed
        self.controller.on_change = self._agent_changed
        self.models.follow_tasks(self.dispatcher.current_task)
        self.controller.on_lost = self.dispatcher.agent_lost
        self.dispatcher.events.on_unrecorded_object = self.documents.forget_result
        self.controller.current_task = self.dispatcher.current_task
        self._install_hooks()
        await self.dispatcher.rebuild()
        if self._services:
            serving = await self.bus.serve_vault(self._answer_vault)
            self._stack.push_async_callback(serving.close)
            self._background.spawn(self.dispatcher.consume(), "corral-events")
            await self._drain_events()
            await self._reconcile()
            self._background.spawn(self.dispatcher.run(), "corral-dispatch")
            self._background.spawn(self._watch_exits(), "corral-exits")
            self._background.spawn(self.retention.run(), "corral-retention")
            self._background.spawn(watch_ingress(self), "corral-ingress")
        self._stack.push_async_callback(self._background.close)

    def _agent_changed(self, agent: Agent) -> None:
        self.dispatcher.agent_changed(agent)
        self.models.agent_changed(agent)

    # -- bus ------------------------------------------------------------------------------
    async def _start_bus(self) -> None:
        nats_dir = self.data_dir / "nats"
        nats_dir.mkdir(mode=0o700, exist_ok=True)
        nats_dir.chmod(0o700)
        caps = JetStreamCaps(
            memory=self.settings.nats_max_memory, storage=self.settings.nats_max_storage
        )
        if self.settings.nats_url:
            seed = self.settings.nats_operator_seed
            authority = BusAuthority(
                nats_dir / "auth",
                caps=None,
                operator_seed=seed.get_secret_value() if seed else None,
                system_seed=(
                    self.settings.nats_system_seed.get_secret_value()
                    if self.settings.nats_system_seed
                    else None
                ),
            )
            url = self.settings.nats_url
        else:
            authority = BusAuthority(nats_dir / "auth", caps=caps)
            server = EmbeddedNats(
                nats_dir / "server",
                authority.trust(),
                ServerOptions(caps=caps, monitoring=self.settings.nats_monitoring),
            )
            self.nats = await self._stack.enter_async_context(server)
            url = server.url
        self.bus = await self._stack.enter_async_context(PlatformBus(url, authority))
        for org in await self.orgs.list():  # accounts pushed again after a restart
            await self.bus.ensure_org(org.slug, org.plan.bus)

    def _agent_env(self) -> dict[str, str]:
        return {"CORRAL_HEARTBEAT_SECONDS": str(self.settings.heartbeat_seconds)}

    # -- runtime --------------------------------------------------------------------------
    async def _start_runtime(self) -> AgentRuntime:
        if self.settings.runtime == "kubernetes":
            from corral.runtime.kubernetes import KubernetesRuntime
            from corral.runtime.kubernetes.gateway import LightkubeGateway

            runtime: AgentRuntime = KubernetesRuntime(
                LightkubeGateway.from_kubeconfig(self.settings.kubeconfig),
                storage_class=self.settings.k8s_storage_class,
                workspace_size=self.settings.k8s_workspace_size,
                nats_namespace=self.settings.k8s_nats_namespace,
                nats_port=self.settings.k8s_nats_port,
                runtime_classes=self.settings.k8s_runtime_classes,
            )
        else:
            from corral.runtime.local import LocalProcessRuntime

            self.sandbox = self._confinement()
            run_as = None
            if self.sandbox.enabled and os.geteuid() == 0:  # each org's agents: its own uid
                for org in await self.orgs.list():
                    await self._org_uid(org)
                run_as = self._run_as
            runtime = LocalProcessRuntime(
                self.data_dir / "agents",
                run_as=run_as,
                zygote=self.settings.fork_server,
                sandbox=self.sandbox,
            )
        self._stack.push_async_callback(runtime.close)
        return runtime

    def _confinement(self) -> Confinement:
        """The sandbox of local agents: what the host allows and the operator asked for, with
        the bus's port, the model gateway's (and the operator's) the only TCP ports agents may
        connect to, and the data directory hidden from them."""
        ports = [p for p in (urlsplit(u.strip()).port for u in self.bus.url.split(",")) if p]
        return Confinement.detect(
            self.settings.sandbox,
            tcp_ports=[*ports, self.models.port, *self.settings.sandbox_allow_ports],
            hide=[str(self.data_dir)],
            read_only=self.settings.sandbox_read_only,
        )

    async def _org_uid(self, org: Organization) -> None:
        uid = await self.orgs.sandbox_uid(
            org.id, base=self.settings.sandbox_uid_base, count=self.settings.sandbox_uid_count
        )
        if uid is None:
            log.error("no sandbox uid left for %s: its agents cannot start", org.slug)
        else:
            self._org_uids[org.slug] = uid

    def _run_as(self, org: str, agent_id: str) -> tuple[int, int] | None:
        uid = self._org_uids.get(org)
        return None if uid is None else (uid, uid)

    # -- organizations --------------------------------------------------------------------
    def _install_hooks(self) -> None:
        async def bus_up(org: Organization) -> None:
            await self.bus.ensure_org(org.slug, org.plan.bus)

        async def bus_down(org: Organization) -> None:
            await self.bus.remove_org(org.slug)

        async def runtime_up(org: Organization) -> None:
            if self.sandbox is not None and self.sandbox.enabled and os.geteuid() == 0:
                await self._org_uid(org)
            await self.runtime.prepare_org(org.slug, labels={**org.labels, **org.annotations})

        async def runtime_down(org: Organization) -> None:
            for agent in await self.agents.find(org_id=org.id):
                if agent.state is not AgentState.TERMINATED:
                    with contextlib.suppress(CorralError):
                        await self.controller.terminate(org, agent.id, delete_workspace=True)
            await self.runtime.remove_org(org.slug)

        async def scheduler_up(org: Organization) -> None:
            self.dispatcher.org_changed(org)

        async def scheduler_down(org: Organization) -> None:
            self.dispatcher.org_removed(org)

        async def vault_down(org: Organization) -> None:
            await self.vault.destroy_org(OrgId(org.id), actor="platform")

        async def nothing(org: Organization) -> None:
            return None

        self.hooks.on_create.extend(
            [
                ("bus", bus_up),
                ("runtime", runtime_up),
                ("scheduler", scheduler_up),
                ("vault", nothing),
            ]
        )
        self.hooks.on_delete.extend(
            [
                ("bus", bus_down),
                ("runtime", runtime_down),
                ("scheduler", scheduler_down),
                ("vault", vault_down),
            ]
        )

    # -- vault over the bus ---------------------------------------------------------------
    async def _registered_agent(self, org_id: OrgId, agent_id: AgentId) -> RegisteredAgent | None:
        try:
            agent = await self.agents.get(agent_id, org_id=org_id)
        except NotFound:
            return None
        if agent.public_key is None or agent.state in (AgentState.TERMINATED, AgentState.PAUSED):
            return None
        return RegisteredAgent(
            AgentIdentity(agent.id, agent.role, OrgId(agent.org_id)), agent.public_key
        )

    async def _answer_vault(self, request: VaultRequest) -> dict[str, Any]:
        import base64

        org = await self.orgs.get(request.org)
        refusal = None
        if request.agent_id is None:
            refusal = "the caller is no agent of this organization"
        elif request.payload.get("agentId") != request.agent_id:
            refusal = "the request names another agent than the one connected"
        if refusal is not None:
            await self.vault.audit.record(
                OrgId(org.id),
                actor=f"agent:{request.agent_id or request.user}",
                action=AuditAction.SECRET_READ,
                target=str(request.payload.get("secret", ""))[:253],
                allowed=False,
                detail=refusal,
            )
            self.metrics.vault_errors.labels(org.slug, "permission_denied").inc()
            raise PermissionDenied(refusal)
        try:
            value = await self.access.read(request.payload, org_id=OrgId(org.id), org_slug=org.slug)
        except CorralError as exc:
            self.metrics.vault_errors.labels(org.slug, exc.code).inc()
            raise
        return {"value": base64.b64encode(value).decode()}

    # -- start-up reconciliation ----------------------------------------------------------
    async def _drain_events(self, *, timeout: float = 10.0) -> None:
        """Let the event consumer record what agents reported while the control plane was
        down, before in-flight work is judged lost: wait until EVENTS has no backlog."""
        deadline = asyncio.get_running_loop().time() + timeout
        while await self.bus.events_backlog() > 0:
            if asyncio.get_running_loop().time() > deadline:
                log.warning("events still pending after %.0fs; reconciling anyway", timeout)
                return
            await asyncio.sleep(0.05)

    async def _reconcile(self) -> None:
        """Compare the registry with what runs: stop leftovers, restart what should run,
        finish interrupted pauses. Every agent's process was stopped or restarted, so the work
        any of them held is lost: it is retried."""
        records: dict[str, Agent] = {a.id: a for a in await self.agents.find()}
        for found in await self.runtime.list_agents():
            rec = records.get(found.agent_id)
            if found.phase is Phase.RUNNING and (
                rec is None or rec.state is not AgentState.RUNNING
            ):
                log.info("stopping leftover agent process %s", found.agent_id)
                await self.runtime.stop(found.org, found.agent_id, grace=1.0)
        for agent in records.values():
            org = await self.orgs.get_by_id(agent.org_id)
            if agent.state in (AgentState.RUNNING, AgentState.PROVISIONING, AgentState.RESUMING):
                status = await self.runtime.status(org.slug, agent.id)
                if status.phase is Phase.RUNNING:
                    await self.runtime.stop(org.slug, agent.id, grace=1.0)
                try:
                    await self.controller.restart_now(org, agent)
                except CorralError as exc:
                    log.error("could not restart %s: %s", agent.id, exc.message)
            elif agent.state is AgentState.PAUSING:
                await self.runtime.stop(org.slug, agent.id, grace=1.0)
                await self.controller.finish_pause(org, agent)
        for agent_id in self.dispatcher.holders():
            await self.dispatcher.agent_lost(agent_id, why="the control plane restarted")

    # -- background -----------------------------------------------------------------------
    async def _watch_exits(self) -> None:
        async for status in self.runtime.exits():
            try:
                await self.controller.on_exit(status)
            except Exception:
                log.exception("handling the exit of %s failed", status.agent_id)

    async def refresh_metrics(self) -> None:
        await refresh_metrics(self)

    async def metrics_text(self) -> bytes:
        """Every tenant's metrics, freshly measured, in the Prometheus text format."""
        await self.refresh_metrics()
        return self.metrics.render()

    async def _ensure_admin_key(self) -> None:
        path = self.data_dir / ADMIN_KEY_FILE
        if await self.orgs.has_admin_key() and path.exists():
            return
        key_id, secret, key = new_key()
        await self.orgs.add_key(key_id=key_id, key_secret=secret, org_id=None)
        write_private(path, key + "\n")
        self.new_admin_key = key
