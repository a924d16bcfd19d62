"""The consumer's group membership: incremental rebalancing, a short session, optional static membership, and the
KIP-848 protocol where the brokers allow it."""

from __future__ import annotations

import concurrent.futures
import json
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import ConfigEntry, ConfigResource, ResourceType
from pydantic import ValidationError

from worker.adapters.kafka import choose_group_protocol, consumer_config, producer_config, set_group_session
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


def test_the_kip_848_protocol_leaves_the_assignment_and_the_session_to_the_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BACKORDER_GROUP_PROTOCOL", "consumer")
    monkeypatch.setenv("BACKORDER_GROUP_INSTANCE_ID", "backorder-worker-0")
    config = consumer_config(Settings(kafka_bootstrap_servers="127.0.0.1:9"))
    assert config["group.protocol"] == "consumer"
    assert config["group.remote.assignor"] == "range"  # every worker a share of every topic
    assert config["group.instance.id"] == "backorder-worker-0"
    for classic in ("partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms"):
        assert classic not in config
    Consumer(config).close()  # librdkafka refuses a classic option with this protocol when the consumer is made


class GroupAdmin:
    """An AdminClient's incremental_alter_configs that keeps what it was asked and answers `error` (None: done)."""

    def __init__(self, error: KafkaError | None = None) -> None:
        self.error = error
        self.asked: list[tuple[ConfigResource, dict[str, str | None]]] = []

    def incremental_alter_configs(
        self, resources: list[ConfigResource], **kwargs: Any
    ) -> dict[ConfigResource, concurrent.futures.Future[Any]]:
        answers: dict[ConfigResource, concurrent.futures.Future[Any]] = {}
        for resource in resources:
            self.asked.append((resource, {e.name: e.value for e in resource.incremental_configs}))
            answer: concurrent.futures.Future[Any] = concurrent.futures.Future()
            if self.error is None:
                answer.set_result(None)
            else:
                answer.set_exception(KafkaException(self.error))
            answers[resource] = answer
        return answers


def test_the_kip_848_groups_session_and_heartbeat_are_set_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKORDER_GROUP_PROTOCOL", "consumer")
    monkeypatch.setenv("BACKORDER_GROUP_ID", "backorder-eu")
    monkeypatch.setenv("BACKORDER_SESSION_TIMEOUT_SECONDS", "12")
    admin = GroupAdmin()
    assert set_group_session(Settings(), admin) is None
    [(group, values)] = admin.asked
    assert (group.restype, group.name) == (ResourceType.GROUP, "backorder-eu")
    assert values == {"consumer.session.timeout.ms": "12000", "consumer.heartbeat.interval.ms": "1000"}


def test_a_session_the_broker_refuses_is_reported_not_raised() -> None:
    refusal = KafkaError(
        KafkaError.INVALID_CONFIG,
        "consumer.session.timeout.ms must be greater than or equal to group.consumer.min.session.timeout.ms",
    )
    assert "group.consumer.min.session.timeout.ms" in (set_group_session(Settings(), GroupAdmin(refusal)) or "")


class Cluster(GroupAdmin):
    """A one-broker cluster as an AdminClient sees it: the group protocols its coordinator runs, and whether it takes
    a group's session (`error`) or cannot be reached at all."""

    def __init__(
        self,
        protocols: str | None = "classic,consumer,streams",
        error: KafkaError | None = None,
        reachable: bool = True,
        brokers: tuple[int, ...] = (3, 1),
        describe_error: KafkaError | None = None,
    ) -> None:
        super().__init__(error)
        self.protocols = protocols
        self.reachable = reachable
        self.brokers = brokers
        self.describe_error = describe_error
        self.described: list[ConfigResource] = []

    def list_topics(self, *args: Any, **kwargs: Any) -> Any:
        if not self.reachable:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "127.0.0.1:9092/bootstrap: Connection refused"))
        return SimpleNamespace(brokers={i: SimpleNamespace(id=i) for i in self.brokers})

    def describe_configs(
        self, resources: list[ConfigResource], **kwargs: Any
    ) -> dict[ConfigResource, concurrent.futures.Future[Any]]:
        answers: dict[ConfigResource, concurrent.futures.Future[Any]] = {}
        for resource in resources:
            self.described.append(resource)
            answer: concurrent.futures.Future[Any] = concurrent.futures.Future()
            name = "group.coordinator.rebalance.protocols"
            if self.describe_error is not None:
                answer.set_exception(KafkaException(self.describe_error))
            else:
                answer.set_result({} if self.protocols is None else {name: ConfigEntry(name, self.protocols)})
            answers[resource] = answer
        return answers


def test_auto_is_the_default_and_takes_kip_848_where_the_broker_runs_it_and_takes_the_groups_session() -> None:
    cluster = Cluster(protocols="classic, consumer")
    assert choose_group_protocol(Settings(), cluster) == (
        "consumer",
        "the broker runs KIP-848 groups and took the group's session and heartbeat",
        False,
    )
    [broker] = cluster.described
    assert (broker.restype, broker.name) == (ResourceType.BROKER, "1")
    [(group, values)] = cluster.asked
    assert (group.restype, values["consumer.session.timeout.ms"]) == (ResourceType.GROUP, "10000")


@pytest.mark.parametrize(("protocols", "named"), [("classic", "is classic"), (None, "is unset")])
def test_auto_keeps_the_classic_protocol_on_a_broker_without_kip_848_groups(protocols: str | None, named: str) -> None:
    cluster = Cluster(protocols)
    choice = choose_group_protocol(Settings(), cluster)
    assert (choice.protocol, choice.trouble) == ("classic", False)  # as the brokers are configured
    assert choice.why == f"the broker's group.coordinator.rebalance.protocols {named}"
    assert cluster.asked == []  # the group's configuration is not touched


def test_auto_keeps_the_classic_protocol_where_the_broker_refuses_the_groups_session() -> None:
    refusal = KafkaError(
        KafkaError.INVALID_CONFIG,
        "consumer.session.timeout.ms must be greater than or equal to group.consumer.min.session.timeout.ms",
    )
    choice = choose_group_protocol(Settings(), Cluster(error=refusal))
    assert choice.protocol == "classic"  # a dead worker is noticed after 10 s, not after the broker's 45
    assert "refused the group's session" in choice.why and "group.consumer.min.session.timeout.ms" in choice.why


@pytest.mark.parametrize(
    ("cluster", "named"),
    [
        (Cluster(reachable=False), "Connection refused"),
        (Cluster(brokers=()), "could not be read"),  # a metadata answer that lists no broker
        (Cluster(describe_error=KafkaError(KafkaError.CLUSTER_AUTHORIZATION_FAILED, "no DESCRIBE_CONFIGS")), "no DE"),
    ],
)
def test_auto_keeps_the_classic_protocol_when_the_broker_cannot_be_asked_and_says_so(
    cluster: Cluster, named: str
) -> None:
    choice = choose_group_protocol(Settings(), cluster, timeout_s=0.1)
    assert (choice.protocol, choice.trouble) == ("classic", True)  # logged as a warning
    assert "could not be read" in choice.why and named in choice.why
    assert cluster.asked == []


@pytest.mark.parametrize("setting", ["BACKORDER_KAFKA_CONSUMER_CONFIG", "BACKORDER_KAFKA_CONFIG"])
@pytest.mark.parametrize(
    "given",
    [
        '{"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}',
        '{"partition.assignment.strategy": "range"}',
        '{"group.protocol": "classic"}',
    ],
)
def test_auto_keeps_the_classic_protocol_the_kafka_options_name(
    monkeypatch: pytest.MonkeyPatch, setting: str, given: str
) -> None:
    monkeypatch.setenv(setting, given)
    cluster = Cluster()
    assert choose_group_protocol(Settings(), cluster).protocol == "classic"
    assert cluster.described == [] and cluster.asked == []  # nothing asked of the broker


@pytest.mark.parametrize("named", ["consumer", "Consumer"])
def test_auto_follows_a_group_protocol_consumer_in_the_options_and_sets_the_groups_session(
    monkeypatch: pytest.MonkeyPatch, named: str
) -> None:
    monkeypatch.setenv("BACKORDER_KAFKA_CONSUMER_CONFIG", json.dumps({"group.protocol": named}))
    cluster = Cluster()
    assert choose_group_protocol(Settings(), cluster)[:2] == (
        "consumer",
        "group.protocol is set in the Kafka options; the group's session set",
    )
    [(_, values)] = cluster.asked  # as BACKORDER_GROUP_PROTOCOL=consumer does: the worker's session, not 45 s
    assert values["consumer.session.timeout.ms"] == "10000"
    refused = KafkaError(KafkaError.INVALID_CONFIG, "must be greater than or equal to group.consumer.min")
    choice = choose_group_protocol(Settings(), Cluster(error=refused))
    assert (choice.protocol, choice.trouble) == ("consumer", True)


def test_the_kip_848_protocol_named_by_the_setting_sets_the_groups_session_without_asking_the_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BACKORDER_GROUP_PROTOCOL", "consumer")
    cluster = Cluster(protocols="classic")  # not asked: the setting names the protocol
    assert choose_group_protocol(Settings(), cluster) == (
        "consumer",
        "BACKORDER_GROUP_PROTOCOL is consumer; the group's session set",
        False,
    )
    assert cluster.described == [] and len(cluster.asked) == 1


def test_auto_consumes_with_the_classic_options_until_the_broker_is_asked() -> None:
    assert Settings().group_protocol == "auto"
    assert consumer_config(Settings())["partition.assignment.strategy"] == "cooperative-sticky"
    assert consumer_config(Settings(), "consumer")["group.protocol"] == "consumer"


def test_an_unknown_group_protocol_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKORDER_GROUP_PROTOCOL", "eager")
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
