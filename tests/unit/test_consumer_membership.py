"""The consumer's group membership: incremental rebalancing, a short session, optional static membership."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker.adapters.kafka import consumer_config, producer_config
from worker.settings import Settings


def test_defaults_rebalance_incrementally_and_notice_a_dead_member_within_10_s() -> None:
    config = consumer_config(Settings())
    assert config["partition.assignment.strategy"] == "cooperative-sticky"
    assert config["session.timeout.ms"] == 10_000
    assert config["heartbeat.interval.ms"] == 1_000
    assert "group.instance.id" not in config


def test_static_membership_from_a_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKORDER_GROUP_INSTANCE_ID", "backorder-worker-7d9f-abc12")
    monkeypatch.setenv("BACKORDER_SESSION_TIMEOUT_SECONDS", "30")
    config = consumer_config(Settings())
    assert config["group.instance.id"] == "backorder-worker-7d9f-abc12"
    assert config["session.timeout.ms"] == 30_000


def test_a_blank_instance_id_means_dynamic_membership(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKORDER_GROUP_INSTANCE_ID", " ")
    assert "group.instance.id" not in consumer_config(Settings())


def test_explicit_consumer_options_still_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKORDER_KAFKA_CONSUMER_CONFIG", '{"partition.assignment.strategy": "range"}')
    assert consumer_config(Settings())["partition.assignment.strategy"] == "range"


@pytest.mark.parametrize(("session", "heartbeat"), [("5", "1"), ("10", "10"), ("10", "12")])
def test_a_session_the_broker_refuses_or_a_heartbeat_not_below_it_is_refused(
    monkeypatch: pytest.MonkeyPatch, session: str, heartbeat: str
) -> None:
    monkeypatch.setenv("BACKORDER_SESSION_TIMEOUT_SECONDS", session)
    monkeypatch.setenv("BACKORDER_HEARTBEAT_INTERVAL_SECONDS", heartbeat)
    with pytest.raises(ValidationError):
        Settings()


def test_what_the_kafka_clients_hold_is_bounded_in_bytes_by_default() -> None:
    consumer = consumer_config(Settings())
    assert consumer["fetch.max.bytes"] == 16 * 1024 * 1024  # librdkafka's default: 50 MiB per fetch
    assert consumer["queued.max.messages.kbytes"] == 16 * 1024  # default: 64 MiB fetched ahead
    assert producer_config(Settings())["queue.buffering.max.kbytes"] == 64 * 1024  # default: 1 GiB


def test_the_memory_bounds_can_be_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKORDER_KAFKA_CONSUMER_CONFIG", '{"fetch.max.bytes": 1048576}')
    monkeypatch.setenv("BACKORDER_KAFKA_PRODUCER_CONFIG", '{"queue.buffering.max.kbytes": 2048}')
    assert consumer_config(Settings())["fetch.max.bytes"] == 1_048_576
    assert producer_config(Settings())["queue.buffering.max.kbytes"] == 2048
