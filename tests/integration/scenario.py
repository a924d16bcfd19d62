"""What the fault run and the fuzz run share: run length, a producer that records where each message
landed, a lean reader of whole topics, the consumer group's lag, a process's memory, the machine's load.

`BACKORDER_SOAK=1` (set by `make soak`) selects the long versions of both runs.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition


def soak() -> bool:
    """True under `make soak`: the runs are longer and send more."""
    return os.environ.get("BACKORDER_SOAK", "") not in ("", "0")


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS from /proc), in MiB; 0 once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass(frozen=True)
class Landed:
    """Where the broker put a message: what the worker's dead-letter headers must name."""

    topic: str
    partition: int
    offset: int


class TrackingProducer:
    """An idempotent producer that records the (topic, partition, offset) of every delivered message, by tag.

    Messages are not flushed one by one: `send` only queues, `flush` waits. Delivery errors are kept, never
    retried here (librdkafka retries until `message.timeout.ms`).
    """

    def __init__(self, bootstrap: str, max_message_bytes: int = 1_048_576) -> None:
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.max.bytes": max_message_bytes + 4096,
                "message.timeout.ms": 300_000,
                "log_level": 0,
            }
        )
        self._lock = threading.Lock()
        self.landed: dict[str, Landed] = {}
        self.delivered_at: dict[str, float] = {}
        self.errors: list[str] = []

    def send(
        self,
        topic: str,
        tag: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            with self._lock:
                if err is not None:
                    self.errors.append(f"{tag}: {err}")
                    return
                self.landed[tag] = Landed(str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0))
                self.delivered_at[tag] = time.monotonic()

        sent: list[tuple[str, str | bytes | None]] = list(headers or [])
        for _attempt in range(600):  # the local queue is full while the broker is away: wait, bounded
            try:
                self._producer.produce(topic, key=key, value=value, headers=sent, on_delivery=on_delivery)
                break
            except BufferError:
                self._producer.poll(0.1)
        else:
            raise AssertionError(f"could not queue {tag} within 60s")
        self._producer.poll(0)

    def flush(self, timeout_s: float = 120.0) -> None:
        left = self._producer.flush(timeout_s)
        assert left == 0, f"{left} messages not delivered within {timeout_s}s"
        assert not self.errors, f"delivery failed: {self.errors[:5]}"

    def snapshot(self) -> dict[str, Landed]:
        with self._lock:
            return dict(self.landed)


@dataclass(frozen=True)
class Seen:
    """A message read back, without its value unless asked for (dead letters may be a megabyte each)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    value_size: int
    value_digest: str  # sha1 of the value, hex ("" when there is none)
    headers: tuple[tuple[str, bytes], ...]

    def header_values(self, name: str) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    keep_values: bool = True,
    count: int | None = None,
    timeout_s: float = 120.0,
    settle_s: float = 3.0,
) -> list[Seen]:
    """Every message of a topic from the beginning: until `count` arrived, or nothing came for `settle_s`."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "log_level": 0,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out: list[Seen] = []
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if count is not None and len(out) >= count:
                break
            if count is None and time.monotonic() - quiet_since > settle_s:
                break
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is not None:
                    continue
                quiet_since = time.monotonic()
                value = msg.value()
                raw = msg.headers() or []
                pairs = list(raw.items()) if isinstance(raw, dict) else list(raw)
                headers = tuple((k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in pairs)
                out.append(
                    Seen(
                        topic,
                        int(msg.partition() or 0),
                        int(msg.offset() or 0),
                        msg.key(),
                        value if keep_values else None,
                        len(value or b""),
                        hashlib.sha1(value).hexdigest() if value is not None else "",
                        headers,
                    )
                )
        return out
    finally:
        consumer.close()


def group_lag(bootstrap: str, group_id: str, topics: list[str]) -> int:
    """Messages of `topics` past the group's committed offsets (a partition never committed counts whole)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id, "log_level": 0})
    try:
        wanted = []
        for topic in topics:
            for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                wanted.append(TopicPartition(topic, p))
        committed = consumer.committed(wanted, timeout=10)
        lag = 0
        for tp in committed:
            low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag
    finally:
        consumer.close()


class Sampler:
    """Calls `sample` every `every_s` seconds on a thread until stopped; exceptions are counted, not raised."""

    def __init__(self, sample: Callable[[], None], every_s: float) -> None:
        self._sample = sample
        self._every_s = every_s
        self._stop = threading.Event()
        self.failures = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self._sample()
            except Exception:
                self.failures += 1

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
