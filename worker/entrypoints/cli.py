"""The `backorder-worker` command: migrate, topics, run, serve, settings, and the operators' queue, simulate,
decisions, promise."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence

import structlog
from pydantic import ValidationError
from pydantic_settings import SettingsError

from worker.domain.model import CustomerTier, ShippingService, SplitPreference
from worker.entrypoints.logs import configure_logging
from worker.service.ports import Decision
from worker.settings import Settings, masked_database_url, masked_user_info

log = structlog.get_logger(__name__)


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from worker.bootstrap import migrate_database

    applied = migrate_database(settings)
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


def _schemas(settings: Settings, _args: argparse.Namespace) -> int:
    from worker.adapters.schema_registry import RegistrationRefused, register_all, registry_client, topic_records

    if settings.schema_registry_url is None:
        print("backorder-worker: schemas register needs BACKORDER_SCHEMA_REGISTRY_URL", file=sys.stderr)
        return 2
    try:
        with registry_client(settings) as client:
            registered = register_all(client, topic_records(settings))
    except RegistrationRefused as exc:
        print(f"backorder-worker: the schema registry refused a version: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # not answering, TLS, credentials: say so, as an operator command does
        print(f"backorder-worker: the schema registry did not answer: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for r in registered:
        log.info("schema_registered", subject=r.subject, schema=r.schema, id=r.schema_id)
    log.info("schemas_registered", versions=len(registered), compatibility="BACKWARD_TRANSITIVE")
    return 0


def _run(settings: Settings, _args: argparse.Namespace) -> int:
    from worker.bootstrap import SchemaNotMigrated, WorkerUnhealthy, run_worker

    try:
        run_worker(settings)
    except SchemaNotMigrated as exc:
        log.error("schema_not_migrated", error=str(exc))
        return 2
    except WorkerUnhealthy as exc:  # a background loop died or stalled: exit so that a supervisor restarts us
        log.error("worker_unhealthy_exit", reason=str(exc))
        return 3
    return 0


def _queue(settings: Settings, args: argparse.Namespace) -> int:
    from worker.bootstrap import open_read_model, utc_now
    from worker.service.views import queue

    now = utc_now()
    with open_read_model(settings) as read:
        found = queue(read, args.sku, settings.shop_policy(), now)
    entries = found.entries
    rows = [
        (
            str(e.position),
            e.order_id,
            e.line_id,
            str(e.rank),
            _age(e.waited),
            str(e.wants),
            str(e.reserved),
            f"{e.value_minor / 100:.2f}",
            e.split,
            e.reason,
        )
        for e in entries
    ]
    _table(["#", "order", "line", "rank", "age", "wants", "reserved", "value", "split", "reason"], rows)
    print(
        f"{len(entries)} lines waiting for {args.sku}: {sum(e.wants for e in entries)} units, "
        f"{sum(e.value_minor for e in entries) / 100:.2f} in value"
    )
    if found.promised_lines:
        print(
            f"{found.promised_lines} more lines are promised {found.promised_units} units by a receipt given in "
            "steps, and get them as its next steps are given"
        )
    return 0


def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    from worker.bootstrap import utc_now, what_if
    from worker.service.views import simulate_receipt

    if args.receive <= 0:
        print("backorder-worker: --receive must be > 0", file=sys.stderr)
        return 2
    with what_if(settings) as (uow, read):
        simulated = simulate_receipt(uow, read, args.sku, args.receive, settings.shop_policy(), utc_now())
    _print_decisions(simulated.decisions)
    given = sum(d.quantity for d in simulated.decisions)
    print(
        f"a receipt of {args.receive} {args.sku} would give {given} units to {len(simulated.decisions)} lines; "
        f"{simulated.on_hand_before} on hand before it, {simulated.on_hand_after} after (nothing was changed)"
    )
    return 0


def _decisions(settings: Settings, args: argparse.Namespace) -> int:
    from worker.bootstrap import open_read_model

    with open_read_model(settings) as read:
        decisions = read.decisions(order_id=args.order, sku=args.sku)
    _print_decisions(decisions)
    return 0


def _print_decisions(decisions: list[Decision]) -> None:
    rows = [
        (
            d.at.strftime("%Y-%m-%d %H:%M") if d.at else "",
            d.order_id,
            d.line_id,
            d.sku,
            str(d.quantity),
            str(d.shipped),
            str(d.reserved),
            d.reason or "",
            d.cause,
        )
        for d in decisions
    ]
    _table(["when", "order", "line", "sku", "given", "shipped", "reserved", "reason", "cause"], rows)


def _age(age: dt.timedelta) -> str:
    return f"{age.days}d" if age.days else f"{int(age.total_seconds() // 3600)}h"


def _table(header: list[str], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    for row in [tuple(header), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _sweep(settings: Settings, args: argparse.Namespace) -> int:
    from worker.bootstrap import open_store, utc_now
    from worker.service.handlers import sweep_once

    as_of = args.as_of or utc_now()
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=dt.UTC)
    with open_store(settings) as store:
        sent = sweep_once(store, settings.shop_policy(), as_of, wait=True)
    log.info("swept", as_of=as_of.isoformat(), events=sent)
    return 0


def _preview(_settings: Settings, args: argparse.Namespace) -> int:
    from worker.domain.events import NotificationType
    from worker.entrypoints.preview import render, sample

    print(render(sample(NotificationType(args.type))))
    return 0


def _report(settings: Settings, _args: argparse.Namespace) -> int:
    from worker.bootstrap import open_read_model
    from worker.service.views import tracking_view

    with open_read_model(settings) as read:
        figures = read.state_figures()
        skus = read.sku_backlog()
        backordered_lines, cancelled_lines = read.cancelled_backorders()
    for line in tracking_view(figures, backordered_lines, cancelled_lines):
        print(line)
    print()
    _table(
        ["sku", "orders", "lines", "units", "value", "oldest", "on hand", "promised", "next restock"],
        [
            (
                s.sku,
                str(s.orders),
                str(s.lines),
                str(s.units),
                f"{s.value_minor / 100:,.2f} {s.currency}",
                f"{s.oldest_days}d",
                str(s.available),
                str(s.promised),
                f"{s.next_restock_units} on {s.next_restock.isoformat()}" if s.next_restock else "none expected",
            )
            for s in skus
        ],
    )
    return 0


def _settings(settings: Settings, _args: argparse.Namespace) -> int:
    # The dump masks every secret (SecretStr fields, secret librdkafka options); the database URL is
    # shown with only its password masked, so that an operator can see where the worker connects.
    shown = settings.model_dump(mode="json")
    shown["database_url"] = masked_database_url(settings.database_url.get_secret_value())
    if settings.schema_registry_url is not None:
        shown["schema_registry_url"] = masked_database_url(settings.schema_registry_url)
    if settings.schema_registry_basic_auth_user_info is not None:
        user_info = settings.schema_registry_basic_auth_user_info.get_secret_value()
        shown["schema_registry_basic_auth_user_info"] = masked_user_info(user_info)
    print(json.dumps(shown, indent=2, sort_keys=True))
    return 0


def _serve(settings: Settings, _args: argparse.Namespace) -> int:
    from worker.bootstrap import SchemaNotMigrated, serve_promises

    try:
        serve_promises(settings)
    except SchemaNotMigrated as exc:
        log.error("schema_not_migrated", error=str(exc))
        return 2
    return 0


def _cart_line(text: str) -> dict[str, object]:
    sku, sep, quantity = text.rpartition(":")
    if not sep or not sku or not quantity.strip().lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"expected SKU:QUANTITY, got {text!r}")
    return {"sku": sku, "quantity": int(quantity)}


def _promise(settings: Settings, args: argparse.Namespace) -> int:
    from pydantic import ValidationError as InvalidCart

    from worker.bootstrap import promise_snapshots, utc_now
    from worker.entrypoints.api import CartRequest, promise_for, validation_errors

    asked = {
        "customer_id": args.customer,
        "customer_tier": args.tier,
        "shipping_service": args.service,
        "need_by": args.need_by,
        "split_preference": args.split,
        "lines": args.line,
    }
    try:
        cart = CartRequest.model_validate({k: v for k, v in asked.items() if v is not None})
    except InvalidCart as exc:
        for error in validation_errors(exc.errors()):
            print(f"backorder-worker: {error['field']}: {error['msg']}", file=sys.stderr)
        return 2
    with promise_snapshots(settings, 1) as snapshots:
        answer = promise_for(cart, snapshots, settings.shop_policy(), utc_now())
    _table(
        ["line", "sku", "wants", "now", "backordered", "accepted", "rejected", "expected", "rank", "reason"],
        [
            (
                line.line_id,
                line.sku,
                str(line.quantity),
                str(line.ships_now),
                str(line.backordered),
                "yes" if line.accepted else "no",
                str(line.rejected),
                line.expected_ship_date.isoformat() if line.expected_ship_date else "unknown",
                str(line.rank) if line.rank is not None else "",
                line.reason or "",
            )
            for line in answer.lines
        ],
    )
    first = answer.first_shipment_date.isoformat() if answer.first_shipment_date else "unknown"
    whole = answer.ship_complete_date.isoformat() if answer.ship_complete_date else "unknown"
    print(f"first shipment: {first}; whole order shipped: {whole}")
    print(f"as of {answer.as_of:%Y-%m-%d %H:%M:%S} UTC; nothing was reserved or changed")
    return 0


def build_parser() -> argparse.ArgumentParser:
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
    schemas = sub.add_parser("schemas", help="the Avro schemas in the Schema Registry")
    schemas_sub = schemas.add_subparsers(dest="action", required=True)
    schemas_sub.add_parser(
        "register",
        help="register every schema version in order under <topic>-value, with BACKWARD_TRANSITIVE compatibility",
    )
    sub.add_parser("settings", help="print the effective settings (secrets masked) as JSON")
    queue = sub.add_parser("queue", help="print an SKU's backorder queue in allocation order")
    queue.add_argument("--sku", required=True)
    simulate = sub.add_parser("simulate", help="print what a receipt would allocate, changing nothing")
    simulate.add_argument("--sku", required=True)
    simulate.add_argument("--receive", type=int, required=True, metavar="UNITS")
    decisions = sub.add_parser("decisions", help="print the recorded allocation decisions of an order or SKU")
    which = decisions.add_mutually_exclusive_group(required=True)
    which.add_argument("--order")
    which.add_argument("--sku")
    sweep = sub.add_parser(
        "sweep",
        help="the time-driven work (releases, stale backorders, passed dates, status updates), now or as of a time",
    )
    sweep.add_argument(
        "--as-of",
        type=dt.datetime.fromisoformat,
        metavar="TIMESTAMP",
        help="ISO 8601 time to sweep as of (UTC if no zone); default now",
    )
    sub.add_parser("report", help="print the backlog: the tracking view and a table per SKU")
    sub.add_parser("serve", help="serve the promise API (POST /v1/promise) until SIGTERM")
    promise = sub.add_parser("promise", help="print what the shop can promise for a cart now, reserving nothing")
    promise.add_argument("--customer", required=True, metavar="CUSTOMER_ID")
    promise.add_argument("--tier", choices=list(CustomerTier), help="default STANDARD")
    promise.add_argument("--service", choices=list(ShippingService), help="shipping service, default STANDARD")
    promise.add_argument("--need-by", metavar="DATE", help="ISO date the customer needs the order by")
    promise.add_argument("--split", choices=list(SplitPreference), help="default: the product's or the shop's")
    promise.add_argument(
        "--line", type=_cart_line, action="append", required=True, metavar="SKU:QTY", help="a cart line (repeat)"
    )
    preview = sub.add_parser("preview", help="render a sample customer notification as the plain-text e-mail")
    preview.add_argument(
        "type",
        choices=[
            "BACKORDER_CONFIRMED",
            "BACKORDER_STATUS_UPDATE",
            "BACKORDER_ETA_CHANGED",
            "BACKORDER_ALLOCATED",
            "ORDER_SHIPPED",
            "BACKORDER_CANCELLED",
            "BACKORDER_REJECTED",
        ],
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    try:
        settings = Settings()
    except (ValidationError, SettingsError) as exc:
        print(f"backorder-worker: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    commands = {
        "migrate": _migrate,
        "topics": _topics,
        "run": _run,
        "schemas": _schemas,
        "settings": _settings,
        "queue": _queue,
        "simulate": _simulate,
        "decisions": _decisions,
        "sweep": _sweep,
        "preview": _preview,
        "report": _report,
        "serve": _serve,
        "promise": _promise,
    }
    return commands[args.command](settings, args)
