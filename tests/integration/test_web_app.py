"""The main HTTP app's own answers: errors are JSON, a 405 says which methods a path has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from warnsvc.web.app import make_app


async def ready(replica_only: bool = False) -> tuple[bool, dict[str, Any]]:
    return True, {}


async def test_a_405_on_the_main_app_is_json_and_carries_allow(tmp_path: Path, aiohttp_client):
    client = await aiohttp_client(make_app(feeds_dir=tmp_path, readiness=ready))
    response = await client.post("/healthz")
    assert response.status == 405
    assert set(response.headers["Allow"].split(",")) >= {"GET"}
    assert (await response.json())["error"]["status"] == 405
