"""The SSRF guard where the service uses it: IPv6 forms of non-public IPv4 addresses.

At registration (the partner API) and at send time (the delivery path checks each origin; a
host name is checked again by the connector's resolver, see tests/unit/test_ssrf.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from tests.integration.webhook_helpers import KEY_A, make_event, make_settings
from warnsvc.service import Components, build_components
from warnsvc.store import schema
from warnsvc.web.api import make_api
from warnsvc.web.app import json_errors

A = {"Authorization": f"Bearer {KEY_A}"}

EMBEDDED = [
    "https://[2002:a9fe:a9fe::1]/latest/meta-data/",  # 6to4 of 169.254.169.254
    "https://[2002:7f00:1::1]/hook",  # 6to4 of 127.0.0.1
    "https://[fec0::1]/hook",  # site-local
    "https://[2001:0:4136:e378:8000:f227:80ff:fffe]/hook",  # Teredo, client 127.0.0.1
    "https://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 of 169.254.169.254
    "https://[64:ff9b:1:a9fe:a9:fe00::]/hook",  # local-use NAT64 (/48) of 169.254.169.254
    "https://[::a9fe:a9fe]/hook",  # IPv4-compatible 169.254.169.254
]


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Components]:
    components = await build_components(make_settings(tmp_path, allow_networks="[]"))
    yield components
    await components.close()


@pytest.fixture
async def client(parts: Components, aiohttp_client: Any) -> TestClient[Any, Any]:
    assert parts.webhooks is not None
    root = web.Application(middlewares=[json_errors])
    root.add_subapp("/api/v1", make_api(parts.webhooks.api(parts.dispatcher.wake)))
    result: TestClient[Any, Any] = await aiohttp_client(root)
    return result


@pytest.mark.parametrize("url", EMBEDDED)
async def test_registration_refuses_ipv6_forms_of_non_public_addresses(
    client: TestClient[Any, Any], url: str
) -> None:
    async with client.post("/api/v1/endpoints", headers=A, json={"url": url}) as response:
        body = await response.json()

    assert response.status == 422, body
    assert body["error"]["field"] == "url"
    assert "not a public address" in body["error"]["message"]


async def test_send_time_refuses_a_stored_6to4_metadata_url(parts: Components) -> None:
    # Stored before the guard knew better (or written straight to the database).
    assert parts.webhooks is not None
    for url in EMBEDDED:
        await parts.webhooks.endpoints.create(
            url=url, partner_id="ngo-a", filters=None, now=datetime.now(UTC)
        )
    await parts.store.record_event(make_event(), parts.poller.recipients, now=datetime.now(UTC))

    await parts.dispatcher.drain()

    async with parts.store.engine.connect() as conn:
        query = select(schema.outbox).where(schema.outbox.c.channel == "webhooks")
        rows = [dict(r) for r in (await conn.execute(query)).mappings()]
    assert len(rows) == len(EMBEDDED)
    for row in rows:
        assert "refused by the SSRF guard" in str(row["last_error"]), row
        assert "not a public address" in str(row["last_error"]), row
