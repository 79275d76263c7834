"""The sandbox's pure parts: the policy's wire shape and checks, the seccomp program, the
Landlock rights per ABI, the probe's report and strict refusal, and the export list."""

from __future__ import annotations

import struct

import pytest

import corral.runtime.sandbox as sandbox
from corral.runtime.sandbox import (
    IdentityMode,
    Report,
    SandboxLevel,
    SandboxMode,
    SandboxPolicy,
    SandboxUnavailable,
    landlock,
    seccomp,
)
from corral.runtime.sandbox.policy import outermost_names


def test_the_package_exports_exactly_its_api() -> None:
    assert sorted(sandbox.__all__) == [
        "Applied",
        "IdentityMode",
        "Layer",
        "Report",
        "SandboxError",
        "SandboxLevel",
        "SandboxMode",
        "SandboxPolicy",
        "SandboxUnavailable",
        "apply",
        "probe",
    ]


def test_a_policy_survives_its_wire_shape() -> None:
    policy = SandboxPolicy.for_agent(
        "/tmp", tcp_connect=(4222,), hide=("/var/empty",), identity=IdentityMode.USER_NAMESPACE
    )
    assert SandboxPolicy.decode(policy.encode()) == policy
    assert "/usr" in policy.read_only and "/dev/null" in policy.devices


def test_strict_mode_refuses_to_keep_the_callers_identity() -> None:
    with pytest.raises(ValueError, match="strict mode needs identity"):
        SandboxPolicy(workspace="/tmp", identity=IdentityMode.INHERIT)
    with pytest.raises(ValueError, match="uid and a gid other than 0"):
        SandboxPolicy(workspace="/tmp", identity=IdentityMode.SWITCH, uid=0, gid=0)


def test_defaults_never_expose_a_hidden_directory() -> None:
    policy = SandboxPolicy.for_agent(
        "/tmp", hide=("/usr/share",), identity=IdentityMode.USER_NAMESPACE
    )
    assert "/usr" not in policy.read_only


def test_nested_paths_are_left_out_by_name() -> None:
    paths = ("/usr/lib", "/usr", "/usr/bin", "/usr-local", "/data/b", "/data/b/c", "/etc/ssl")
    assert outermost_names(paths) == ("/data/b", "/etc/ssl", "/usr", "/usr-local")
    assert outermost_names(("/", "/usr", "/etc")) == ("/",)
    assert outermost_names(()) == ()


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_the_seccomp_program_denies_each_listed_call(arch: str) -> None:
    program = seccomp.build(arch)
    instructions = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    compared = {k for code, _, _, k in instructions if code == 0x15}
    table = seccomp.numbers(arch)
    assert {table[n] for n in seccomp.DENIED if n in table} <= compared
    assert instructions[1][3] == seccomp.AUDIT_ARCH[arch]
    assert instructions[-1] == (0x06, 0, 0, 0x7FFF0000)  # anything else is allowed
    x32_check = any(code == 0x35 and k == 0x40000000 for code, _, _, k in instructions)
    assert x32_check is (arch == "x86_64")
    for i, (code, jt, jf, _) in enumerate(instructions):  # every jump lands in the program
        if code & 0x07 == 0x05:
            assert i + 1 + max(jt, jf) < len(instructions)


@pytest.mark.parametrize(
    ("abi", "fs", "net", "scoped"),
    [(1, (1 << 13) - 1, 0, 0), (2, (1 << 14) - 1, 0, 0), (3, (1 << 15) - 1, 0, 0),
     (4, (1 << 15) - 1, 3, 0), (5, (1 << 16) - 1, 3, 0), (6, (1 << 16) - 1, 3, 3),
     (7, (1 << 16) - 1, 3, 3)],
)  # fmt: skip
def test_landlock_handles_only_what_each_abi_knows(
    abi: int, fs: int, net: int, scoped: int
) -> None:
    rights = landlock.ruleset_rights(abi)
    assert (rights.fs, rights.net, rights.scoped) == (fs, net, scoped)


def test_strict_mode_names_the_missing_feature() -> None:
    old_kernel = Report(root=False, landlock_abi=3, seccomp_filter=True, trials={"user": ""})
    assert old_kernel.level is SandboxLevel.PARTIAL
    assert old_kernel.default_mode is SandboxMode.BEST_EFFORT
    policy = SandboxPolicy(workspace="/tmp", identity=IdentityMode.USER_NAMESPACE)
    with pytest.raises(SandboxUnavailable, match="network is not available: Landlock ABI 3 < 4"):
        old_kernel.check(policy)
    old_kernel.check(policy.with_changes(mode=SandboxMode.BEST_EFFORT))
    assert "NO  network" in old_kernel.describe()


def test_this_host_reports_what_it_offers() -> None:
    report = sandbox.probe(trials=False)
    assert report.landlock_abi == landlock.abi_version()
    assert {layer.name for layer in report.layers()} == {
        "identity", "processes", "mounts", "files", "network", "scoping", "syscalls",
    }  # fmt: skip
