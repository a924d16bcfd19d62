"""The `backorder-worker` command: migrate, topics, run, settings."""

from __future__ import annotations

import argparse
import json
import sys

import psycopg
import structlog
from pydantic import ValidationError

from worker.entrypoints.logs import configure_logging
from worker.settings import Settings

log = structlog.get_logger(__name__)


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from worker.adapters.postgres import migrate

    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        applied = migrate(conn)
    for migration in applied:
        log.info("migration_applied", version=migration.version, name=migration.name)
    log.info("schema_current", applied_now=len(applied))
    return 0


def _topics(settings: Settings, args: argparse.Namespace) -> int:
    from worker.adapters.kafka import create_topics

    partitions = args.partitions or settings.topic_partitions
    replication = args.replication_factor or settings.topic_replication_factor
    for name, state in create_topics(settings, partitions, replication).items():
        log.info("topic", name=name, state=state, partitions=partitions)
    return 0


def _run(settings: Settings, _args: argparse.Namespace) -> int:
    from worker.bootstrap import SchemaNotMigrated, run_worker

    try:
        run_worker(settings)
    except SchemaNotMigrated as exc:
        log.error("schema_not_migrated", error=str(exc))
        return 2
    return 0


def _settings(settings: Settings, _args: argparse.Namespace) -> int:
    print(json.dumps(settings.model_dump(mode="json"), indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="backorder-worker",
        description="Keeps the backorder queue of an "
        "order system and allocates arriving stock. Configured by environment "
        "variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply the database migrations that are not applied yet")
    topics = sub.add_parser("topics", help="create the worker's topics that do not exist yet")
    topics.add_argument("--partitions", type=int, help="partitions per topic (default BACKORDER_TOPIC_PARTITIONS)")
    topics.add_argument(
        "--replication-factor",
        type=int,
        help="replicas per partition (default BACKORDER_TOPIC_REPLICATION_FACTOR)",
    )
    sub.add_parser("run", help="consume, allocate, publish through the outbox, serve /metrics")
    sub.add_parser("settings", help="print the effective settings (secrets masked) as JSON")
    args = parser.parse_args(argv)

    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"backorder-worker: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    commands = {"migrate": _migrate, "topics": _topics, "run": _run, "settings": _settings}
    return commands[args.command](settings, args)
