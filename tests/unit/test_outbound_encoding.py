"""Outbound events are encoded cheaply, and exactly as the plain, slow way would encode them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from enum import Enum
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from worker.adapters.avro import AvroCodec, EventSerializer, to_record
from worker.domain.events import (
    EVENT_NAMESPACE,
    BackorderStatusChanged,
    CustomerNotification,
    FulfillmentLine,
    FulfillmentRequested,
    NotificationLine,
    NotificationType,
    event_id,
)
from worker.domain.model import LineStatus, ShippingService

CODEC = AvroCodec.from_directory()
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)


@given(st.lists(st.text(), min_size=1, max_size=4))
def test_event_ids_are_the_uuid5_of_their_parts(parts: list[str]) -> None:
    assert event_id(*parts) == str(uuid.uuid5(EVENT_NAMESPACE, "\x1f".join(parts)))


def plain(value: Any) -> Any:
    """The reference conversion: every dataclass to a dict, every enum to its value, tuples to lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


EVENTS: list[Any] = [
    BackorderStatusChanged(
        event_id("s"), NOW, "O-1", "L1", "SKU", LineStatus.PARTIALLY_ALLOCATED, 5, 2, 3, dt.date(2026, 2, 1), "why"
    ),
    CustomerNotification(
        event_id("n"),
        NOW,
        "O-1",
        "C-1",
        NotificationType.BACKORDER_ETA_CHANGED,
        (
            NotificationLine("L1", "SKU", "Widget", 3, LineStatus.BACKORDERED),
            NotificationLine("L2", "SKU-2", "Gadget", 1, LineStatus.ALLOCATED),
        ),
        True,
        dt.date(2026, 3, 1),
        "Carrier",
        "TRACK",
        dt.date(2026, 3, 4),
        "later",
    ),
    FulfillmentRequested(
        event_id("f"),
        NOW,
        event_id("shipment"),
        "O-1",
        "C-1",
        ShippingService.EXPEDITED,
        (FulfillmentLine("L1", "SKU", 2), FulfillmentLine("L2", "SKU-2", 1)),
        True,
        False,
        event_id("cause"),
    ),
]


def test_outbound_bytes_are_those_of_the_plain_conversion() -> None:
    topics = {type(e): f"topic-{type(e).__name__}" for e in EVENTS}
    serialize = EventSerializer(CODEC, topics)
    for event in EVENTS:
        topic, key, value = serialize(event)
        assert (topic, key) == (topics[type(event)], b"O-1")
        assert value == CODEC.encode(f"backorder.{type(event).__name__}", plain(event))
        decoded = CODEC.decode(value)[1]
        assert {name: decoded[name] for name in plain(event)} == plain(event)


@given(
    st.one_of(
        st.builds(BackorderStatusChanged, occurred_at=st.datetimes(timezones=st.just(dt.UTC))),
        st.builds(CustomerNotification, occurred_at=st.datetimes(timezones=st.just(dt.UTC))),
        st.builds(FulfillmentRequested, occurred_at=st.datetimes(timezones=st.just(dt.UTC))),
    )
)
def test_any_event_becomes_the_record_of_the_plain_conversion(event: Any) -> None:
    record = to_record(event)
    assert record == plain(event)
    assert all(type(record[name]) is list for name in record if type(getattr(event, name)) is tuple)


class Colour(Enum):
    RED = "R"


@dataclasses.dataclass(frozen=True)
class Painted:
    colour: Colour | None
    shade: Colour


def test_an_enum_that_is_not_a_str_becomes_its_value() -> None:
    assert to_record(Painted(Colour.RED, Colour.RED)) == {"colour": "R", "shade": "R"}
    assert to_record(Painted(None, Colour.RED)) == {"colour": None, "shade": "R"}


def test_the_fields_of_a_compiled_class_are_told_by_their_values() -> None:
    """A class compiled with mypyc keeps its annotations without their arguments: a tuple as `tuple`, whatever it
    holds, and a union as `type` (as this class has them). Its tuples' records and its unions' enums are found by
    looking at the values."""
    as_compiled = dataclasses.make_dataclass(
        "AsCompiled", [("lines", tuple), ("names", tuple), ("colour", type), ("none", type)], frozen=True
    )
    record = to_record(as_compiled((Painted(None, Colour.RED),), ("a", "b"), Colour.RED, None))
    assert record == {"lines": [{"colour": None, "shade": "R"}], "names": ["a", "b"], "colour": "R", "none": None}
    assert type(record["names"]) is list
