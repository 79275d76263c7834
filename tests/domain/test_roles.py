"""Roles as declared: the YAML shape, its checks within the LimitRange, diffs and scaling."""

from __future__ import annotations

from typing import Any

import pytest

from corral.domain.budgets import Budget
from corral.domain.errors import Conflict, InvalidInput, QuotaExceeded
from corral.domain.plans import get_plan
from corral.domain.policies import TaskPolicy
from corral.domain.quantities import parse
from corral.domain.roles import Role, agents_needed, diff, role_from_wire, roles_from_document

LR = get_plan("standard").limit_range

ASSISTANT: dict[str, Any] = {
    "name": "assistant",
    "command": ["python", "/srv/agents/assistant.py"],
    "slots": 4,
    "resources": {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    },
    "minAgents": 0,
    "maxAgents": 5,
    "idleTimeout": "5m",
    "env": {"MODEL": "small"},
}


def test_the_issue_s_role_reads_as_declared() -> None:
    role = role_from_wire(ASSISTANT, limit_range=LR)
    assert role.command == ("python", "/srv/agents/assistant.py")
    assert (role.slots, role.min_agents, role.max_agents) == (4, 0, 5)
    assert role.idle_timeout == 300.0
    assert dict(role.env) == {"MODEL": "small"}
    res = role.resources(LR)
    assert (res.cpu_request, res.memory_limit) == (parse("500m"), parse("2Gi"))


def test_a_role_reads_back_from_its_own_wire_shape_unchanged() -> None:
    role = role_from_wire({**ASSISTANT, "secrets": ["gh-*"], "onDemand": False}, limit_range=LR)
    again = role_from_wire(role.to_wire(), limit_range=LR)
    assert again == role


def test_an_omitted_command_is_the_built_in_agent_and_defaults_are_small() -> None:
    role = role_from_wire({"name": "general"}, limit_range=LR)
    assert role.command is None
    assert (role.slots, role.min_agents, role.max_agents, role.on_demand) == (1, 0, 1, True)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"name": "Not_A_Label"}, "role"),
        ({"slots": 0}, "slots"),
        ({"maxAgents": 0}, "maxAgents"),
        ({"command": []}, "command"),
        ({"idleTimeout": "soon"}, "idleTimeout"),
        ({"env": {"CORRAL_ORG": "x"}}, "CORRAL_"),
        ({"resources": {"requests": {"cpu": "lots"}}}, "resources.requests.cpu"),
        ({"taskDefaults": {"runTimeout": -1}}, "runTimeout"),
        ({"replicas": 3}, "replicas"),
    ],
)
def test_a_bad_role_is_refused_naming_what_is_wrong(change: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidInput) as err:
        role_from_wire({**ASSISTANT, **change}, limit_range=LR)
    assert named in err.value.message


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"minAgents": 6}, "minAgents 6 is above maxAgents 5"),
        ({"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}, "above its limit"),
    ],
)
def test_a_role_its_own_limits_refuse_is_a_conflict(change: dict[str, Any], named: str) -> None:
    with pytest.raises(Conflict) as err:
        role_from_wire({**ASSISTANT, **change}, limit_range=LR)
    assert named in err.value.message
    assert err.value.message.startswith("role assistant: ")


def test_resources_above_the_limit_range_are_refused() -> None:
    big = {**ASSISTANT, "resources": {"limits": {"cpu": "64"}}}
    with pytest.raises(QuotaExceeded, match="limits.cpu"):
        role_from_wire(big, limit_range=LR)


def test_a_file_may_not_declare_a_role_twice() -> None:
    with pytest.raises(Conflict, match="twice"):
        roles_from_document({"roles": [ASSISTANT, ASSISTANT]}, limit_range=LR)
    with pytest.raises(InvalidInput, match="list under 'roles'"):
        roles_from_document([ASSISTANT], limit_range=LR)


def test_diff_says_create_update_or_unchanged_with_the_fields() -> None:
    role = role_from_wire(ASSISTANT, limit_range=LR)
    assert diff(None, role).action == "create"
    assert diff(role, role).action == "unchanged"
    bigger = role_from_wire({**ASSISTANT, "maxAgents": 8}, limit_range=LR)
    change = diff(role, bigger)
    assert change.action == "update"
    assert change.fields == {"maxAgents": (5, 8)}


def test_role_task_defaults_override_the_plan_s() -> None:
    role = role_from_wire(
        {**ASSISTANT, "taskDefaults": {"retry": {"maxAttempts": 2}, "runTimeout": "30s"}},
        limit_range=LR,
    )
    policy = role.policy(TaskPolicy())
    assert (policy.retry.max_attempts, policy.run_timeout) == (2, 30.0)


@pytest.mark.parametrize(
    ("queued", "free", "starting", "live", "expected"),
    [
        (1, 0, 0, 0, 1),  # one task: one agent
        (1, 0, 1, 1, 0),  # ... and not a second while the first starts
        (40, 0, 0, 0, 5),  # a burst: ceil(40 / 4) = 10, capped at maxAgents 5
        (40, 0, 3, 3, 2),
        (40, 0, 0, 5, 0),  # at maxAgents (paused ones count: they are woken first)
        (3, 4, 0, 1, 0),  # free slots take the queue
        (9, 4, 0, 1, 2),
    ],
)
def test_agents_needed_is_the_queue_over_slots_less_what_comes(
    queued: int, free: int, starting: int, live: int, expected: int
) -> None:
    role = Role("r", slots=4, max_agents=5)
    got = agents_needed(role, queued=queued, free_slots=free, starting=starting, live=live)
    assert got == expected


def test_a_role_may_carry_a_model_budget_per_period() -> None:
    role = role_from_wire({**ASSISTANT, "budget": {"tokens": 5000, "cost": "2.5"}}, limit_range=LR)
    assert role.budget == Budget(5000, 2_500_000_000_000)
    assert role.to_wire()["budget"] == {"tokens": 5000, "cost": "2.5"}
    assert role_from_wire(role.to_wire(), limit_range=LR) == role
    plain = role_from_wire(ASSISTANT, limit_range=LR)
    assert plain.budget is None and "budget" not in plain.to_wire()  # old specs compare equal
    assert diff(plain, role).fields == {"budget": (None, {"tokens": 5000, "cost": "2.5"})}
    assert diff(role, plain).fields == {"budget": ({"tokens": 5000, "cost": "2.5"}, None)}


@pytest.mark.parametrize(
    ("budget", "named"),
    [
        ({"tokens": -1}, "budget.tokens"),
        ({"tokens": True}, "budget.tokens"),
        ({"cost": "lots"}, "budget.cost"),
        ({"cost": "-1"}, "budget.cost"),
        ({"dollars": 5}, "tokens and/or cost"),
        (5, "tokens and/or cost"),
    ],
)
def test_a_bad_role_budget_is_refused_naming_what_is_wrong(budget: object, named: str) -> None:
    with pytest.raises(InvalidInput) as err:
        role_from_wire({**ASSISTANT, "budget": budget}, limit_range=LR)
    assert named in err.value.message
