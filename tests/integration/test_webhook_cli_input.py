"""``warnsvc webhooks add`` refuses what the partner API refuses: control characters in text,
whitespace or control characters in the URL; nothing is stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.webhook_helpers import settings_text
from warnsvc.cli import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "warnsvc.yaml"
    path.write_text(settings_text(tmp_path))
    return path


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["https://127.0.0.1/crlf\r\nX-Injected: 1"], "url must not contain whitespace"),
        (["https://127.0.0.1/a b"], "url must not contain whitespace"),
        (["https://127.0.0.1/x", "--description", "\x1b[2Jall clear"], "--description must not"),
        (["https://127.0.0.1/x", "--situation", "gcr2p:\x00"], "--situation must not"),
        (["https://127.0.0.1/x", "--source", "gcr2p\x7f"], "--source must not"),
    ],
)
def test_add_refuses_control_characters(
    config: Path, capsys: pytest.CaptureFixture[str], extra: list[str], fragment: str
) -> None:
    assert main(["webhooks", "add", *extra, "-c", str(config)]) == 2
    assert fragment in capsys.readouterr().err
    assert main(["webhooks", "list", "--json", "-c", str(config)]) == 0
    assert capsys.readouterr().out == ""  # nothing stored


def test_add_keeps_ordinary_text(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["webhooks", "add", "https://127.0.0.1/x", "--description", "Salle de crise — ✓"]
    assert main([*argv, "-c", str(config)]) == 0
    assert capsys.readouterr().out.startswith("created ep_")
