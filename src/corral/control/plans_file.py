"""The operator's own plans, read from a YAML file at start (``CORRAL_PLANS_FILE``)."""

from __future__ import annotations

from pathlib import Path

from corral.domain.errors import InvalidInput

__all__ = ["load_plans"]


def load_plans(path: Path) -> list[str]:
    """Register the operator's extra plans from a YAML list of plan objects."""
    import yaml

    from corral.domain import plans

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(f"cannot read plans file {path}: {exc}") from exc
    if not isinstance(data, list):
        raise InvalidInput(f"plans file {path} must hold a list of plans")
    names = []
    for item in data:
        if not isinstance(item, dict):
            raise InvalidInput(f"plans file {path}: each plan is a mapping")
        plan = plans.plan_from_wire(item)
        plans.register(plan)
        names.append(plan.name)
    return names
