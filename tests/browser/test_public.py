"""The public pages in a real browser: accessible, responsive, and the subscribe flow."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from playwright.async_api import Page, expect

from tests.browser.conftest import Check, Running, wait_for
from warnsvc.manual import publish


async def test_every_public_page_is_accessible_at_both_widths(
    running: Running, page: Page, check: Check
) -> None:
    await page.goto(running.base + "/")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Situations")
    sections = page.locator("section.group h2 .level")
    await expect(sections).to_have_text(["Current Crisis", "Serious Concern", "Not listed"])
    await check(page, "home")

    await page.get_by_role("link", name="Sudan", exact=True).click()
    await expect(page).to_have_url(re.compile(r"/situations/gcr2p(:|%3A)sudan$"))
    chart = page.get_by_role("img", name="Level history of Sudan")
    await expect(chart).to_be_visible()
    await expect(page.locator("table.history tbody tr")).to_have_count(2)
    await check(page, "situation")

    await page.goto(running.base + "/situations/gcr2p:hostile")  # markup from a source
    await expect(page.get_by_role("heading", level=1)).to_contain_text("<script>")
    await check(page, "hostile")

    await page.goto(running.base + "/subscribe")
    await check(page, "subscribe")

    await page.goto(running.base + "/feeds/alerts.atom")
    await expect(page.get_by_role("heading", name="How to follow this feed")).to_be_visible()
    await check(page, "feed")

    await page.goto(running.base + "/situations/gcr2p:nowhere")
    await check(page, "not-found")


async def test_subscribe_confirm_and_unsubscribe_by_clicking(running: Running, page: Page) -> None:
    sink = running.sink
    await page.goto(running.base + "/situations/gcr2p:sudan")
    await page.get_by_role("link", name="Get email alerts for Sudan").click()
    await expect(page.get_by_role("checkbox", name="Sudan")).to_be_checked()
    await expect(page.get_by_role("checkbox", name="Gone Land")).not_to_be_checked()
    await page.get_by_label("Email address").fill("ana@example.org")
    await page.get_by_role("button", name="Subscribe").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")

    await wait_for(lambda: len(sink.received) == 1)
    mail = sink.received[0]
    assert mail.rcpt_tos == ["ana@example.org"]
    body = mail.message().get_body(("plain",))
    assert body is not None
    text = body.get_content()
    base = re.escape(running.base)
    confirm = re.search(rf"{base}/email/confirm\?token=[\w-]+", text)
    assert confirm is not None

    await page.goto(confirm.group(0))
    await page.get_by_role("button", name="Confirm").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Subscription confirmed")

    parts = running.service.parts  # an operator announces a change in Sudan: Ana is mailed
    assert parts is not None
    now = datetime.now(UTC)
    await publish(parts, situation="gcr2p:sudan", level="imminent-risk", note="Talks.", now=now)
    parts.dispatcher.wake()
    await wait_for(lambda: len(sink.received) == 2)
    alert = sink.received[1].message()
    assert "Sudan" in str(alert["Subject"])
    unsubscribe = re.search(
        rf"<({base}/email/unsubscribe\?token=[\w-]+)>", alert["List-Unsubscribe"]
    )
    assert unsubscribe is not None

    await page.goto(unsubscribe.group(1))
    await page.get_by_role("button", name="Unsubscribe").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Unsubscribed")
