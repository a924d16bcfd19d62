"""The fuzz run: hostile messages drawn by Hypothesis go through Kafka between valid events, and the worker
dead-letters each one exactly once, with the contract's headers, handles every valid event around them,
never exits and stays within its memory limit.

A few thousand hostile messages in `make test`; 100,000 under `make soak` (BACKORDER_SOAK=1). Hypothesis is
seeded, so a run sends the same messages every time. Hypothesis chooses what to break and how; the bytes
(up to ~1 MB) are then built from that choice, which keeps each example small for Hypothesis.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import re
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests import factories
from tests.conftest import Figures
from tests.integration.conftest import DLQ_HEADERS, RECORD_OF, ROOT, Deployment, wait_for
from tests.integration.scenario import Landed, Sampler, Seen, TrackingProducer, loadavg, read_topic, rss_mib, soak
from worker.adapters.avro import AvroCodec

SOAK = soak()
HOSTILE = 100_000 if SOAK else 2_500
VALID_EVERY = 8  # one valid event after every 8 hostile ones
HUGE_CAP = 300 if SOAK else 40  # messages of 100 kB to ~1 MB: enough to matter, not a disk's worth
# Back to back on one key, between two Hypothesis rounds: a consumed batch, the dead letters' outbox rows and a
# relay round would each hold all of them (~142 MB, several copies) if only message counts bounded them. The
# values are kept whole in their dead letters (under 900,000 bytes with the headers).
BURST = 160
BURST_BYTES = 890_000
RSS_BOUND_MIB = 512.0  # what the worker must stay under, whatever the deployment's limit
ROUND = 500  # hostile messages per Hypothesis run (each run has its own seed)
SEED = 8
MAGIC = b"\xc3\x01"
INBOUND = ("order-created", "inventory-received", "order-cancelled", "product-policy")
ERROR_CLASSES = {
    "UndecodableMessage",
    "UnknownSchema",
    "UnexpectedRecord",
    "InvalidEvent",
    "ConflictingDuplicate",
    "UnprocessableEvent",
}
ERROR_MESSAGE_MAX_BYTES = 1_536  # issue 8: a dead letter's error text is cut to about 1 kB
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
FAR_DATES = (dt.datetime(1, 1, 1, tzinfo=dt.UTC), dt.datetime(9999, 12, 31, tzinfo=dt.UTC))
MIB = 1024 * 1024


def memory_limit_mib() -> float:
    """The worker container's memory limit in deploy/kubernetes/deployment.yaml: the bound RSS must stay under."""
    text = (ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text()
    match = re.search(r"limits:\s*\{[^}]*memory:\s*(\d+)(Mi|Gi)", text)
    assert match is not None, "no memory limit in deployment.yaml"
    return float(match.group(1)) * (1024 if match.group(2) == "Gi" else 1)


# ------------------------------------------------------------------------------------ what to break

FIELD_BREAKS: dict[str, list[tuple[str, Any]]] = {
    "order": [
        ("quantity", 0),
        ("quantity", -1),
        ("quantity", INT32[0]),
        ("quantity", INT32[1]),
        ("unit_price_minor", -1),
        ("unit_price_minor", INT64[0]),
        ("unit_price_minor", INT64[1]),
        ("order_id", ""),
        ("order_id", "O\x00RDER"),
        ("order_id", "x" * 3_000),
        ("sku", "S\x00KU"),
        ("sku", "S\x07KU"),
        ("sku", "x" * 3_000),
        ("sku", "x" * 1_000_000),
        ("line_id", "L\x00"),
        ("line_id", "x" * 3_000),
        ("customer_id", "C\x1f"),
        ("customer_id", ""),
        ("product_name", "P\x00"),
        ("product_name", "p" * 1_000_000),
        ("currency", ""),
        ("currency", "usd"),
        ("currency", "US"),
        ("currency", "USDX"),
        ("currency", "U\x00D"),
        ("currency", "€UR"),
        ("currency", "bad currency"),  # replaced by a non-ISO 3-letter code drawn by Hypothesis
        ("occurred_at", FAR_DATES[0]),
        ("occurred_at", FAR_DATES[1]),
        ("occurred_at", INT64[0]),
        ("occurred_at", INT64[1]),
        ("need_by", dt.date(1, 1, 1)),
        ("need_by", dt.date(9999, 12, 31)),
        ("need_by", INT32[1]),
        ("need_by", INT32[0]),
        ("lines", "none"),
        ("lines", "duplicate line ids"),
        ("lines", 10_000),
        ("customer_tier", -1),
        ("shipping_service", -1),
        ("customer_tier", -2),
        ("split_preference", -1),
        ("sku", "surrogate"),
    ],
    "receipt": [
        ("quantity", 0),
        ("quantity", -1),
        ("quantity", INT32[0]),
        ("quantity", INT32[1]),
        ("receipt_id", ""),
        ("receipt_id", "R\x00"),
        ("receipt_id", "x" * 3_000),
        ("sku", "S\x00KU"),
        ("sku", "x" * 3_000),
        ("supplier_id", "S\x00"),
        ("purchase_order_id", "x" * 3_000),
        ("occurred_at", FAR_DATES[0]),
        ("occurred_at", FAR_DATES[1]),
        ("occurred_at", INT64[1]),
        ("supplier_id", -1),  # a negative union index
    ],
    "cancellation": [
        ("order_id", ""),
        ("order_id", "O\x00"),
        ("order_id", "x" * 3_000),
        ("line_ids", ["L\x00"]),
        ("line_ids", ["x" * 3_000]),
        ("line_ids", 20_000),
        ("note", "n\x00te"),
        ("note", "n" * 1_000_000),
        ("reason", -1),
        ("occurred_at", FAR_DATES[1]),
    ],
    "policy": [
        ("lead_time_days", -1),
        ("lead_time_days", 3_000_000),
        ("lead_time_days", INT32[1]),
        ("stale_after_days", -1),
        ("stale_after_days", INT32[1]),
        ("max_backorder_qty_per_customer", -1),
        ("max_backorder_qty_per_customer", INT32[0]),
        ("sku", "S\x00KU"),
        ("sku", ""),
        ("sku", "x" * 3_000),
        ("payment_timing", -1),
        ("default_split", -2),
        ("occurred_at", FAR_DATES[0]),
    ],
}
TOPIC_OF_RECORD = {"order": "order-created", "receipt": "inventory-received", "cancellation": "order-cancelled"}
TOPIC_OF_RECORD["policy"] = "product-policy"
RECORD_NAME = {kind: RECORD_OF[topic] for kind, topic in TOPIC_OF_RECORD.items()}

# Not ISO 4217: no active code starts with Q other than QAR.
BAD_CODES = st.tuples(st.sampled_from("BCDEFGHIJKLMNOPQRSTUVWXYZ"), st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ")).map(
    lambda pair: "Q" + "".join(pair)
)


@dataclass(frozen=True)
class Spec:
    """What Hypothesis chose: a category and its parameters; `build` turns it into a message."""

    category: str
    params: tuple[Any, ...]
    key_variant: str
    header_variant: str


def specs() -> st.SearchStrategy[Spec]:
    record_kind = st.sampled_from(sorted(FIELD_BREAKS))
    by_category = {
        "random_bytes": st.tuples(st.binary(max_size=600), st.sampled_from(INBOUND)),
        "huge_random": st.tuples(st.integers(100_000, 1_040_000), st.integers(0, 2**32), st.sampled_from(INBOUND)),
        "truncated": st.tuples(record_kind, st.integers(0, 2**20)),
        "unknown_fingerprint": st.tuples(st.binary(min_size=8, max_size=8), st.binary(max_size=64)),
        "wrong_topic": st.tuples(record_kind, st.sampled_from(INBOUND)),
        "extreme": record_kind.flatmap(
            lambda kind: st.tuples(st.just(kind), st.integers(0, len(FIELD_BREAKS[kind]) - 1), BAD_CODES)
        ),
        "conflict": st.tuples(st.sampled_from(["order", "receipt"]), st.integers(0, 2**20)),
        "no_value": st.tuples(st.sampled_from(INBOUND[:3])),
    }
    # Extreme values are most of it; the rest in proportion to how much each can tell.
    weighted = ["extreme"] * 8 + ["random_bytes"] * 3 + ["truncated"] * 3 + ["wrong_topic"] * 2
    weighted += ["unknown_fingerprint", "conflict", "conflict", "no_value", "huge_random"]
    return st.sampled_from(weighted).flatmap(
        lambda category: st.builds(
            Spec,
            st.just(category),
            by_category[category],
            st.sampled_from(["natural", "natural", "natural", "none", "empty"]),
            st.sampled_from(["none", "none", "trace", "forged_dlq"]),
        )
    )


class Hostile:
    """Builds messages from specs, valid ones for the run and broken ones, all under this run's own ids."""

    def __init__(self, codec: AvroCodec, tag: str) -> None:
        self.codec = codec
        self.tag = tag
        self.n = 0
        self.huge = 0
        self.valid_orders: list[dict[str, Any]] = []
        self.valid_receipts: list[dict[str, Any]] = []
        self.conflict_key: bytes | None = None
        self.category = ""  # of the last message built, after the cap on huge ones
        self.known_fingerprints = {value for value in (self._fingerprint(kind) for kind in RECORD_NAME.values())}

    def _fingerprint(self, full_name: str) -> bytes:
        return self.codec.encode(full_name, self.record(self._kind_of(full_name)))[2:10]

    @staticmethod
    def _kind_of(full_name: str) -> str:
        return next(kind for kind, name in RECORD_NAME.items() if name == full_name)

    def record(self, kind: str) -> dict[str, Any]:
        """A valid record of `kind` that only this hostile message names."""
        self.n += 1
        hid = f"H{self.tag}-{self.n}"
        if kind == "order":
            return factories.order(hid, "2026-02-01", [(f"{hid}-SKU", 2)])
        if kind == "receipt":
            return factories.receipt(hid, f"{hid}-SKU", 3)
        if kind == "cancellation":
            return factories.cancellation(hid, "L1")
        return factories.policy(f"{hid}-SKU")

    def encode(self, kind: str, record: dict[str, Any]) -> bytes:
        return self.codec.encode(RECORD_NAME[kind], record)

    def build(self, spec: Spec) -> tuple[str, bytes | None]:
        """(topic kind, value) of the hostile message a spec describes."""
        category, params = spec.category, spec.params
        if category == "huge_random" and self.huge >= HUGE_CAP:
            category, params = "random_bytes", (random.Random(params[1]).randbytes(params[1] % 600), params[2])
        self.category = category
        if category == "random_bytes":
            data, topic = params
            return topic, (b"\x00" + data[1:] if data[:2] == MAGIC else data)
        if category == "huge_random":
            self.huge += 1
            size, rng_seed, topic = params
            data = random.Random(rng_seed).randbytes(size)
            return topic, (b"\x00" + data[1:] if data[:2] == MAGIC else data)
        if category == "truncated":
            kind, cut = params
            whole = self.encode(kind, self.record(kind))
            return TOPIC_OF_RECORD[kind], whole[: cut % len(whole)]
        if category == "unknown_fingerprint":
            fingerprint, body = params
            if fingerprint in self.known_fingerprints:
                fingerprint = bytes([fingerprint[0] ^ 0xFF]) + fingerprint[1:]
            return "order-created", MAGIC + fingerprint + body
        if category == "wrong_topic":
            kind, topic = params
            if topic == TOPIC_OF_RECORD[kind]:
                topic = next(t for t in INBOUND if t != topic)
            return topic, self.encode(kind, self.record(kind))
        if category == "conflict":
            kind, pick = params
            originals = self.valid_orders if kind == "order" else self.valid_receipts
            if not originals:
                return "order-created", b"\x00no original yet"
            changed = dict(originals[pick % len(originals)])
            if kind == "order":
                changed["lines"] = [{**changed["lines"][0], "quantity": changed["lines"][0]["quantity"] + 1}]
                self.conflict_key = str(changed["order_id"]).encode()
            else:
                changed["quantity"] += 1
                self.conflict_key = str(changed["sku"]).encode()
            return TOPIC_OF_RECORD[kind], self.encode(kind, changed)
        if category == "no_value":
            return params[0], None
        kind, index, bad_code = params
        field_name, bad = FIELD_BREAKS[kind][index]
        return TOPIC_OF_RECORD[kind], self.extreme(kind, field_name, bad, bad_code)

    def extreme(self, kind: str, field_name: str, bad: Any, bad_code: str) -> bytes:
        record = self.record(kind)
        line_fields = {"quantity", "unit_price_minor", "sku", "line_id", "product_name"} if kind == "order" else set()
        if field_name == "sku" and bad == "surrogate":  # UTF-8 cannot hold a lone surrogate: patch the bytes
            record["lines"][0]["sku"] = "~S~"
            return self.encode(kind, record).replace(b"~S~", b"\xed\xa0\x80")
        if isinstance(bad, int) and bad < 0 and field_name in ENUM_FIELDS.get(kind, {}):
            return self.negative_index(kind, record, field_name, bad)
        if field_name == "lines":
            line = record["lines"][0]
            if bad == "none":
                record["lines"] = []
            elif bad == "duplicate line ids":
                record["lines"] = [line, {**line, "sku": line["sku"] + "-2"}]
            else:
                record["lines"] = [{**line, "line_id": f"L{i}"} for i in range(bad)]
        elif field_name == "line_ids" and isinstance(bad, int):
            record["line_ids"] = [f"L{i}" for i in range(bad)]
        elif field_name == "currency" and bad == "bad currency":
            record["currency"] = bad_code
        elif field_name in line_fields:
            record["lines"][0][field_name] = bad
        else:
            record[field_name] = bad
        return self.encode(kind, record)

    def negative_index(self, kind: str, record: dict[str, Any], field_name: str, index: int) -> bytes:
        """The record with an enum or union index of `index`: found as the byte two encodings differ in."""
        first, second = ENUM_FIELDS[kind][field_name]
        a = self.encode(kind, {**record, field_name: first})
        b = self.encode(kind, {**record, field_name: second})
        at = next(i for i in range(min(len(a), len(b))) if a[i] != b[i])
        zigzag = (index << 1) ^ (index >> 63)
        assert zigzag < 0x80
        return a[:at] + bytes([zigzag]) + a[at + 1 :]


# For each enum or union: two values whose encodings differ first in the index byte.
ENUM_FIELDS: dict[str, dict[str, tuple[Any, Any]]] = {
    "order": {
        "customer_tier": ("STANDARD", "VIP"),
        "shipping_service": ("STANDARD", "EXPEDITED"),
        "split_preference": (None, "SHIP_COMPLETE"),
    },
    "receipt": {"supplier_id": (None, "SUP")},
    "cancellation": {"reason": ("CUSTOMER_REQUEST", "MERCHANT")},
    "policy": {
        "payment_timing": ("AT_ORDER", "AT_SHIPMENT"),
        "default_split": ("SHIP_AVAILABLE_NOW", "SHIP_COMPLETE"),
    },
}


# ------------------------------------------------------------------------------------------ the run


def test_fuzz_run(deployment: Deployment, figures: Figures) -> None:
    codec = deployment.codec
    tag = uuid.uuid4().hex[:6]
    hostile = Hostile(codec, tag)
    producer = TrackingProducer(deployment.bootstrap)
    worker = deployment.start_worker()
    limit_mib = min(memory_limit_mib(), RSS_BOUND_MIB)
    peak = {"rss": 0.0}
    bad: dict[str, str] = {}  # tag -> category, for every hostile message
    digests: dict[str, str] = {}  # tag -> sha1 of the value, for values small enough to be kept whole
    valid_skus = [f"V{tag}-{i}" for i in range(10)]
    demand: Counter[str] = Counter()
    received: Counter[str] = Counter()
    rng = random.Random(SEED)
    valid_sent = {"events": 0, "same_again": 0}

    def sample_rss() -> None:
        peak["rss"] = max(peak["rss"], rss_mib(worker.proc.pid))

    def send_valid() -> None:
        n = valid_sent["events"]
        valid_sent["events"] += 1
        if n % 10 == 9 and hostile.valid_orders:  # the same content again: a duplicate, not a dead letter
            again = hostile.valid_orders[rng.randrange(len(hostile.valid_orders))]
            value = codec.encode(RECORD_OF["order-created"], again)
            producer.send(deployment.topics["order-created"], f"again-{n}", again["order_id"].encode(), value)
            valid_sent["same_again"] += 1
        elif n % 5 == 4:
            sku = rng.choice(valid_skus)
            receipt = factories.receipt(f"VR{tag}-{n}", sku, rng.randint(1, 12))
            received[sku] += receipt["quantity"]
            hostile.valid_receipts.append(receipt)
            value = codec.encode(RECORD_OF["inventory-received"], receipt)
            producer.send(deployment.topics["inventory-received"], f"valid-{n}", sku.encode(), value)
        else:
            skus = rng.sample(valid_skus, rng.randint(1, 2))
            order = factories.order(f"VO{tag}-{n}", "2026-02-01", [(sku, rng.randint(1, 5)) for sku in skus])
            for line in order["lines"]:
                demand[line["sku"]] += line["quantity"]
            hostile.valid_orders.append(order)
            value = codec.encode(RECORD_OF["order-created"], order)
            producer.send(deployment.topics["order-created"], f"valid-{n}", order["order_id"].encode(), value)

    def send_hostile(spec: Spec) -> None:
        if len(bad) - burst_sent[0] >= HOSTILE:
            return
        topic_kind, value = hostile.build(spec)
        key = {"natural": f"K{len(bad)}".encode(), "none": None, "empty": b""}[spec.key_variant]
        if hostile.conflict_key is not None:  # behind its original on the same partition, or it could come first
            key, hostile.conflict_key = hostile.conflict_key, None
        headers = {
            "none": [],
            "trace": [("trace-id", b"fuzz")],
            "forged_dlq": [("dlq.original.topic", b"forged"), ("dlq.error.class", b"Forged")],
        }[spec.header_variant]
        hostile_tag = f"bad-{len(bad)}"
        bad[hostile_tag] = hostile.category
        if value is not None and len(value) <= 65_536:
            digests[hostile_tag] = hashlib.sha1(value).hexdigest()
        producer.send(deployment.topics[topic_kind], hostile_tag, key, value, headers)
        if len(bad) % VALID_EVERY == 0:
            send_valid()

    burst_sent = [0]

    def send_burst() -> None:
        for i in range(BURST):
            burst_sent[0] += 1
            data = random.Random(SEED * 1_000 + i).randbytes(BURST_BYTES)
            hostile_tag = f"burst-{i}"
            bad[hostile_tag] = "burst"
            producer.send(deployment.topics["order-created"], hostile_tag, b"burst", b"\x00" + data[1:])

    started = time.monotonic()
    with Sampler(sample_rss, every_s=0.5):
        for round_no in range(HOSTILE // ROUND + 2):  # bounded: each round sends up to ROUND
            if len(bad) >= HOSTILE + BURST:
                break
            if round_no == 1:
                send_burst()

            @seed(SEED + round_no)
            @settings(
                max_examples=ROUND,
                database=None,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(specs())
            def send_round(spec: Spec) -> None:
                send_hostile(spec)

            send_round()
            assert worker.proc.poll() is None, f"the worker exited with {worker.proc.returncode}"
        producer.flush(timeout_s=300)
        sent_s = time.monotonic() - started
        assert len(bad) == HOSTILE + BURST, f"Hypothesis drew {len(bad) - BURST} hostile messages, not {HOSTILE}"

        landed = producer.snapshot()
        expected = {landed[t]: t for t in bad}
        dead = read_topic(
            deployment.bootstrap,
            deployment.topics["dlq"],
            keep_values=False,
            count=len(expected),
            timeout_s=600 if SOAK else 240,
            settle_s=5.0,
        )
        valid_orders = {o["order_id"]: o for o in hostile.valid_orders}

        def valid_handled() -> bool:
            rows = deployment.query("SELECT count(*) FROM customer_order WHERE order_id = ANY(%s)", list(valid_orders))
            receipts = deployment.query("SELECT count(*) FROM stock_receipt WHERE receipt_id LIKE %s", f"VR{tag}-%")
            return bool(rows[0][0] == len(valid_orders) and receipts[0][0] == len(hostile.valid_receipts))

        wait_for("the valid events", valid_handled, timeout_s=300)
        time.sleep(3.0)  # anything dead-lettered twice would arrive now
        dead = read_topic(deployment.bootstrap, deployment.topics["dlq"], keep_values=False, settle_s=5.0)
        handled_s = time.monotonic() - started
        sample_rss()
        alive = worker.proc.poll() is None
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/healthz", timeout=10) as response:
            healthy = response.status == 200

    problems = check_dead_letters(dead, expected, bad, digests, deployment)
    figures(
        f"fuzz run ({'soak' if SOAK else 'short'}): {len(bad)} hostile messages "
        f"{dict(Counter(bad.values()))}, {valid_sent['events']} valid events "
        f"({valid_sent['same_again']} sent twice); {len(dead)} dead letters "
        f"{dict(Counter(b''.join(m.header_values('dlq.error.class')).decode() for m in dead))}; "
        f"sent in {sent_s:.0f}s, all handled after {handled_s:.0f}s; worker peak RSS {peak['rss']:.0f} MiB "
        f"(limit {limit_mib:.0f} MiB); load {loadavg()}",
        *(f"  {problem}" for problem in problems[:15]),
    )

    assert alive, f"the worker exited with {worker.proc.returncode}"
    assert healthy
    assert not problems, f"{len(problems)} dead-letter problems, first: {problems[:3]}"
    assert peak["rss"] < limit_mib, f"worker RSS peaked at {peak['rss']:.0f} MiB, limit {limit_mib:.0f} MiB"
    check_valid_outcomes(deployment, hostile, demand, received, tag)


def check_dead_letters(
    dead: list[Seen], expected: dict[Any, str], bad: dict[str, str], digests: dict[str, str], world: Deployment
) -> list[str]:
    """Exactly one dead letter per hostile message, none for anything else, each with the contract's headers."""
    problems: list[str] = []
    found: Counter[Any] = Counter()
    for message in dead:
        where = f"dead letter at {message.partition}/{message.offset}"
        for header in DLQ_HEADERS:
            values = message.header_values(header)
            if len(values) != 1:
                problems.append(f"{where}: {len(values)} values of {header}")
        try:
            topic = message.header_values("dlq.original.topic")[-1].decode()
            partition = int(message.header_values("dlq.original.partition")[-1])
            offset = int(message.header_values("dlq.original.offset")[-1])
            error_class = message.header_values("dlq.error.class")[-1].decode()
            error_message = message.header_values("dlq.error.message")[-1]
            dt.datetime.fromisoformat(message.header_values("dlq.failed_at")[-1].decode())
        except (IndexError, ValueError) as exc:
            problems.append(f"{where}: unreadable headers ({exc})")
            continue
        source = Landed(topic, partition, offset)
        found[source] += 1
        hostile_tag = expected.get(source)
        if hostile_tag is None:
            problems.append(f"{where}: a dead letter for a valid message ({error_class}: {error_message[:200]!r})")
            continue
        if error_class not in ERROR_CLASSES:
            problems.append(f"{where}: error class {error_class!r} ({bad[hostile_tag]})")
        if not error_message.strip() or len(error_message) > ERROR_MESSAGE_MAX_BYTES:
            problems.append(f"{where}: error message of {len(error_message)} bytes ({bad[hostile_tag]})")
        digest = digests.get(hostile_tag)
        if digest is not None and message.value_digest != digest:
            problems.append(f"{where}: the original value is not kept ({bad[hostile_tag]})")
    for source, hostile_tag in expected.items():
        if found[source] != 1:
            problems.append(f"{bad[hostile_tag]} {hostile_tag} at {source}: {found[source]} dead letters")
    return problems


def check_valid_outcomes(
    world: Deployment, hostile: Hostile, demand: Counter[str], received: Counter[str], tag: str
) -> None:
    """The valid events were handled as if nothing hostile had come between them."""
    lines = {
        (o, line): (sku, qty, alloc)
        for o, line, sku, qty, alloc in world.query(
            "SELECT order_id, line_id, sku, quantity, quantity_allocated FROM order_line WHERE order_id LIKE %s",
            f"VO{tag}-%",
        )
    }
    for order in hostile.valid_orders:
        for line in order["lines"]:
            assert lines[(order["order_id"], line["line_id"])][:2] == (line["sku"], line["quantity"]), order
    stock = dict(world.query("SELECT sku, received_total FROM stock_level WHERE sku LIKE %s", f"V{tag}-%"))
    allocated: Counter[str] = Counter()
    for sku, _, alloc in lines.values():
        allocated[sku] += alloc
    for sku in set(demand) | set(received):
        assert stock.get(sku, 0) == received[sku], f"{sku}: received {stock.get(sku)} of {received[sku]}"
        assert allocated[sku] == min(demand[sku], received[sku]), f"{sku}: {allocated[sku]} allocated"
    shipped: Counter[str] = Counter()
    event_ids: set[str] = set()
    for message in read_topic(world.bootstrap, world.topics["fulfillment-requested"], settle_s=3.0):
        assert message.value is not None
        record = dict(world.codec.decode(message.value)[1])
        if record["event_id"] in event_ids:  # published again after a relay restart: the same event
            continue
        event_ids.add(record["event_id"])
        for line in record["lines"]:
            if str(line["sku"]).startswith(f"V{tag}-"):
                shipped[line["sku"]] += line["quantity"]
    assert dict(shipped) == {sku: n for sku, n in allocated.items() if n}
    accepted = world.query("SELECT count(*) FROM customer_order WHERE order_id LIKE %s", f"H{tag}-%")[0][0]
    assert accepted == 0, f"{accepted} hostile orders accepted"
