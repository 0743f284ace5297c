"""The warehouse's schema and the SQL files that make it, in ``embedsweep/sql``.

``NNNN_*.sql`` files are migrations: they change tables only, are applied in order, once each,
and are recorded in ``schema_migrations``. ``views.sql`` holds the current definition of every
view, in dependency order; it is run after the migrations whenever a warehouse's views differ
from it, so a view is changed in that one file. ``statements.sql`` holds the named statements
the store runs, every value bound with ``?``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import duckdb

from embedsweep.errors import ConfigError, EmbedsweepError

__all__ = [
    "Migration",
    "check_current",
    "migrate",
    "migrations",
    "scalar",
    "statement",
    "view_names",
    "views_sql",
]

_MIGRATION_NAME = re.compile(r"^(\d{4})_[A-Za-z0-9_]+\.sql$")
_STATEMENT_HEADER = re.compile(r"^--\s*name:\s*([a-z_]+)\s*$")
_VIEW_HEADER = re.compile(r"^CREATE OR REPLACE VIEW ([a-z_]+) AS$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    """One schema migration file shipped in ``embedsweep/sql``."""

    version: int
    name: str
    sql: str


def _sql_dir() -> Traversable:
    return resources.files("embedsweep").joinpath("sql")


@cache
def migrations() -> tuple[Migration, ...]:
    """The packaged migrations in version order."""
    found: dict[int, Migration] = {}
    for entry in _sql_dir().iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            # Two files with one number would apply in an arbitrary order: a packaging bug.
            raise EmbedsweepError(f"two migrations numbered {version:04d} in embedsweep/sql")
        found[version] = Migration(version, entry.name, entry.read_text(encoding="utf-8"))
    return tuple(found[v] for v in sorted(found))


@cache
def _statements() -> dict[str, str]:
    text = _sql_dir().joinpath("statements.sql").read_text(encoding="utf-8")
    statements: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        header = _STATEMENT_HEADER.match(line)
        if header is not None:
            current = statements.setdefault(header.group(1), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in statements.items()}


def statement(name: str) -> str:
    """The statement of ``statements.sql`` under the header ``-- name: NAME``."""
    return _statements()[name]


def scalar(con: duckdb.DuckDBPyConnection, name: str, params: list[object] | None = None) -> Any:
    """The first value of the named statement's result (None when it has no rows)."""
    # fetchall, not fetchone: DuckDB 2.0 streams results and refuses the next statement on a
    # connection whose last result was not read to the end.
    rows = con.execute(statement(name), params).fetchall()
    return rows[0][0] if rows else None


@cache
def views_sql() -> str:
    """The text of ``views.sql``: one ``CREATE OR REPLACE VIEW`` per view, in dependency order."""
    return _sql_dir().joinpath("views.sql").read_text(encoding="utf-8")


@cache
def view_names() -> tuple[str, ...]:
    """The views ``views.sql`` defines, in the order it creates them."""
    return tuple(_VIEW_HEADER.findall(views_sql()))


def _missing_views(con: duckdb.DuckDBPyConnection) -> list[str]:
    present = {str(row[0]) for row in con.execute(statement("view_names")).fetchall()}
    return [name for name in view_names() if name not in present]


def _applied_versions(con: duckdb.DuckDBPyConnection) -> set[int]:
    rows = con.execute(statement("applied_migrations")).fetchall()
    return {int(row[0]) for row in rows}


def _run_in_transaction(
    con: duckdb.DuckDBPyConnection, *sql: tuple[str, list[object] | None]
) -> None:
    # DDL is transactional in DuckDB: a failing step leaves the schema as it was.
    con.begin()
    try:
        for text, params in sql:
            con.execute(text, params)
        con.commit()
    except BaseException:
        con.rollback()
        raise


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Apply the pending migrations, each in its own transaction, then (re)create the views of
    ``views.sql`` when a migration ran or a view is missing. CON must be a read-write connection
    outside a transaction."""
    con.execute(statement("create_schema_migrations"))
    applied = _applied_versions(con)
    # Older warehouses carry the views their migrations created. DuckDB (2.0) binds a view when it
    # is queried and lets a table under a view change, but dropping them first means no migration
    # relies on that; the drop is undone with a migration that fails.
    drop_views = [(f"DROP VIEW IF EXISTS {name}", None) for name in reversed(view_names())]
    migrated = False
    for migration in migrations():
        if migration.version in applied:
            continue
        migrated = True
        now = datetime.now(UTC).replace(tzinfo=None)
        _run_in_transaction(
            con,
            *drop_views,
            (migration.sql, None),
            (statement("record_migration"), [migration.version, migration.name, now]),
        )
    # Not on every open: a writer opens the warehouse for every ingest, and two connections of one
    # process replacing the same views at once conflict (a catalog write-write conflict). DuckDB
    # renders a stored view its own way, differently once reloaded, so a warehouse's views cannot
    # be compared with views.sql as text: a change to views.sql ships with a migration (one that
    # only says what changed will do), and that is what brings an existing warehouse's views up.
    if migrated or _missing_views(con):
        _run_in_transaction(con, (views_sql(), None))


def check_current(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Raise :class:`ConfigError` unless CON's warehouse has every migration and every view (a
    read-only open checks; only a writer can bring it up to date)."""
    applied = _applied_versions(con) if scalar(con, "has_schema_migrations") else set()
    missing = [m.name for m in migrations() if m.version not in applied]
    if missing:
        raise ConfigError(
            f"warehouse {path} predates this embedsweep (missing {', '.join(missing)}); "
            "open it read-write once (ingest a run) to migrate it"
        )
    lost = _missing_views(con)
    if lost:
        raise ConfigError(
            f"warehouse {path} lacks the view(s) {', '.join(lost)}; "
            "open it read-write once (ingest a run) to re-create them"
        )
