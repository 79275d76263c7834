"""Which limits mechanism this host lets us use: cgroup v2, else cgroup v1, else rlimits.

Read once, when the runtime starts, from ``/proc/self/mountinfo`` and ``/proc/self/cgroup``
(tests pass fakes of both): the cgroup mounts, this process's own group in each hierarchy, and
whether a ``corral/<instance>`` group can be created below it with the controllers the limits
need. Every mechanism passed over is given a reason, which the runtime reports
(:attr:`Limiter.reason`), so an operator sees why agents are less confined than they could be.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from corral.runtime.local.limits import Limiter, Mechanism, enable_controllers, forget

__all__ = ["probe"]


@dataclass(frozen=True, slots=True)
class _Mount:
    root: str  # the hierarchy path mounted there
    point: Path
    fstype: str
    options: frozenset[str]


def _unescape(field_: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field_)


def _mounts(mountinfo: str) -> list[_Mount]:
    mounts = []
    for line in mountinfo.splitlines():
        parts = line.split()
        if "-" not in parts:
            continue
        sep = parts.index("-")
        fstype = parts[sep + 1]
        if fstype not in ("cgroup", "cgroup2") or len(parts) < sep + 3:
            continue
        opts = frozenset(parts[sep + 3].split(",")) if len(parts) > sep + 3 else frozenset()
        mounts.append(_Mount(_unescape(parts[3]), Path(_unescape(parts[4])), fstype, opts))
    return mounts


def _own_paths(self_cgroup: str) -> dict[str, str]:
    """controller ("" for the unified hierarchy) -> this process's cgroup path."""
    out: dict[str, str] = {}
    for line in self_cgroup.splitlines():
        _, ctls, path = line.split(":", 2)
        for ctl in ctls.split(",") if ctls else [""]:
            out[ctl] = path
    return out


def _base(mount: _Mount, own: str, parent: str | None, instance: str) -> Path | None:
    """``<mount>/<parent or own cgroup>/corral/<instance>`` if the path lies in the mount."""
    path = parent if parent is not None else own
    root = mount.root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None
    rel = path[len(root) :].strip("/")
    return mount.point / rel / "corral" / instance if rel else mount.point / "corral" / instance


def _writable(base: Path) -> bool:
    """Create ``corral/<instance>`` below the parent group if we may; True if it is ours."""
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(base, os.W_OK)


def _probe_v2(mounts: list[_Mount], own: dict[str, str], parent: str | None, inst: str) -> str:
    mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
    if mount is None or "" not in own:
        return "no cgroup v2 hierarchy"
    base = _base(mount, own[""], parent, inst)
    if base is None:
        return "cgroup v2: this process's group is outside the mount"
    top = base.parent.parent
    try:
        available = set((top / "cgroup.controllers").read_text().split())
    except OSError:
        return f"cgroup v2: cannot read {top}/cgroup.controllers"
    if not {"memory", "cpu"} <= available:
        return f"cgroup v2: memory and cpu controllers not available at {top}"
    try:
        enable_controllers(top)
    except OSError as exc:
        return f"cgroup v2: cannot enable controllers at {top} ({exc.strerror})"
    if not _writable(base):
        return f"cgroup v2: {base} is not writable"
    return ""


def _probe_v1(
    mounts: list[_Mount], own: dict[str, str], parent: str | None, inst: str
) -> tuple[dict[str, Path], str]:
    bases: dict[str, Path] = {}
    for ctl in ("memory", "cpu", "pids"):
        mount = next((m for m in mounts if m.fstype == "cgroup" and ctl in m.options), None)
        if mount is None or ctl not in own:
            if ctl == "pids":
                continue
            forget(bases)
            return {}, f"cgroup v1: no {ctl} hierarchy"
        base = _base(mount, own[ctl], parent, inst)
        if base is None or not _writable(base):
            if ctl == "pids":
                continue
            forget(bases)
            return {}, f"cgroup v1: the {ctl} hierarchy is not writable here"
        bases[ctl] = base
    return bases, ""


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def probe(
    prefer: str = "auto",
    *,
    instance: str,
    parent: str | None = None,
    mountinfo: str | None = None,
    self_cgroup: str | None = None,
) -> Limiter:
    """Choose the strongest writable mechanism, or check that ``prefer`` is usable.

    Args:
        prefer: ``"auto"`` or a :class:`Mechanism` value to insist on.
        instance: names this installation's groups (``corral/<instance>``).
        parent: cgroup path to create groups under instead of this process's own group.
        mountinfo, self_cgroup: the contents of ``/proc/self/mountinfo`` and
            ``/proc/self/cgroup``; read from the system when not given (tests pass fakes).

    Raises:
        ValueError: ``prefer`` names an unknown mechanism, or one this host cannot provide.
    """
    wanted = None if prefer == "auto" else Mechanism(prefer)
    mounts = _mounts(mountinfo if mountinfo is not None else _read("/proc/self/mountinfo"))
    own = _own_paths(self_cgroup if self_cgroup is not None else _read("/proc/self/cgroup"))
    reasons: list[str] = []
    if wanted in (None, Mechanism.CGROUP_V2):
        why = _probe_v2(mounts, own, parent, instance)
        if not why:
            mount = next(m for m in mounts if m.fstype == "cgroup2")
            base = _base(mount, own[""], parent, instance)
            assert base is not None
            return Limiter(Mechanism.CGROUP_V2, {"unified": base}, "; ".join(reasons))
        reasons.append(why)
    if wanted in (None, Mechanism.CGROUP_V1):
        bases, why = _probe_v1(mounts, own, parent, instance)
        if not why:
            return Limiter(Mechanism.CGROUP_V1, bases, "; ".join(reasons))
        reasons.append(why)
    if wanted not in (None, Mechanism.RLIMIT):
        raise ValueError(f"{prefer} is not usable here: {'; '.join(reasons)}")
    return Limiter(Mechanism.RLIMIT, {}, "; ".join(reasons))
