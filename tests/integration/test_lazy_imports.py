"""What a service loads is what its config uses: built in a fresh interpreter, a service without
an email section loads no SMTP client or template engine, and a source kind's module (with its
parsing libraries) is loaded only when a source of that kind is configured, and the scheduler, the
cluster and the web server only by ``warnsvc run`` (building the parts, as ``poll --once`` does,
loads none of them). The config is still checked as a whole: an unknown kind fails
``check-config``, before anything runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from warnsvc.config import SOURCE_KINDS
from warnsvc.sources.registry import KINDS, get_kind

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import asyncio, json, sys
from warnsvc.config import load_config
from warnsvc.service import build_components

async def main() -> None:
    parts = await build_components(load_config(sys.argv[1]))
    await parts.close()

asyncio.run(main())
print(json.dumps(sorted(sys.modules)))
"""

EMAIL_CODE = ("aiosmtplib", "jinja2", "warnsvc.mail.smtp", "warnsvc.channels.email")
FEED_KIND = ("feedparser", "defusedxml", "warnsvc.sources.feed")
OTHER_KINDS = ("warnsvc.sources.cap", "warnsvc.sources.gcr2p", "warnsvc.sources.jsonapi")
ORM = ("sqlalchemy.orm", "sqlalchemy.ext.asyncio")  # the store uses Core only (store/aio.py)
SERVING = ("apscheduler", "aiohttp.web", "warnsvc.cluster", "warnsvc.web.app", "warnsvc.web.api")

PAGE_SOURCE = """
  - id: page-1
    kind: page
    url: http://127.0.0.1:9/page
    scale: gcr2p
    block: article
    fields:
      title: {css: h2}
      level: {css: .risk}
"""
FEED_SOURCE = """
  - id: feed-1
    kind: feed
    url: http://127.0.0.1:9/feed.xml
    scale: gcr2p
"""
EMAIL = """
email:
  smtp: {host: 127.0.0.1, port: 2525, security: none}
  from_address: alerts@example.org
"""


def write_config(folder: Path, sources: str, extra: str = "") -> Path:
    path = folder / "warnsvc.yaml"
    path.write_text(
        "service: {name: lazy, base_url: 'http://127.0.0.1:8080'}\n"
        f"storage: {{url: 'sqlite+aiosqlite:///{folder}/warnsvc.db'}}\n"
        f"feeds: {{dir: '{folder}/feeds'}}\n"
        f"sources:{sources}{extra}",
        encoding="utf-8",
    )
    return path


def modules_after_build(config: Path) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_a_service_loads_only_the_code_its_config_uses(tmp_path: Path) -> None:
    loaded = modules_after_build(write_config(tmp_path, PAGE_SOURCE))
    assert "warnsvc.sources.page" in loaded
    assert loaded.isdisjoint(
        {*EMAIL_CODE, *FEED_KIND, *OTHER_KINDS, *ORM, *SERVING, "lxml", "feedgen"}
    )


def test_email_and_a_feed_source_load_their_code(tmp_path: Path) -> None:
    loaded = modules_after_build(write_config(tmp_path, PAGE_SOURCE + FEED_SOURCE, EMAIL))
    assert loaded.issuperset({*EMAIL_CODE, *FEED_KIND})
    assert loaded.isdisjoint(OTHER_KINDS)


def test_the_registry_knows_every_kind_the_config_accepts() -> None:
    assert list(KINDS) == list(SOURCE_KINDS)
    for kind in SOURCE_KINDS:
        assert get_kind(kind).kind == kind


def test_an_unknown_kind_still_fails_check_config_with_its_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, PAGE_SOURCE + FEED_SOURCE.replace("kind: feed", "kind: nope"))
    done = subprocess.run(
        [sys.executable, "-m", "warnsvc", "check-config", "-c", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"{config}:15: sources[1].kind: unknown kind 'nope'" in done.stdout + done.stderr
