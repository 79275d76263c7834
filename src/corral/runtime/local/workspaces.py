"""Where a local agent's files live, and who may read them.

The local runtime keeps every agent's state in one directory tree::

    <root>/orgs/<org>/                 0700 (0711 when agents run under their own uids)
        agents/<agent_id>/             0700 (0711 likewise): the runtime's, not the agent's
            workspace/                 0700, the agent's files; kept across stop/start
            tmp/                       0700, the agent's TMPDIR, so /tmp is not a shared channel
            agent.creds                0600, the agent's bus credentials while it runs
            agent.pid                  0600, pid and start time, for reconciliation after restart
            logs/agent.log             0700 dir; the agent's stdout and stderr, appended, and the
                                       runtime's own lines (:func:`note`)

The runtime owns the agent directory, the agent owns only its workspace, tmp and creds, so an
agent running under its own uid cannot forge the pid file the runtime trusts. Names become path
segments and cgroup names, so they are checked here once.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from corral.domain.errors import InvalidInput

__all__ = [
    "AgentPaths",
    "check_name",
    "ensure_dir",
    "note",
    "note_line",
    "reown",
    "tail_lines",
    "write_private",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")


def check_name(kind: str, value: str) -> str:
    """Accept an org slug or agent id only if it is safe as one path segment.

    Raises:
        InvalidInput: empty, too long, or holding a separator, ``..`` or other characters.
    """
    if not _NAME.fullmatch(value) or ".." in value:
        raise InvalidInput(f"{kind} {value!r} is not a valid name", details={kind: value})
    return value


@dataclass(frozen=True, slots=True)
class AgentPaths:
    """Every path of one agent, derived from the runtime root (once: a start asks for them a
    few dozen times)."""

    root: Path
    org: str
    agent_id: str
    org_dir: Path = field(init=False, repr=False, compare=False)
    agents_dir: Path = field(init=False, repr=False, compare=False)
    agent_dir: Path = field(init=False, repr=False, compare=False)
    workspace: Path = field(init=False, repr=False, compare=False)
    tmp: Path = field(init=False, repr=False, compare=False)
    creds: Path = field(init=False, repr=False, compare=False)
    pidfile: Path = field(init=False, repr=False, compare=False)
    log: Path = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        org_dir = self.root / "orgs" / self.org
        agent_dir = org_dir / "agents" / self.agent_id
        for name, path in (
            ("org_dir", org_dir),
            ("agents_dir", org_dir / "agents"),
            ("agent_dir", agent_dir),
            ("workspace", agent_dir / "workspace"),
            ("tmp", agent_dir / "tmp"),
            ("creds", agent_dir / "agent.creds"),
            ("pidfile", agent_dir / "agent.pid"),
            ("log", agent_dir / "logs" / "agent.log"),
        ):
            object.__setattr__(self, name, path)

    @classmethod
    def of(cls, root: Path, org: str, agent_id: str) -> AgentPaths:
        return cls(root, check_name("org", org), check_name("agent_id", agent_id))

    @property
    def key(self) -> tuple[str, str]:
        return (self.org, self.agent_id)

    def remove(self) -> None:
        shutil.rmtree(self.agent_dir, ignore_errors=True)


def ensure_dir(path: Path, mode: int, *, owner: tuple[int, int] | None = None) -> bool:
    """Create ``path`` (parents must exist) and force its mode; True if it was created."""
    created = False
    try:
        path.mkdir(mode=mode)
        created = True
    except FileExistsError:
        if not path.is_dir() or path.is_symlink():
            raise
    os.chmod(path, mode)  # mkdir honours the umask; the mode is the point
    if owner is not None:
        os.chown(path, *owner)
    return created


def reown(path: Path, owner: tuple[int, int]) -> None:
    """Give ``path`` and all it holds to ``owner`` if it is someone else's: a workspace kept
    across a change of who its agent runs as (the sandbox turned on, say, where the agent ran
    as the platform's own uid) stays the agent's. Only ever done while no agent runs in it.
    Directories, symbolic links (changed, never followed) and regular files of one link are
    given; nothing else is: a file with another link may be the same inode as one outside the
    workspace (a hard link an agent made when it could), and a device node or a socket is no
    workspace's content. One ``stat`` when nothing is to be done."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if (st.st_uid, st.st_gid) == owner or not stat.S_ISDIR(st.st_mode):
        return
    for top, dirs, files in os.walk(path, topdown=False):
        for name in (*files, *dirs):
            item = os.path.join(top, name)
            mode, links = (info := os.lstat(item)).st_mode, info.st_nlink
            if stat.S_ISDIR(mode) or stat.S_ISLNK(mode) or (stat.S_ISREG(mode) and links == 1):
                os.lchown(item, *owner)
    os.lchown(path, *owner)


def write_private(path: Path, data: str, *, owner: tuple[int, int] | None = None) -> None:
    """Write ``data`` to a file only its owner can read, without a moment of wider access."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "w", encoding="utf-8", closefd=False) as out:
            out.write(data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def tail_lines(path: Path, n: int, *, block: int = 8192) -> str:
    """The last ``n`` lines of a text file, read from its end; "" if it does not exist."""
    if n <= 0:
        return ""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return ""
    with f:
        end = f.seek(0, os.SEEK_END)
        pos, data = end, b""
        # one more newline than asked, or the start of the file
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = data.splitlines(keepends=True)[-n:]
    return b"".join(lines).decode("utf-8", errors="replace")


def note_line(text: str) -> str:
    """A line of the runtime's own for an agent's log, stamped and marked as the runtime's."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    return f"[corral {stamp}] {text}\n"


def note(paths: AgentPaths, text: str) -> None:
    """Append a line of the runtime's own to the agent's log (never failing the caller)."""
    with contextlib.suppress(OSError), paths.log.open("a", encoding="utf-8") as f:
        f.write(note_line(text))
