"""The partner portal in a real browser: sign in with the API key, send a test to an endpoint
on a loopback receiver, see the delivery listed; rotate the secret. axe-core on every page."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from playwright.async_api import Page, expect
from standardwebhooks import Webhook

from tests.browser.conftest import PARTNER_KEY, Check, Running, wait_for
from tests.integration.webhook_helpers import Receiver


async def test_sign_in_send_a_test_and_see_it_delivered(
    running: Running, page: Page, check: Check, aiohttp_server: Any
) -> None:
    receiver = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    server = await aiohttp_server(app)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            running.base + "/api/v1/endpoints",
            json={"url": str(server.make_url("/hook")), "description": "Situation room"},
            headers={"Authorization": f"Bearer {PARTNER_KEY}"},
        ) as response,
    ):
        assert response.status == 201
        created = await response.json()

    await page.goto(running.base + "/partners")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Partner sign-in")
    await check(page, "partners-login")
    await page.get_by_label("API key").fill("not-the-key")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("That API key is not right.")
    await page.get_by_label("API key").fill(PARTNER_KEY)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Your webhook endpoints")
    [cookie] = await page.context.cookies()
    assert cookie["name"] == "warnsvc_partner" and PARTNER_KEY not in cookie["value"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/partners"
    await expect(page.get_by_role("heading", level=2, name=created["id"])).to_be_visible()
    await expect(page.get_by_role("heading", level=2, name=running.endpoint)).to_be_visible()
    await check(page, "partners")

    await page.get_by_role("link", name=f"Manage {created['id']}").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Endpoint {created['id']}")
    await page.get_by_role("button", name="Send a test").click()
    await expect(page.get_by_role("status")).to_contain_text("a test event (evt_")
    await wait_for(lambda: len(receiver.received) == 1)
    [got] = receiver.received
    assert Webhook(created["secret"]).verify(got.body, got.headers)["type"] == "webhook.test"
    rows = page.locator("#deliveries + .table-wrap tbody tr")
    for _ in range(50):  # the dispatcher records the answer just after sending
        await page.reload()
        if "HTTP 204" in await rows.first.inner_text():
            break
        await page.wait_for_timeout(100)
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("webhook.test")
    await expect(rows.first).to_contain_text("delivered")
    await expect(rows.first).to_contain_text("HTTP 204")
    await check(page, "partners-endpoint")

    await page.get_by_role("button", name="Rotate the secret").click()
    secret = await page.locator("#new-secret").inner_text()
    assert secret.startswith("whsec_") and secret != created["secret"]
    await check(page, "partners-rotated")
    await page.goto(f"{running.base}/partners/endpoints/{created['id']}")
    await expect(page.locator("#new-secret")).to_have_count(0)

    await page.goto(f"{running.base}/partners/endpoints/ep_not_theirs")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
    await page.goto(running.base + "/partners")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Partner sign-in")
