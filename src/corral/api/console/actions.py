"""What the console lets a key do, each a form POST from the console's own pages (the
cookie is ``SameSite=Strict`` and the origin is checked): cancel a task; pause, resume or
terminate an agent. A key may act only on its own org (another org's ids answer 404, as in
the API); each answers with the page it came from."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from corral.api.auth import Caller, platform
from corral.api.console.html import HEADERS
from corral.api.console.session import answer, console_org, same_origin
from corral.domain.errors import NotFound

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


def _back(path: str) -> Response:
    return RedirectResponse(path, status_code=303, headers=HEADERS)


@router.post("/orgs/{slug}/tasks/{task_id}/cancel")
async def cancel(slug: str, task_id: str, request: Request) -> Response:
    async def act(who: Caller) -> Response:
        same_origin(request)
        org = await console_org(request, who, slug)
        await platform(request).dispatcher.cancel(org, task_id)
        return _back(f"/orgs/{org.slug}/tasks/{task_id}")

    return await answer(request, act)


@router.post("/orgs/{slug}/agents/{agent_id}/{verb}")
async def agent_action(slug: str, agent_id: str, verb: str, request: Request) -> Response:
    async def act(who: Caller) -> Response:
        same_origin(request)
        org = await console_org(request, who, slug)
        controller = platform(request).controller
        if verb == "pause":
            await controller.pause(org, agent_id)
        elif verb == "resume":
            await controller.resume(org, agent_id)
        elif verb == "terminate":
            await controller.terminate(org, agent_id, delete_workspace=True)
        else:
            await controller.get_agent(org, agent_id)  # an unknown agent is the first news
            raise NotFound(
                f"no action {verb!r}: use pause, resume or terminate", details={"action": verb}
            )
        return _back(f"/orgs/{org.slug}/agents/{agent_id}")

    return await answer(request, act)
