"""A stored task row that cannot be loaded never stops start-up: it is quarantined (failed with
the reason, logged, counted in /metrics) and everything else goes on."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import text

from corral.api.app import create_app
from corral.control.platform import Platform
from corral.settings import Settings

DEEP = '{"a": ' * 961 + "{}" + "}" * 961  # 962 levels: what once broke every later start-up


async def _submit(p: Platform) -> tuple[str, str, str]:
    app = create_app(p)
    headers = {"Authorization": f"Bearer {p.new_admin_key}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    ) as admin:
        assert (await admin.post("/v1/orgs", json={"name": "acme"})).status_code == 201
        ids = []
        for n in range(3):
            r = await admin.post(
                "/v1/orgs/acme/tasks", json={"role": "nobody", "payload": {"n": n}}
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    return ids[0], ids[1], ids[2]


async def test_unloadable_rows_are_quarantined_and_start_up_goes_on(
    tmp_path: Path, database_url: str
) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, port=0)
    async with Platform(settings) as p:
        deep, bad_state, fine = await _submit(p)
        json_type = "json" if p.db.dialect == "postgresql" else "text"
        async with p.db.engine.begin() as conn:
            await conn.execute(
                text(f"UPDATE tasks SET payload = CAST(:v AS {json_type}) WHERE id = :id"),
                {"v": DEEP, "id": deep},
            )
            await conn.execute(
                text("UPDATE tasks SET state = 'bogus' WHERE id = :id"), {"id": bad_state}
            )

    async with Platform(settings) as p:  # the start-up that used to fail
        app = create_app(p)
        headers = {"Authorization": f"Bearer {p.new_admin_key or _admin_key(settings)}"}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
        ) as admin:
            listed = await admin.get("/v1/orgs/acme/tasks")
            assert listed.status_code == 200, listed.text
            states = {t["id"]: t["state"] for t in listed.json()["tasks"]}
            assert states == {deep: "failed", bad_state: "failed", fine: "queued"}
            shown = (await admin.get(f"/v1/orgs/acme/tasks/{deep}")).json()
            assert shown["payload"] == {}
            assert "quarantined" in shown["result"]["error"]
            assert "quarantined" in shown["history"][-1]["detail"]
            metrics = await admin.get("/metrics")
            assert "corral_tasks_quarantined_total 2.0" in metrics.text


def _admin_key(settings: Settings) -> str:
    return (settings.data_dir / "admin.key").read_text().strip()
