"""``/v1/orgs/{org}/agents``"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import Field

from corral.api import answers
from corral.api.auth import org_scope, platform
from corral.api.schemas import LABEL30, QUANTITY, Strict
from corral.domain.admission import ContainerRequest
from corral.domain.agents import MAX_SLOTS, AgentState
from corral.domain.quantities import parse
from corral.domain.tenancy import Organization

__all__ = ["router"]

router = APIRouter(prefix="/v1/orgs/{org}/agents")
Org = Annotated[Organization, Depends(org_scope)]


class AgentCreate(Strict):
    name: str = Field(min_length=1, max_length=30, json_schema_extra={"pattern": LABEL30})
    role: str = Field(
        default="general", min_length=1, max_length=30, json_schema_extra={"pattern": LABEL30}
    )
    cpu: str | None = Field(
        default=None,
        max_length=32,
        json_schema_extra={"pattern": QUANTITY},
        description="CPU request, e.g. 500m",
    )
    memory: str | None = Field(
        default=None,
        max_length=32,
        json_schema_extra={"pattern": QUANTITY},
        description="memory request, e.g. 1Gi",
    )
    cpu_limit: str | None = Field(
        default=None, max_length=32, json_schema_extra={"pattern": QUANTITY}, alias="cpuLimit"
    )
    memory_limit: str | None = Field(
        default=None, max_length=32, json_schema_extra={"pattern": QUANTITY}, alias="memoryLimit"
    )
    gpu: int = Field(default=0, ge=0, le=16)
    command: list[Annotated[str, Field(min_length=1, max_length=4096)]] | None = Field(
        default=None, min_length=1, max_length=64
    )
    slots: int = Field(default=1, ge=1, le=MAX_SLOTS, description="tasks the agent runs at once")
    wait: bool = Field(default=False, description="answer once the agent reports ready")


def _q(text: str | None) -> Any:
    return None if text is None else parse(text)


@router.post("", status_code=201, response_model=answers.Agent, response_model_exclude_unset=True)
async def provision(body: AgentCreate, org: Org, request: Request) -> dict[str, Any]:
    p = platform(request)
    req = ContainerRequest(
        cpu_request=_q(body.cpu),
        cpu_limit=_q(body.cpu_limit),
        memory_request=_q(body.memory),
        memory_limit=_q(body.memory_limit),
        gpu=body.gpu,
    )
    agent = await p.controller.provision(
        org,
        name=body.name,
        role=body.role,
        request=req,
        command=body.command,
        slots=body.slots,
    )
    if body.wait:
        agent = await p.controller.wait_running(agent.id, timeout=30.0)
    return agent.to_wire()


@router.get("", response_model=answers.AgentList, response_model_exclude_unset=True)
async def list_agents(
    org: Org,
    request: Request,
    state: Annotated[AgentState | None, Query()] = None,
    terminated: Annotated[
        bool, Query(description="include terminated agents (they are kept as history)")
    ] = False,
) -> dict[str, Any]:
    history = terminated or state is AgentState.TERMINATED
    agents = await platform(request).controller.find_agents(org, terminated=history)
    return {"agents": [a.to_wire() for a in agents if state is None or a.state == state]}


async def _id(request: Request, org: Organization, agent: str) -> str:
    """The id of the agent ``agent`` names by id or by (live agent's) name."""
    return (await platform(request).controller.get_agent(org, agent)).id


@router.get("/{agent}", response_model=answers.Agent, response_model_exclude_unset=True)
async def show(agent: str, org: Org, request: Request) -> dict[str, Any]:
    """One agent, by id or name."""
    controller = platform(request).controller
    found = await controller.get_agent(org, agent)
    wire = found.to_wire()
    sandbox = await controller.sandbox_level(org, found.id)
    if sandbox is not None:  # the local runtime's confinement of its running process
        wire["sandbox"] = sandbox
    return wire


@router.get("/{agent}/logs", response_model=answers.AgentLogs, response_model_exclude_unset=True)
async def logs(
    agent: str, org: Org, request: Request, tail: Annotated[int, Query(ge=1, le=10_000)] = 200
) -> dict[str, Any]:
    agent_id = await _id(request, org, agent)
    text = await platform(request).controller.agent_logs(org, agent_id, tail=tail)
    return {"agent": agent_id, "logs": text}


@router.post("/{agent}/pause", response_model=answers.Agent, response_model_exclude_unset=True)
async def pause(agent: str, org: Org, request: Request, force: bool = False) -> dict[str, Any]:
    agent_id = await _id(request, org, agent)
    return (await platform(request).controller.pause(org, agent_id, force=force)).to_wire()


@router.post("/{agent}/resume", response_model=answers.Agent, response_model_exclude_unset=True)
async def resume(agent: str, org: Org, request: Request, wait: bool = False) -> dict[str, Any]:
    p = platform(request)
    agent_id = await _id(request, org, agent)
    resumed = await p.controller.resume(org, agent_id)
    if wait:
        resumed = await p.controller.wait_running(agent_id, timeout=30.0)
    return resumed.to_wire()


@router.delete("/{agent}", status_code=204)
async def terminate(
    agent: str, org: Org, request: Request, keep_workspace: bool = False
) -> Response:
    agent_id = await _id(request, org, agent)
    p = platform(request)
    await p.controller.terminate(org, agent_id, delete_workspace=not keep_workspace)
    return Response(status_code=204)
