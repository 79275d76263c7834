"""The composition root: one object that owns every service of a running control plane.

Start order: store → vault (proves the master key) → bus (embedded nats-server or an
external one, then the PLATFORM connection) → runtime → services (event consumer, vault
responder, retention, the bus ingress watchdog, the bus's health probe, pending org
deletions) — then the API may serve, while recovery pushes every org's account and streams
again (a few at a time; one that fails is reported, not fatal), relaunches what was left
running, several agents at a time, and starts the dispatcher, the crash watcher and the
periodic reconciler (:mod:`corral.control.recovery`, :mod:`corral.control.reconciling`).
Stop in reverse; on exit the local runtime stops every agent it started, so nothing
runs unsupervised.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Collection
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from corral.bus.accounts import BusAuthority, JetStreamCaps
from corral.bus.platform import PlatformBus
from corral.bus.probing import ping
from corral.bus.server import EmbeddedNats, ServerOptions
from corral.bus.vault_requests import VaultRequest
from corral.control import recovery, tracing
from corral.control.background import Background
from corral.control.bus_health import BusHealth
from corral.control.dispatch import Dispatcher
from corral.control.documents import Documents
from corral.control.endpoints import AgentEndpoints, setup_digest
from corral.control.gateway.running import GatewayService
from corral.control.hub import EventHub
from corral.control.ingress import watch as watch_ingress
from corral.control.keys import ADMIN_KEY_FILE, new_key, write_private
from corral.control.lifecycle import Controller
from corral.control.monitoring import Measured, refresh_metrics
from corral.control.org_steps import org_steps
from corral.control.reconciling import Reconciler
from corral.control.retention import Retention, retention_of
from corral.control.roles import RoleService
from corral.control.tenants import OrgHooks, TenantService
from corral.domain.agent_auth import AgentIdentity, RegisteredAgent
from corral.domain.agents import Agent, AgentState
from corral.domain.errors import CorralError, Deposed, NotFound, PermissionDenied
from corral.domain.ids import AgentId, OrgId
from corral.domain.secrets import AuditAction
from corral.domain.tenancy import Organization
from corral.observability.metrics import Metrics
from corral.runtime.base import Adopting, AgentRuntime
from corral.runtime.local.confinement import Confinement
from corral.settings import Settings
from corral.store.agents import AgentRepository
from corral.store.db import Database
from corral.store.leases import LeaderLease
from corral.store.quota import QuotaLedger
from corral.store.roles import RoleRepository
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

    def __init__(
        self, settings: Settings, *, services: bool = True, lease: LeaderLease | None = None
    ) -> None:
        """With ``lease`` (held: a replica elected on PostgreSQL) the lease stands for the writer
        lock, and every write of this platform is fenced by it (:mod:`corral.store.leases`):
        once the lease is lost, ``deposed`` is set and nothing more is committed."""
        self.settings = settings
        self.data_dir: Path = settings.data_dir
        self.lease = lease
        self.deposed = asyncio.Event()
        #: the lease's epoch this platform leads under: a term of its own, so that a request
        #: of a past term still in flight when the same replica leads again is not trusted
        self.term = lease.epoch if lease else None
        self.db = Database(
            settings.resolved_database_url,
            application_name=lease.session if lease else None,
            fence=self.leads if lease else None,
        )
        self.orgs = OrgRepository(self.db)
        self.ledger = QuotaLedger(self.db)
        self.agents = AgentRepository(self.db)
        self.tasks = TaskRepository(self.db)
        self.hub = EventHub()
        self.metrics = Metrics()
        self.measured = Measured()  # the agents' usage as last measured (see monitoring)
        self.hooks = OrgHooks()
        self.tenants = TenantService(
            self.orgs, self.ledger, self.hooks, on_change=self._org_changed
        )
        self.new_admin_key: str | None = None  # set on the first start only
        self.deletion_retry_seconds = 5.0  # how often a pending org deletion is carried on
        self.relaunch_concurrency = recovery.RELAUNCH_CONCURRENCY
        self.recovery = recovery.Recovery()
        self.recovered = asyncio.Event()  # set once every agent is back after a start
        #: set when this replica was deposed: its agents are left for the next leader to adopt
        self.keep_agents = False
        self._restored: set[str] = set()  # orgs pushed to the bus again by this start
        self._restoring: dict[str, asyncio.Lock] = {}
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
        self._org_uid_owner: dict[str, str] = {}  # org slug → the id of the org given it
        self._uid_lock = asyncio.Lock()
        self.controller: Controller
        self.dispatcher: Dispatcher
        self.models: GatewayService  # the model gateway: models, budgets, metering
        self.roles: RoleService  # the roles each org declares

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
        runtime = getattr(self, "runtime", None)
        if self.keep_agents and isinstance(runtime, Adopting):
            await runtime.detach()  # before the stack would stop them
        await self._stack.aclose()

    async def _start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if self.settings.plans_file is not None:
            load_plans(self.settings.plans_file)
        self._phases = recovery.Phases()
        self._stack.callback(tracing.configure(self.settings.otlp_endpoint))
        await self.db.start(migrate=self.lease is None)  # a replica migrated before campaigning
        self._phases.mark("store")
        self._stack.push_async_callback(self.db.close)
        for kept in self.data_dir.glob("corral.db*"):  # the SQLite file, its WAL and lock
            kept.chmod(0o600)
        if self.lease is None:
            writer = WriterLock(self.db)
            await writer.acquire()  # one control plane per database: corral.store.writer_lock
            self._stack.push_async_callback(writer.release)
        await self._ensure_admin_key()

        self.vault = Vault(SqlVaultStore(self.db), Keyring.open(self.data_dir))
        await self.vault.start()
        self.access = SecretAccess(self.vault, self._registered_agent)
        self.roles = RoleService(RoleRepository(self.db), self.vault.grants)
        await self.roles.load()
        before = AgentEndpoints.read(self.data_dir)  # what agents left running were given
        self.models = await self._stack.enter_async_context(
            GatewayService(
                self.db,
                self.vault,
                self.metrics,
                self.agents,
                self.orgs.get_by_id,
                host=self.settings.host,
                port=self.settings.resolved_gateway_port,
                prefer=before.gateway_port if before else None,
            )
        )

        self._phases.mark("vault")
        await self._start_bus(before)
        self._phases.mark("bus")
        endpoints = AgentEndpoints(
            bus=self.bus.url, gateway=self.models.url, setup=self._agent_setup()
        )
        #: whether agents an earlier control plane left running may be adopted: a replica's
        #: always (docs/ha.md); a single control plane's if they reach this one as they did,
        #: and were started as this one would start them
        self.may_adopt = self.lease is not None or endpoints == before
        if before is not None and endpoints != before:
            log.info(
                "agents left running are restarted, not adopted: %s",
                "; ".join(endpoints.changes(before)),
            )
        endpoints.write(self.data_dir)
        self.runtime = await self._start_runtime()
        self._phases.mark("runtime")
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
            before_launch=self.ensure_org_uid,
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
            journal=TaskJournal(
                self.db,
                epoch=self.lease.epoch if self.lease else None,
                on_deposed=self._lost_lease,
            ),
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
            roles=self.roles.roles,
            role_orgs=self.roles.orgs,
        )
        self.roles.on_change = self.dispatcher.roles_changed
        self.retention.on_pruned = self.dispatcher.book.counts.pruned
        self.roles.on_budget = lambda org, role, budget, actor: self.models.role_budget_changed(
            org, role, budget, actor=actor
        )
        self.models.follow_roles(self.roles.role, self.roles.roles)
        self.dispatcher.held_back = self.models.meter.held_back
        self.models.meter.on_release = self.dispatcher.capacity_changed
        self._stack.push_async_callback(self.dispatcher.close)
        self.dispatcher.on_dispatched = self.metrics.dispatched
        self.controller.on_capacity = self.dispatcher.capacity_changed
        self.controller.on_change = self._agent_changed
        self.models.follow_tasks(self.dispatcher.current_task)
        self.controller.on_lost = self.dispatcher.agent_lost
        self.dispatcher.events.on_unrecorded_object = self.documents.forget_result
        self.controller.current_task = self.dispatcher.current_task
        self.controller.bus_health = self.bus_health = BusHealth(
            lambda: ping(self.bus.connection, timeout=2.0)
        )
        self.reconciler = Reconciler(
            agents=self.agents,
            org_by_id=self.known_org,
            runtime=self.runtime,
            controller=self.controller,
            dispatcher=self.dispatcher,
            every=self.settings.reconcile_seconds,
        )
        self._install_hooks()
        await self.dispatcher.rebuild()
        await self.models.meter.check_orgs(
            {o.id: o.plan.name for o in self.dispatcher.book.orgs.values()}
        )
        self._phases.mark("rebuild")
        if self._services:
            serving = await self.bus.serve_vault(self._answer_vault)
            self._stack.push_async_callback(serving.close)
            left = await recovery.left_behind(self)  # before the API can add to it
            if self.lease is not None:  # a takeover: what the last leader held comes at once
                await recovery.release_events(self, left)
                self._phases.mark("release")
                self._background.spawn(self.dispatcher.consume(), "corral-events")
            # else so too after a kill -9, once the orgs are restored (see _recover)
            self._background.spawn(self.bus_health.watch(), "corral-bus-health")
            self._background.spawn(self._recover(left), "corral-recovery")
            self._background.spawn(self._count_then_prune(), "corral-retention")
            self._background.spawn(self._carry_on_deletions(), "corral-deletions")
            self._background.spawn(watch_ingress(self), "corral-ingress")
        self._stack.push_async_callback(self._background.close)
        log.info("started in %s", self._phases)

    async def _count_then_prune(self) -> None:
        """Count the finished tasks the store holds (once: there may be millions, so not on
        the way to serving; ``/metrics`` counts in the store until then), then prune them past
        their retention from time to time (never before: a prune during the count would be
        taken off twice)."""
        delay = 0.5
        while True:
            try:
                await self.dispatcher.count_finished()
                break
            except Exception as exc:  # the store unavailable, say: tried again, never fatal
                log.warning("counting the finished tasks failed (again in %.0f s): %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)
        await self.retention.run()

    def leads(self) -> bool:
        """Whether this platform may still write: no lease (a single control plane), or the
        lease held under this platform's own epoch and no commit refused (no I/O)."""
        lease = self.lease
        return lease is None or (
            lease.valid() and lease.epoch == self.term and not self.deposed.is_set()
        )

    def _lost_lease(self, exc: Deposed) -> None:
        if self.lease is not None:
            self.lease.lose()
        self.deposed.set()

    def _org_changed(self, org: Organization, change: str) -> None:
        """An org created, moved to another plan or being deleted: news for the live lists."""
        self.hub.publish(
            org.slug,
            "org",
            {
                "change": change,
                "plan": org.plan.name,
                "namespace": org.namespace,
                "agentLimit": org.plan.agent_limit,
            },
        )

    def _agent_changed(self, agent: Agent) -> None:
        self.dispatcher.agent_changed(agent)
        self.models.agent_changed(agent)

    # -- bus ------------------------------------------------------------------------------
    async def _start_bus(self, before: AgentEndpoints | None) -> None:
        """With ``before`` (what the last start's agents were given) the embedded server takes
        the same port if it is free."""
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
                ServerOptions(
                    caps=caps,
                    monitoring=self.settings.nats_monitoring,
                    prefer_port=before.bus_port if before else None,
                ),
            )
            self.nats = await self._stack.enter_async_context(server)
            url = server.url
        self.bus = await self._stack.enter_async_context(PlatformBus(url, authority))
        if not self._services:  # with services, recovery restores them beside the API
            await self._restore_orgs(await self.orgs.list())

    async def _restore_orgs(self, orgs: list[Organization], *, lazy: bool = False) -> None:
        """Push these orgs' accounts and streams again after a restart, a few at a time (with
        ``lazy``, the streams only once an agent needs them). An org that cannot be restored
        is reported, not fatal: the others come up."""
        gate = asyncio.Semaphore(16)

        async def restore(org: Organization) -> None:
            async with gate:
                try:
                    await self.bus.ensure_org(org.slug, org.plan.bus, lazy=lazy)
                except CorralError as exc:
                    log.error("organization %s not restored on the bus: %s", org.slug, exc.message)

        began = asyncio.get_running_loop().time()
        await asyncio.gather(*(restore(org) for org in orgs))
        took = asyncio.get_running_loop().time() - began
        log.info("%d organizations restored on the bus in %.1fs", len(orgs), took)

    def _agent_setup(self) -> str:
        """The digest of what every local agent is started with besides the two URLs: its
        sandbox's settings and the environment the platform gives it. Agents started under
        other values are not adopted (a restart that tightened the sandbox restarts them)."""
        s = self.settings
        return setup_digest(
            {
                "sandbox": s.sandbox,
                "uids": [s.sandbox_uid_base, s.sandbox_uid_count],
                "ports": sorted([*s.sandbox_allow_ports, *s.otlp_ports]),
                "read_only": sorted(s.sandbox_read_only),
                "fork_server": s.fork_server,
                "env": self._agent_env(),
                "pythonpath": os.environ.get("PYTHONPATH", ""),
            }
        )

    def _agent_env(self) -> dict[str, str]:
        s = self.settings  # agents export their spans where the control plane does
        return {"CORRAL_HEARTBEAT_SECONDS": str(s.heartbeat_seconds), **s.agent_tracing_env}

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
                # the orgs given one (one query); the others get one before their first agent
                known = await self.orgs.sandbox_uids()
                for org in await self.orgs.list():
                    if org.id in known:
                        self._org_uids[org.slug] = known[org.id]
                        self._org_uid_owner[org.slug] = org.id
                run_as = self._run_as
            runtime = LocalProcessRuntime(
                self.data_dir / "agents",
                run_as=run_as,
                zygote=self.settings.fork_server,
                sandbox=self.sandbox,
                # agents outlive a control plane that dies, for the next one to adopt
                adopt_seconds=self.settings.adopt_seconds,
            )
        self._stack.push_async_callback(runtime.close)
        return runtime

    def _confinement(self) -> Confinement:
        """The sandbox of local agents: what the host allows and the operator asked for, with
        the bus's port, the model gateway's (and the operator's) the only TCP ports agents may
        connect to, and the data directory hidden from them."""
        ports = [p for p in (urlsplit(u.strip()).port for u in self.bus.url.split(",")) if p]
        s = self.settings
        return Confinement.detect(
            s.sandbox,
            tcp_ports=[*ports, self.models.port, *s.sandbox_allow_ports, *s.otlp_ports],
            hide=[str(self.data_dir)],
            read_only=self.settings.sandbox_read_only,
        )

    async def assign_org_uid(self, org: Organization) -> None:
        uid = await self.orgs.sandbox_uid(
            org.id, base=self.settings.sandbox_uid_base, count=self.settings.sandbox_uid_count
        )
        if uid is None:
            log.error("no sandbox uid left for %s: its agents cannot start", org.slug)
        else:
            self._org_uids[org.slug] = uid
            self._org_uid_owner[org.slug] = org.id

    async def known_org(self, org_id: str) -> Organization:
        """The org of ``org_id`` as the dispatcher holds it (every org, kept as it changes),
        else as stored: the reconciler asks this for every agent at every look, which was a
        read of the store each.

        Raises:
            NotFound: no such org.
        """
        org = self.dispatcher.book.orgs.get(org_id)
        return org if org is not None else await self.orgs.get_by_id(org_id)

    async def ensure_org_uid(self, org: Organization) -> None:
        """Give ``org`` its sandbox uid before its first agent starts (root, sandbox on). An
        org is given one only then, not when it is created: an org with no agent costs no
        store write for it. Without one, the sandbox refuses to start the agent (never as
        root)."""
        if self.sandbox is None or not self.sandbox.enabled or os.geteuid() != 0:
            return
        if self._org_uid_owner.get(org.slug) == org.id and org.slug in self._org_uids:
            return
        async with self._uid_lock:  # two first agents of one org: one asks the store
            if self._org_uid_owner.get(org.slug) != org.id:
                await self.assign_org_uid(org)

    def forget_org_uid(self, org: Organization) -> None:
        """``org`` is gone from the runtime: its uid may be given to another org."""
        if self._org_uid_owner.get(org.slug) == org.id:
            self._org_uid_owner.pop(org.slug, None)
            self._org_uids.pop(org.slug, None)

    def _run_as(self, org: str, agent_id: str) -> tuple[int, int] | None:
        uid = self._org_uids.get(org)
        return None if uid is None else (uid, uid)

    # -- organizations --------------------------------------------------------------------
    def _install_hooks(self) -> None:
        self.hooks.steps.extend(org_steps(self))

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

    # -- start-up recovery (beside the API: see corral.control.recovery) ------------------
    async def _recover(self, left: recovery.LeftBehind) -> None:
        # the server kept every account and stream it had; pushing them again only matters
        # if a plan changed or the server lost them, so the API need not wait for it, and
        # the orgs whose agents are relaunched go first: dispatching waits for them alone. A
        # replica taking over pushes an org first only when one of its agents is relaunched
        # (an adopted agent's org is on the bus its agents are connected to)
        with_agents = {a.org_id for a in left.records.values() if a.state in recovery.LIVE}
        orgs = await self.orgs.list()
        if self.lease is None:
            await self._restore_orgs([o for o in orgs if o.id in with_agents])
            self._restored |= with_agents
            # the events a control plane killed before this one received and never recorded
            # come again at once, before the first is recorded here: the consumer
            # acknowledges cumulatively, so that first record would acknowledge them unread
            # (an adopted agent's result among them, its task then running for good)
            await recovery.release_events(self, left)
            self._background.spawn(self.dispatcher.consume(), "corral-events")
        self._phases.mark("orgs")
        self.recovery.phase = "relaunching agents"

        async def drain() -> None:  # before anything is judged lost: see recovery.reconcile
            self._phases.mark("adopt")
            await recovery.drain_events(self)
            self._phases.mark("events")

        await recovery.reconcile(
            self, left, self.recovery, concurrency=self.relaunch_concurrency, drain=drain
        )
        self._phases.mark("agents")
        self._background.spawn(self.dispatcher.run(), "corral-dispatch")
        self._background.spawn(self._watch_exits(), "corral-exits")
        self._background.spawn(self.reconciler.run(), "corral-reconciler")
        self.recovery.done = True
        self.recovered.set()
        log.info("recovered in %s", self._phases)
        # the others' streams wait for their next agent: an idle org opens nothing
        await self._restore_orgs([o for o in orgs if o.id not in self._restored], lazy=True)

    async def restore_org(self, org: Organization) -> None:
        """Push ``org``'s account and streams again unless this start already did (recovery,
        before relaunching one of its agents)."""
        async with self._restoring.setdefault(org.id, asyncio.Lock()):
            if org.id not in self._restored:
                await self._restore_orgs([org])
                self._restored.add(org.id)

    # -- background -----------------------------------------------------------------------
    async def _carry_on_deletions(self) -> None:
        """Finish the org deletions that began and failed half-way (or before a restart)."""
        while True:
            await self.tenants.finish_deletions()
            await asyncio.sleep(self.deletion_retry_seconds)

    async def _watch_exits(self) -> None:
        async for status in self.runtime.exits():
            try:
                await self.controller.on_exit(status)
            except Exception:
                log.exception("handling the exit of %s failed", status.agent_id)

    async def metrics_text(
        self, *, every_org: bool = False, names: Collection[str] | None = None
    ) -> bytes:
        """The metrics, freshly measured, in the Prometheus text format: per-org series for
        the active orgs (every org's with ``every_org``; see corral.control.monitoring); only
        the series named in ``names``, when given, and only those are measured."""
        snap = await refresh_metrics(self, every_org=every_org, names=names)
        return self.metrics.render(snap, names)

    async def _ensure_admin_key(self) -> None:
        path = self.data_dir / ADMIN_KEY_FILE
        if await self.orgs.has_admin_key() and path.exists():
            return
        key_id, secret, key = new_key()
        await self.orgs.add_key(key_id=key_id, key_secret=secret, org_id=None)
        write_private(path, key + "\n")
        self.new_admin_key = key
