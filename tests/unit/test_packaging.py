"""Keep the Dockerfile, the Makefile, the README and CI telling the same story."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, with continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            rows.append((instruction.upper(), rest.strip()))
    return rows


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"use the exec form: {args}"
    return [str(v) for v in value]


def makefile_run_command() -> list[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^run:.*\n\t(.+)$", text, re.MULTILINE)
    assert recipe, "the Makefile has no run target"
    config = re.search(r"^CONFIG \?= (.+)$", text, re.MULTILINE)
    assert config
    command = recipe.group(1).replace("$(CONFIG)", config.group(1).strip())
    words = shlex.split(command)
    assert words[0] == "$(BIN)/warnsvc"
    return words[1:]


def test_the_image_runs_the_same_command_as_make_run() -> None:
    rows = dockerfile()
    entrypoint = exec_form(next(a for i, a in rows if i == "ENTRYPOINT"))
    cmd = exec_form(next(a for i, a in rows if i == "CMD"))
    assert entrypoint == ["warnsvc"]
    assert cmd == makefile_run_command() == ["run", "-c", "config/warnsvc.yaml"]


def test_every_file_the_image_copies_exists() -> None:
    for instruction, args in dockerfile():
        if instruction == "COPY" and not args.startswith("--from"):
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repo"


def test_the_image_is_non_root_with_healthcheck_and_volumes() -> None:
    rows = dockerfile()
    users = [a for i, a in rows if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    health = " ".join(a for i, a in rows if i == "HEALTHCHECK")
    assert "/healthz" in health
    volumes = exec_form(next(a for i, a in rows if i == "VOLUME"))
    assert volumes == ["/app/config", "/app/data", "/app/feeds"]
    # The shipped config listens where the image expects.
    env = " ".join(a for i, a in rows if i == "ENV")
    assert "WARNSVC_HOST=0.0.0.0" in env
    shipped = (ROOT / "config" / "warnsvc.yaml").read_text(encoding="utf-8")
    assert "${WARNSVC_HOST" in shipped and "${WARNSVC_PORT" in shipped


def test_readme_commands_and_ci_agree() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make run" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^make test$", ci, re.MULTILINE)


def test_every_data_file_of_the_package_is_shipped() -> None:
    """The image installs a wheel: a template, schema or migration left out of package-data
    would work from the checkout and fail in Docker."""
    import fnmatch
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["warnsvc"]
    package = ROOT / "src" / "warnsvc"
    data = [
        p.relative_to(package).as_posix()
        for p in package.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    ]
    shipped = {  # setuptools globs: '*' does not cross '/'
        p.relative_to(package).as_posix() for pat in patterns for p in package.glob(pat)
    }
    missing = [f for f in data if f not in shipped]
    assert data and missing == []
    migrations = sorted((package / "store" / "migrations" / "versions").glob("0*.py"))
    assert migrations and all(
        fnmatch.fnmatch(m.relative_to(package).as_posix(), "store/migrations/versions/*.py")
        for m in migrations
    )
