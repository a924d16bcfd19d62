"""Kafka through confluent-kafka: client configuration, topic creation, and message conversion."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple, Protocol

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaException, Message
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from confluent_kafka.cimpl import NewTopic

from worker.service.messages import InboundMessage
from worker.settings import KafkaConfig, Settings

# Memory bounds of the Kafka clients (see the README's "Memory"); BACKORDER_KAFKA_*_CONFIG may override them.
CONSUMER_FETCH_MAX_BYTES = 16 * 1024 * 1024
CONSUMER_QUEUED_MAX_KBYTES = 16 * 1024
PRODUCER_QUEUE_MAX_KBYTES = 64 * 1024


GroupProtocol = Literal["classic", "consumer"]
# Options of the classic protocol only: librdkafka refuses them with `group.protocol=consumer`. One of them given in
# BACKORDER_KAFKA_CONFIG or BACKORDER_KAFKA_CONSUMER_CONFIG makes `auto` take the classic protocol.
CLASSIC_ONLY_OPTIONS = frozenset({"partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms"})


def consumer_config(settings: Settings, protocol: GroupProtocol | None = None) -> KafkaConfig:
    """The consumer's configuration with `protocol` (by default the one the settings name; `auto` is classic until
    `choose_group_protocol` has asked the broker)."""
    membership: KafkaConfig
    if (protocol or settings.group_protocol) == "consumer":
        membership = {
            # KIP-848: the broker assigns, incrementally, and `range` gives every worker a share of every topic
            # (its partitions i..j of each, so an order's events on the several topics meet in one worker).
            "group.protocol": "consumer",
            "group.remote.assignor": "range",
        }
    else:
        membership = {
            # Incremental rebalancing: a member that joins or dies moves only the partitions that must move;
            # the others keep consuming meanwhile (the eager protocol stops every member).
            "partition.assignment.strategy": "cooperative-sticky",
            # How long a member that died (SIGKILL, lost node) keeps its partitions before the group moves them.
            "session.timeout.ms": int(settings.session_timeout_seconds * 1000),
            "heartbeat.interval.ms": int(settings.heartbeat_interval_seconds * 1000),
        }
    if settings.group_instance_id is not None:
        membership["group.instance.id"] = settings.group_instance_id
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": settings.group_id,
        **membership,
        "auto.offset.reset": "earliest",
        # Offsets are stored by the loop only after the batch's transaction committed;
        # the background commit then sends only those.
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "statistics.interval.ms": 15000,  # consumer lag per partition, for the metrics
        # Memory: what librdkafka fetches ahead is bounded in bytes, not only in messages (by default up to
        # 64 MiB queued plus 50 MiB per fetch, and 100,000 messages per partition, ~1 MB each under hostile
        # input). With the high-level consumer the queue bound is for the whole consumer, whatever the
        # number of partitions; it may be overshot by one fetch, which these 16 MiB bound too (a single
        # message larger than that is still fetched: Kafka returns at least one).
        "fetch.max.bytes": CONSUMER_FETCH_MAX_BYTES,
        "queued.max.messages.kbytes": CONSUMER_QUEUED_MAX_KBYTES,
        **settings.kafka_client_config(),
        **settings.kafka_consumer_config,
    }


def producer_config(settings: Settings) -> KafkaConfig:
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        # No message times out: librdkafka would drop it and send the messages queued behind it once Kafka
        # answers again, and sent again by a later round it would come after them (an order's events out of
        # order). What Kafka has not answered when a round's wait ends stays queued, in order; the relay hands
        # the producer nothing more until it is answered (OutboxRelay.publish_once).
        "message.timeout.ms": 0,
        # Memory: the producer's queue holds copies of what the relay hands it (default 1 GiB); when it is
        # full, produce() says so and the relay waits for deliveries to drain it.
        "queue.buffering.max.kbytes": PRODUCER_QUEUE_MAX_KBYTES,
        **settings.kafka_client_config(),
        **settings.kafka_producer_config,
    }


def admin_config(settings: Settings) -> KafkaConfig:
    return {"bootstrap.servers": settings.kafka_bootstrap_servers, **settings.kafka_client_config()}


def all_topics(settings: Settings) -> list[str]:
    return [*settings.inbound_topics, *settings.outbound_topics, settings.topic_dead_letter]


def create_topics(
    settings: Settings,
    partitions: int,
    replication: int,
    names: Iterable[str] | None = None,
    timeout_s: float = 30.0,
) -> dict[str, str]:
    """Create the topics that do not exist yet; returns topic -> "created" or "exists"."""
    admin = AdminClient(admin_config(settings))
    wanted = list(names or all_topics(settings))
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    result = {name: "exists" for name in wanted if name in existing}
    new = [
        NewTopic(name, num_partitions=partitions, replication_factor=replication)
        for name in wanted
        if name not in existing
    ]
    if new:
        for name, future in admin.create_topics(new, operation_timeout=timeout_s).items():
            future.result()
            result[name] = "created"
    return result


class GroupConfigs(Protocol):
    """What `set_group_session` uses of confluent_kafka's AdminClient."""

    def incremental_alter_configs(
        self, resources: list[ConfigResource], **kwargs: Any
    ) -> dict[ConfigResource, concurrent.futures.Future[Any]]: ...


class ClusterConfigs(GroupConfigs, Protocol):
    """What `choose_group_protocol` uses of confluent_kafka's AdminClient."""

    def describe_configs(
        self, resources: list[ConfigResource], **kwargs: Any
    ) -> dict[ConfigResource, concurrent.futures.Future[Any]]: ...

    def list_topics(self, *args: Any, **kwargs: Any) -> Any: ...


def set_group_session(settings: Settings, admin: GroupConfigs, timeout_s: float = 10.0) -> str | None:
    """With the KIP-848 protocol the broker keeps the session and the heartbeat of a group: this sets them, as the
    group's own configuration (`consumer.session.timeout.ms`, `consumer.heartbeat.interval.ms`), to the worker's
    settings. None when the broker took them; else why not (outside the broker's `group.consumer.min.*` and
    `max.*` bounds, no ALTER_CONFIGS right on the group, no answer), and the values the group had stay."""
    values = {
        "consumer.session.timeout.ms": int(settings.session_timeout_seconds * 1000),
        "consumer.heartbeat.interval.ms": int(settings.heartbeat_interval_seconds * 1000),
    }
    group = ConfigResource(
        ResourceType.GROUP,
        settings.group_id,
        incremental_configs=[
            ConfigEntry(name, str(value), incremental_operation=AlterConfigOpType.SET) for name, value in values.items()
        ],
    )
    try:
        for future in admin.incremental_alter_configs([group], request_timeout=timeout_s).values():
            future.result(timeout=timeout_s + 5)
    except KafkaException as exc:
        return str(exc.args[0]) if exc.args else repr(exc)
    except concurrent.futures.TimeoutError:
        return f"no answer within {timeout_s + 5:g} s"
    return None


class ProtocolChoice(NamedTuple):
    """The group protocol `auto` took, why, and whether the reason is a failure an operator should look at (the
    broker could not be asked; a KIP-848 group left with the broker's session) rather than how the brokers are
    configured."""

    protocol: GroupProtocol
    why: str
    trouble: bool = False


def choose_group_protocol(settings: Settings, admin: ClusterConfigs, timeout_s: float = 10.0) -> ProtocolChoice:
    """The protocol a worker whose BACKORDER_GROUP_PROTOCOL is `consumer` or `auto` consumes with. KIP-848 named
    (that setting, or a `group.protocol` in the Kafka options BACKORDER_KAFKA_CONFIG and
    BACKORDER_KAFKA_CONSUMER_CONFIG) is taken, and the group's session and heartbeat set from the settings (the
    broker keeps them: `set_group_session`). For `auto`, the Kafka options decide first (a `group.protocol` is
    followed, a classic-only option means classic); then KIP-848, which gives every worker a share of every topic,
    is taken only when the brokers run KIP-848 groups (`group.coordinator.rebalance.protocols` has `consumer`:
    Kafka 4.0 and later by default) and take the group's session (within their `group.consumer.min/max.*`
    bounds), so that a worker that dies is noticed as soon as with the classic protocol. Otherwise classic."""
    given = {**settings.kafka_client_config(), **settings.kafka_consumer_config}
    named = "BACKORDER_GROUP_PROTOCOL is consumer" if settings.group_protocol == "consumer" else None
    if named is None and "group.protocol" in given:
        if str(given["group.protocol"]).strip().lower() != "consumer":
            return ProtocolChoice("classic", "group.protocol is set in the Kafka options")
        named = "group.protocol is set in the Kafka options"
    if named is not None:
        refused = set_group_session(settings, admin, timeout_s)
        if refused is None:
            return ProtocolChoice("consumer", f"{named}; the group's session set")
        return ProtocolChoice("consumer", f"{named}; the broker refused the group's session: {refused}", trouble=True)
    if classic := sorted(CLASSIC_ONLY_OPTIONS & given.keys()):
        return ProtocolChoice("classic", f"the Kafka options set {', '.join(classic)}, options of the classic protocol")
    try:
        brokers = admin.list_topics(timeout=timeout_s).brokers
        broker = ConfigResource(ResourceType.BROKER, str(min(brokers)))  # one asked: the setting is the cluster's
        [answer] = admin.describe_configs([broker], request_timeout=timeout_s).values()
        entry = answer.result(timeout=timeout_s + 5).get("group.coordinator.rebalance.protocols")
    except (KafkaException, ValueError, concurrent.futures.TimeoutError) as exc:  # ValueError: no broker listed
        return ProtocolChoice("classic", f"the broker's group protocols could not be read: {exc}", trouble=True)
    protocols = [] if entry is None or entry.value is None else [p.strip() for p in entry.value.split(",")]
    if "consumer" not in protocols:
        listed = ",".join(protocols) or "unset"
        return ProtocolChoice("classic", f"the broker's group.coordinator.rebalance.protocols is {listed}")
    refused = set_group_session(settings, admin, timeout_s)
    if refused is not None:
        # As configured (Kafka's own bounds refuse a 10 s session) or not allowed (no ALTER_CONFIGS on the group).
        return ProtocolChoice("classic", f"the broker refused the group's session and heartbeat: {refused}")
    return ProtocolChoice("consumer", "the broker runs KIP-848 groups and took the group's session and heartbeat")


def to_inbound(message: Message) -> InboundMessage:
    headers: Any = message.headers() or []
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("a consumed message without topic, partition or offset")
    return InboundMessage(
        topic=topic,
        partition=partition,
        offset=offset,
        key=message.key(),
        value=message.value(),
        headers=tuple((name, value or b"") for name, value in headers),
        written_at=_written_at(message),
    )


def _written_at(message: Message) -> dt.datetime | None:
    kind, millis = message.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE or millis <= 0:
        return None
    return dt.datetime.fromtimestamp(millis / 1000, dt.UTC)
