"""The relay against the real broker and database: a row Kafka refuses is parked and blocks nothing; retention
purges what hostile input can grow; the state figures and `report` survive sums beyond bigint."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from confluent_kafka import Producer
from psycopg_pool import ConnectionPool

from tests.integration.conftest import Deployment
from worker.adapters.postgres import outbox
from worker.adapters.postgres.common import open_pool
from worker.adapters.postgres.read import PostgresReadModel
from worker.adapters.postgres.retention import Retention, purge
from worker.adapters.relay import OutboxRelay

RETENTION = Retention(
    parked_outbox=dt.timedelta(days=7),
    dead_letters=dt.timedelta(days=30),
    pending_cancellations=dt.timedelta(days=30),
)


@pytest.fixture
def pool(deployment: Deployment) -> Iterator[ConnectionPool]:
    pool = open_pool(deployment.database_url, 1, 2, name="test-relay")
    yield pool
    pool.close()


def outbox_row(deployment: Deployment, topic: str, value: bytes) -> None:
    deployment.query(
        "INSERT INTO outbox (event_id, topic, message_key, message_value) VALUES (%s, %s, %s, %s) RETURNING 1",
        uuid.uuid4(),
        topic,
        b"key",
        value,
    )


def test_a_row_kafka_refuses_is_parked_counted_and_blocks_nothing(deployment: Deployment, pool: ConnectionPool) -> None:
    topic = deployment.topics["dlq"]  # read back raw, undecoded
    outbox_row(deployment, topic, b"first")
    outbox_row(deployment, topic, b"x" * 1_000_001)  # over librdkafka's message.max.bytes: produce() raises
    outbox_row(deployment, topic, b"third")
    refused: list[tuple[str, str]] = []
    producer = Producer({"bootstrap.servers": deployment.bootstrap, "enable.idempotence": True, "acks": "all"})
    relay = OutboxRelay(
        pool,
        producer,
        batch_size=100,
        interval_s=0.1,
        delivery_timeout_s=10,
        retention=RETENTION,
        on_refused=lambda t, reason: refused.append((t, reason)),
    )

    assert relay.publish_once() == 2
    assert relay.publish_once() == 0  # nothing left: the parked row is not retried, nothing is sent again
    outbox_row(deployment, topic, b"fourth")
    assert relay.publish_once() == 1

    sent = deployment.read("dlq", settle_s=3)
    assert sorted(m.raw or b"" for m in sent) == [b"first", b"fourth", b"third"]  # each exactly once
    assert refused == [(topic, "too_large")]
    # What Kafka acknowledged is deleted; the parked row stays, with its error, for an operator.
    rows = deployment.query("SELECT length(message_value), published_at, failed_at IS NOT NULL, last_error FROM outbox")
    assert len(rows) == 1
    assert rows[0][:3] == (1_000_001, None, True) and "too_large" in rows[0][3]
    with pool.connection() as conn:
        figures = PostgresReadModel(conn).state_figures()
    assert (figures.outbox_backlog, figures.outbox_parked) == (0, 1)


def test_retention_purges_what_hostile_input_can_grow(deployment: Deployment) -> None:
    old, recent = "now() - interval '40 days'", "now() - interval '1 hour'"
    with deployment.db() as conn:
        for age, failed in [(old, True), (recent, True), (old, False)]:
            conn.execute(
                f"""INSERT INTO outbox (event_id, topic, created_at, failed_at)
                    VALUES (%s, 't', {age}, {age if failed else "NULL"})""",
                (uuid.uuid4(),),
            )
        # Stamped published a minute ago by a relay of an earlier version, which kept published rows a day.
        conn.execute(
            "INSERT INTO outbox (event_id, topic, published_at) VALUES (%s, 't', now() - interval '1 minute')",
            (uuid.uuid4(),),
        )
        conn.execute("INSERT INTO outbox (event_id, topic) VALUES (%s, 't')", (uuid.uuid4(),))  # still to publish
        for offset, age in [(1, old), (2, recent)]:
            conn.execute(
                f"""INSERT INTO dead_letter (source_topic, source_partition, source_offset, error_class,
                        error_message, failed_at) VALUES ('in', 0, {offset}, 'InvalidEvent', 'x', {age})"""
            )
        for order_id, age in [("never-came", old), ("may-still-come", recent)]:
            conn.execute(
                f"""INSERT INTO pending_cancellation (order_id, event_id, line_ids, reason, requested_at, recorded_at)
                    VALUES ('{order_id}', 'e', '{{}}', 'CUSTOMER_REQUEST', now(), {age})"""
            )
        for sku, available, received in [("NAMED-ONCE", 0, 0), ("ON-HAND", 5, 5), ("SOLD-OUT", 0, 5)]:
            conn.execute(
                f"""INSERT INTO stock_level (sku, available, received_total, updated_at)
                    VALUES ('{sku}', {available}, {received}, {old})"""
            )
        conn.execute(f"INSERT INTO stock_level (sku, updated_at) VALUES ('WAITED-FOR', {old})")
        conn.execute(
            f"""INSERT INTO customer_order (order_id, customer_id, customer_tier, shipping_service, currency,
                    placed_at, event_id, order_units) VALUES ('O', 'C', 'STANDARD', 'STANDARD', 'USD', {old}, 'e', 1)"""
        )
        conn.execute(
            f"""INSERT INTO order_line (order_id, line_id, sku, product_name, quantity, unit_price_minor, status,
                    placed_at, updated_at) VALUES ('O', 'L', 'WAITED-FOR', 'p', 1, 100, 'BACKORDERED', {old}, {old})"""
        )
        conn.execute("INSERT INTO stock_level (sku) VALUES ('NAMED-TODAY')")

        purged = purge(conn, RETENTION)

    assert purged == {
        "stamped_outbox": 1,
        "parked_outbox": 1,
        "dead_letters": 1,
        "pending_cancellations": 1,
        "empty_stock_rows": 1,
    }
    # The old parked row goes; the recent parked row and both rows still to publish, however old, stay.
    assert deployment.query("SELECT count(*) FROM outbox") == [(3,)]
    assert deployment.query("SELECT source_offset FROM dead_letter") == [(2,)]
    assert deployment.query("SELECT order_id FROM pending_cancellation") == [("may-still-come",)]
    assert deployment.query("SELECT sku FROM stock_level ORDER BY 1") == [
        ("NAMED-TODAY",),
        ("ON-HAND",),
        ("SOLD-OUT",),
        ("WAITED-FOR",),
    ]


def test_state_figures_and_report_survive_amounts_beyond_bigint(deployment: Deployment) -> None:
    biggest = 2**63 - 1
    deployment.add_waiting_line("RICH", "GOLD", 2, biggest)
    with deployment.db() as conn:
        figures = PostgresReadModel(conn).state_figures()
        [gold] = PostgresReadModel(conn).sku_backlog()

    assert figures.open_value_minor_by_currency == {"USD": 2 * biggest}
    assert gold.value_minor == 2 * biggest
    report = deployment.cli("report")
    assert "current backorders: 1 orders, 1 lines, 2 units" in report


def test_a_round_reads_its_page_by_the_index_in_order_though_the_outbox_was_analyzed_empty(
    deployment: Deployment,
) -> None:
    """The outbox fills up faster than autoanalyze follows. Planned with an empty outbox's statistics, a round's
    page was a scan of every waiting row and a sort; it walks the index in order and stops at the page's end."""
    with psycopg.connect(deployment.database_url, autocommit=True, prepare_threshold=0) as conn:
        conn.execute("ALTER TABLE outbox SET (autovacuum_enabled = off)")  # the statistics stay an empty table's
        conn.execute("ANALYZE outbox")
        conn.execute(  # events' size: with 20,000 one-byte rows the planner takes the index anyway
            """INSERT INTO outbox (event_id, topic, message_key, message_value)
               SELECT gen_random_uuid(), 't', 'k', convert_to(repeat('v', 300), 'UTF8')
               FROM generate_series(1, 100000)"""
        )
        with conn.transaction():
            rows = outbox.unpublished(conn, 100, 1 << 20)
            [name] = conn.execute(
                """SELECT name FROM pg_prepared_statements
                   WHERE statement LIKE '%%bytes_before%%' AND statement NOT LIKE '%%pg_prepared_statements%%'"""
            ).fetchone() or [None]
            plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN EXECUTE {name}(100, {1 << 20})").fetchall())
        first = conn.execute("SELECT outbox_id FROM outbox ORDER BY outbox_id LIMIT 100").fetchall()
    assert [row.outbox_id for row in rows] == [row[0] for row in first]
    assert "Index Scan using outbox_unpublished" in plan and "Sort" not in plan and "Bitmap" not in plan, plan


def test_a_round_reads_up_to_its_byte_budget_and_always_one_row(deployment: Deployment, pool: ConnectionPool) -> None:
    topic = deployment.topics["dlq"]
    for i in range(5):
        outbox_row(deployment, topic, bytes([i]) * 297)  # 300 bytes with the key
    with pool.connection() as conn:
        assert len(outbox.unpublished(conn, 100, 900)) == 3  # 600 bytes before the third: it comes too
        assert len(outbox.unpublished(conn, 100, 901)) == 4
        assert len(outbox.unpublished(conn, 100, 1)) == 1  # a row larger than the budget still goes
        assert len(outbox.unpublished(conn, 2, 10_000)) == 2
        assert [r.value for r in outbox.unpublished(conn, 100, 10_000)] == [bytes([i]) * 297 for i in range(5)]
