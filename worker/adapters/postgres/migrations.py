"""Versioned schema changes: the SQL files of `worker/migrations/`, applied in order, each once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from worker.adapters.postgres.common import MIGRATION_LOCK

_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("worker").joinpath("migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def _applied(conn: psycopg.Connection[Any]) -> set[int]:
    conn.execute("""
        CREATE TABLE IF NOT EXISTS schema_migration (
            version     integer PRIMARY KEY,
            name        text NOT NULL,
            applied_at  timestamptz NOT NULL DEFAULT now()
        )""")
    return {row[0] for row in conn.execute("SELECT version FROM schema_migration")}


def migrate(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Apply the migrations not applied yet, each in its own transaction; safe to run concurrently."""
    done: list[Migration] = []
    for migration in available_migrations():
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            if migration.version in _applied(conn):
                continue
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migration (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            done.append(migration)
    return done


def pending_migrations(conn: psycopg.Connection[Any]) -> list[Migration]:
    with conn.transaction():
        applied = _applied(conn)
    return [m for m in available_migrations() if m.version not in applied]
