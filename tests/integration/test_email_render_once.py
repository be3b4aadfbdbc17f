"""Rendered once per event, each mail still carries its own recipient, link and Message-ID."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.email_harness import Harness, make_event, options
from tests.smtp_sink import Sink, free_port, start_sink
from warnsvc.store.db import Store


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def sink(port: int) -> Iterator[Sink]:
    handler = Sink()
    controller = start_sink(handler, port)
    try:
        yield handler
    finally:
        controller.stop()


@pytest.mark.parametrize(
    "footer",
    [
        None,  # the built-in templates: rendered once
        "{{ recipient.name or 'Reader' }} ({{ recipient.address }}): {{ unsubscribe_url }}\n",
    ],
)
async def test_every_mail_is_personal_whether_rendered_once_or_per_recipient(
    tmp_path: Path, port: int, sink: Sink, footer: str | None
) -> None:
    templates = None
    if footer is not None:
        templates = tmp_path / "templates"
        (templates / "email").mkdir(parents=True)
        (templates / "email" / "_footer.txt").write_text(footer)
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'warnsvc.db'}")
    harness = Harness.build(store, options(port, templates_dir=templates))
    try:
        addresses = [f"reader{n}@example.org" for n in range(5)]
        await harness.subscribe(*addresses)
        await harness.emit(make_event("evt_once"))
        await harness.dispatcher.drain()
        assert [r["status"] for r in await harness.rows()] == ["delivered"] * 5
        subs = {a: await harness.subscriber(a) for a in addresses}
        ids = set()
        for received in sink.received:
            [address] = received.rcpt_tos
            sub = subs[address]
            msg = received.message()
            link = harness.mailer.options.unsubscribe_url(sub.unsubscribe_token)
            assert msg["List-Unsubscribe"] == f"<{link}>"
            assert msg["Message-ID"] == f"<evt_once.{sub.id}@example.org>"
            text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
            html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
            assert f"{sub.name} ({address}): {link}" in text if footer else link in text
            assert f'<a href="{link}">Unsubscribe</a>' in html and address in html
            ids.add(msg["Message-ID"])
        assert len(ids) == 5
    finally:
        await harness.mailer.close()
        await store.close()
