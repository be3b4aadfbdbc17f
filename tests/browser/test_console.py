"""The operator console in a real browser: sign in, then redeliver a dead letter."""

from __future__ import annotations

from playwright.async_api import Page, expect
from sqlalchemy import select

from tests.browser.conftest import CONSOLE_TOKEN, Check, Running
from warnsvc.store import schema


async def delivery_status(running: Running) -> str:
    parts = running.service.parts
    assert parts is not None
    outbox = schema.outbox
    async with parts.store.engine.connect() as conn:
        query = select(outbox.c.status).where(outbox.c.id == running.dead_letter)
        status: str = (await conn.execute(query)).scalar_one()
    return status


async def test_sign_in_and_redeliver_a_dead_letter(
    running: Running, page: Page, check: Check
) -> None:
    await page.goto(running.base + "/console")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    await check(page, "console-login")

    await page.get_by_label("Console token").fill("not-the-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("That token is not right.")

    await page.get_by_label("Console token").fill(CONSOLE_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Operator console")
    [cookie] = await page.context.cookies()
    assert cookie["name"] == "warnsvc_console" and CONSOLE_TOKEN not in cookie["value"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
    assert cookie["path"] == "/console"
    dead = page.locator("#dead + .table-wrap tbody tr")
    await expect(dead).to_have_count(1)
    await expect(dead).to_contain_text(running.endpoint)
    await expect(dead).to_contain_text("500 after 8 attempt(s)")
    await check(page, "console")

    assert await delivery_status(running) == "dead"
    await page.get_by_role("button", name=f"Redeliver delivery {running.dead_letter}").click()
    await expect(page.get_by_role("status")).to_contain_text(
        f"delivery {running.dead_letter} to {running.endpoint} is queued again"
    )
    assert await delivery_status(running) != "dead"
    await expect(page.get_by_text("No dead letters.")).to_be_visible()

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
