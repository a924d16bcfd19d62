"""`auto` against real brokers: the classic protocol where the broker keeps Kafka's own session bounds (45-60 s,
heartbeats of 5-15 s), KIP-848 where it takes the worker's session. (On the local stack's broker, which takes a
10 s session, test_concurrent_workers sees the workers choose KIP-848.)"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import localstack
import pytest
from confluent_kafka.admin import AdminClient

from worker.adapters.kafka import admin_config, choose_group_protocol
from worker.settings import Settings


@pytest.fixture(scope="module")
def stock_broker() -> Iterator[localstack.KafkaBroker]:
    """A broker with Kafka's own bounds for KIP-848 groups' sessions and heartbeats."""
    with tempfile.TemporaryDirectory(prefix="backorder-kafka-") as workdir:
        broker = localstack.KafkaBroker(Path(workdir) / "kafka", heap="512m", group_settings={})
        broker.start()
        yield broker
        broker.stop()


def _settings(broker: localstack.KafkaBroker, monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    monkeypatch.setenv("BACKORDER_GROUP_ID", "auto-protocol")
    monkeypatch.setenv("DATABASE_URL", "postgresql://unused@127.0.0.1/unused")  # not reached
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_auto_keeps_the_classic_protocol_where_the_broker_refuses_the_workers_session(
    stock_broker: localstack.KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(stock_broker, monkeypatch)  # the defaults: a 10 s session, 1 s heartbeats
    choice = choose_group_protocol(settings, AdminClient(admin_config(settings)))
    assert choice.protocol == "classic"
    assert "refused the group's session and heartbeat" in choice.why and "group.consumer.min." in choice.why


def test_auto_takes_kip_848_where_the_broker_takes_the_session(
    stock_broker: localstack.KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(
        stock_broker,
        monkeypatch,
        BACKORDER_SESSION_TIMEOUT_SECONDS="45",
        BACKORDER_HEARTBEAT_INTERVAL_SECONDS="5",
    )
    assert choose_group_protocol(settings, AdminClient(admin_config(settings))).protocol == "consumer"
