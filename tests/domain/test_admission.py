import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.domain.admission import (
    ContainerRequest,
    admit,
    apply_limit_range,
    charge_for,
    check_quota,
    empty_usage,
)
from corral.domain.errors import InvalidInput, QuotaExceeded
from corral.domain.plans import PLANS, STANDARD, get_plan
from corral.domain.quantities import Quantity, parse


def test_standard_plan_carries_the_seeds_numbers() -> None:
    q = {k: v.render() for k, v in STANDARD.quota.items()}
    assert q == {
        "requests.cpu": "10",
        "requests.memory": "40Gi",
        "limits.cpu": "20",
        "limits.memory": "80Gi",
        "persistentvolumeclaims": "20",
        "pods": "15",
    }
    lr = STANDARD.limit_range
    assert (lr.default_cpu, lr.default_memory) == (parse("2000m"), parse("8Gi"))
    assert (lr.default_request_cpu, lr.default_request_memory) == (parse("500m"), parse("2Gi"))
    assert (lr.max_cpu, lr.max_memory) == (parse("4000m"), parse("16Gi"))
    assert STANDARD.agent_limit == 10
    assert [PLANS[p].plan_boost for p in ("free", "standard", "enterprise")] == [0, 1, 2]


def test_unknown_plan_names_the_choices() -> None:
    with pytest.raises(InvalidInput, match="unknown plan 'nope'.*free, standard, enterprise"):
        get_plan("nope")


def test_limit_range_defaults_fill_an_empty_spec() -> None:
    res = apply_limit_range(ContainerRequest(), STANDARD.limit_range)
    assert res.cpu_limit == parse("2") and res.memory_limit == parse("8Gi")
    assert res.cpu_request == parse("500m") and res.memory_request == parse("2Gi")


def test_a_limit_without_a_request_becomes_the_request() -> None:
    res = apply_limit_range(ContainerRequest(cpu_limit=parse("1")), STANDARD.limit_range)
    assert res.cpu_request == parse("1")


def test_container_above_max_is_refused_with_asked_and_allowed() -> None:
    with pytest.raises(QuotaExceeded) as err:
        apply_limit_range(ContainerRequest(cpu_limit=parse("5")), STANDARD.limit_range)
    assert err.value.details == {
        "resource": "limits.cpu",
        "asked": "5",
        "used": "0",
        "allowed": "4",
    }


def test_request_above_limit_is_invalid() -> None:
    req = ContainerRequest(memory_request=parse("4Gi"), memory_limit=parse("2Gi"))
    with pytest.raises(InvalidInput, match="memory request 4Gi is above its limit 2Gi"):
        apply_limit_range(req, STANDARD.limit_range)


def test_the_sixteenth_pod_is_refused_naming_pods() -> None:
    used = empty_usage()
    used["pods"] = Quantity.of(15)
    with pytest.raises(QuotaExceeded, match=r"pods: .*asked 1, used 15, allowed 15"):
        check_quota(
            STANDARD, used, charge_for(apply_limit_range(ContainerRequest(), STANDARD.limit_range))
        )


def test_agent_limit_is_enforced() -> None:
    with pytest.raises(QuotaExceeded, match="agent limit"):
        admit(STANDARD, ContainerRequest(cpu_request=parse("100m")), empty_usage(), agents_used=10)


cpu = st.sampled_from(["100m", "250m", "500m", "1", "2", "3", "4", "5"])
mem = st.sampled_from(["128Mi", "512Mi", "1Gi", "2Gi", "8Gi", "16Gi", "20Gi"])


def maybe(s: st.SearchStrategy[str]) -> st.SearchStrategy[Quantity | None]:
    return st.one_of(st.none(), s.map(parse))


@given(
    plan=st.sampled_from(list(PLANS.values())),
    specs=st.lists(
        st.builds(
            ContainerRequest,
            cpu_request=maybe(cpu),
            cpu_limit=maybe(cpu),
            memory_request=maybe(mem),
            memory_limit=maybe(mem),
        ),
        max_size=40,
    ),
)
def test_admission_never_admits_over_quota_and_always_applies_defaults(plan, specs) -> None:  # type: ignore[no-untyped-def]
    used = empty_usage()
    agents = 0
    for spec in specs:
        try:
            res = admit(plan, spec, used, agents_used=agents)
        except (QuotaExceeded, InvalidInput):
            continue
        # defaults applied: every field set, requests within limits, within max
        assert res.cpu_request <= res.cpu_limit <= plan.limit_range.max_cpu
        assert res.memory_request <= res.memory_limit <= plan.limit_range.max_memory
        if spec.cpu_limit is None:
            assert res.cpu_limit == plan.limit_range.default_cpu
        if spec.cpu_request is None and spec.cpu_limit is None:
            assert res.cpu_request == plan.limit_range.default_request_cpu
        for k, v in charge_for(res).items():
            used[k] = used[k] + v
        agents += 1
    for k, hard in plan.quota.items():
        assert used[k] <= hard
    assert agents <= plan.agent_limit


def test_a_request_above_the_default_limit_names_that_default_and_how_to_raise_it() -> None:
    req = ContainerRequest(cpu_request=parse("4"))
    with pytest.raises(InvalidInput) as err:
        apply_limit_range(req, STANDARD.limit_range)
    message = err.value.message
    assert "cpu request 4 is above its limit 2 (the plan's default cpu limit" in message
    assert "cpuLimit" in message and "--cpu-limit" in message and "max 4" in message
    assert err.value.details["limitDefaulted"] is True
