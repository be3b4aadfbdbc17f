"""The schema's Alembic migrations (``versions/``), and whether a database needs them.

Importing Alembic (and Mako with it) takes about a third of a second and 9 MB that a process
keeps for its whole life. A service that starts on a database already at the newest revision,
the usual case, needs none of it: :func:`head_revisions` reads the heads from the scripts'
``revision`` and ``down_revision`` assignments without importing them, :func:`current_revisions`
reads the database's ``alembic_version``, and only when they differ does :func:`upgrade` bring
Alembic in.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import sys
from pathlib import Path

from sqlalchemy import Connection, inspect, text

from warnsvc.errors import StoreError

MIGRATIONS = Path(__file__).parent
VERSIONS = MIGRATIONS / "versions"
VERSION_TABLE = "alembic_version"


@functools.cache
def head_revisions() -> frozenset[str]:
    """The revisions no script revises: what ``alembic upgrade heads`` brings a database to."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for script in sorted(VERSIONS.glob("*.py")):
        values = _assignments(script, ("revision", "down_revision"))
        revision = values.get("revision")
        if not isinstance(revision, str):
            continue  # __init__.py
        revisions.add(revision)
        down = values.get("down_revision")
        if isinstance(down, str):
            revised.add(down)
        elif isinstance(down, tuple | list):  # a merge revises several
            revised.update(str(parent) for parent in down)
    return frozenset(revisions - revised)


def _assignments(script: Path, names: tuple[str, ...]) -> dict[str, object]:
    """The literal values assigned to ``names`` at the top level of ``script``."""
    tree = ast.parse(script.read_text(encoding="utf-8"), filename=str(script))
    values: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in names:
            values[target.id] = ast.literal_eval(value)
    return values


def current_revisions(connection: Connection) -> frozenset[str]:
    """The revisions the database is stamped with; none for a new database."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return frozenset()
    rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()
    return frozenset(rows)


def upgrade(connection: Connection) -> None:
    """Run the migrations the database lacks, in ``connection``'s transaction.

    Raises :class:`StoreError` when Alembic refuses, e.g. for a database stamped by a newer
    warnsvc with a revision these scripts do not know.
    """
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    try:
        command.upgrade(config, "heads")
    except CommandError as exc:
        raise StoreError(f"cannot migrate the database: {exc}") from exc


async def upgrade_apart(url: str, *, log_level: str = "info", log_format: str = "text") -> None:
    """Run the migrations in a child process (``python -m warnsvc.store.migrations``), so that
    this one never imports Alembic. The URL, which may hold a password, goes on its stdin.

    Raises :class:`StoreError` with the child's words when it fails.
    """
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "warnsvc.store.migrations",
        log_level,
        log_format,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await child.communicate(url.encode("utf-8"))
    if child.returncode != 0:
        words = out.decode("utf-8", "replace").strip()
        raise StoreError(words or f"cannot migrate the database: exit status {child.returncode}")
