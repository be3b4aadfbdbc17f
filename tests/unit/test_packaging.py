"""Keep the Dockerfile, the Makefile, the README and CI telling the same story."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    docker = readme[readme.index("## Docker") :]
    assert f"`warnsvc {shlex.join(cmd)}`" in docker, "the README's Docker section names the CMD"


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


def test_the_starter_config_in_the_package_is_the_shipped_config() -> None:
    """`warnsvc init` writes the copy in the package (the wheel has no config/ directory); it
    must say what config/warnsvc.yaml, the file `make run` and the image run, says."""
    starter = ROOT / "src" / "warnsvc" / "starter" / "warnsvc.yaml"
    shipped = ROOT / "config" / "warnsvc.yaml"
    assert starter.read_bytes() == shipped.read_bytes(), (
        "config/warnsvc.yaml and the starter differ: after editing config/warnsvc.yaml, run "
        "cp config/warnsvc.yaml src/warnsvc/starter/warnsvc.yaml"
    )


# -- the lock file, the runtime install, the license -------------------------------------------


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def pins() -> dict[str, Version]:
    text = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    return {
        canonicalize_name(name): Version(version)
        for name, version in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.MULTILINE)
    }


def test_the_constraints_pin_every_dependency_within_pyproject() -> None:
    """constraints.txt is made from pyproject.toml by scripts/lock: a dependency added to, or
    narrowed in, pyproject.toml without re-running it fails here."""
    text = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    assert "scripts/lock" in text.split("\n\n", 1)[0], "constraints.txt: run scripts/lock"
    assert not re.search(r"^[^#\s].*\[", text, re.MULTILINE), "a constraint cannot name extras"
    project = pyproject()["project"]
    assert isinstance(project, dict)
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    pinned = pins()
    for line in requirements:
        requirement = Requirement(line.split("#")[0])
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is not in constraints.txt: run scripts/lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]}, outside {line!r}: run scripts/lock"
        )


def make_installs(target: str) -> list[list[str]]:
    """The pip installs `make TARGET` runs in a fresh checkout (a dry run: nothing is run)."""
    result = subprocess.run(
        ["make", "--dry-run", "--always-make", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    words = [shlex.split(line) for line in result.stdout.splitlines()]
    return [w for w in words if "pip" in w and "install" in w and "--upgrade" not in w]


def constrained(words: list[str]) -> bool:
    pairs = zip(words, [*words[1:], ""], strict=True)
    return any(a in ("-c", "--constraint") and b == "constraints.txt" for a, b in pairs)


def test_make_run_installs_the_runtime_only_at_the_locked_versions() -> None:
    installs = make_installs("run")
    assert installs and all(constrained(w) for w in installs), installs
    assert [w[-1] for w in installs] == ["."], installs  # warnsvc itself, no extras


def test_make_test_adds_the_dev_tools_at_the_locked_versions() -> None:
    installs = make_installs("test")
    assert installs and all(constrained(w) for w in installs), installs
    assert ".[dev]" in [w[-1] for w in installs], installs


def test_the_image_installs_the_locked_versions() -> None:
    rows = dockerfile()
    second_from = [n for n, (i, _) in enumerate(rows) if i == "FROM"][1]
    build, final = rows[:second_from], rows[second_from:]
    copied = " ".join(a for i, a in build if i == "COPY").split()
    assert "constraints.txt" in copied and "LICENSE" in copied
    wheels = [shlex.split(a) for i, a in build if i == "RUN" and "wheel" in a]
    assert wheels and all(constrained(w) for w in wheels), wheels
    installs = [shlex.split(a) for i, a in final if i == "RUN" and "install" in a]
    assert installs and all("--no-index" in w for w in installs), installs  # the wheels only


def test_the_license_file_is_the_one_pyproject_names() -> None:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge, to any person" in text
