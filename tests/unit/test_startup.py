"""What each command loads: ``--help`` and ``check-config`` start without the database, HTTP
and pipeline libraries (their speed is measured by bench/startup.py, not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("sqlalchemy", "alembic", "aiohttp", "apscheduler", "warnsvc.pipeline", "warnsvc.store")

PROBE = """
import contextlib, io, json, sys
from warnsvc.cli import main
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "out": out.getvalue(), "err": err.getvalue(),
                  "modules": sorted(sys.modules)}))
"""


def run_cli(*args: str) -> dict[str, object]:
    """Run ``warnsvc.cli.main(args)`` in a fresh interpreter; its exit code, output, modules."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def loaded(result: dict[str, object], names: tuple[str, ...]) -> list[str]:
    modules = result["modules"]
    assert isinstance(modules, list)
    return sorted(
        {name for name in names for m in modules if m == name or m.startswith(name + ".")}
    )


def test_help_loads_no_config_database_or_http_library() -> None:
    result = run_cli("--help")
    assert result["code"] == 0 and "check-config" in str(result["out"])
    assert loaded(result, (*HEAVY, "pydantic", "yaml", "warnsvc.config")) == []


def test_check_config_loads_no_database_or_http_library() -> None:
    result = run_cli("check-config", "-c", "config/warnsvc.yaml")
    assert result["code"] == 0 and "OK: 2 source(s)" in str(result["out"])
    assert loaded(result, HEAVY) == []


def test_check_config_of_a_broken_file_still_names_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "warnsvc.yaml"
    config.write_text("storage:\n  url: 'sqlite:///x.db'\n", encoding="utf-8")
    result = run_cli("check-config", "-c", str(config))
    assert result["code"] == 2
    assert str(result["err"]).startswith(f"{config}:2: storage.url: needs an async driver")
    assert loaded(result, HEAVY) == []


@pytest.mark.parametrize("command", ["status", "events", "feeds", "webhooks"])
def test_command_help_loads_no_database_library(command: str) -> None:
    result = run_cli(command, "--help")
    assert result["code"] == 0
    assert loaded(result, HEAVY) == []
