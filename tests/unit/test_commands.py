"""Inbound records are checked against the contract before anything happens."""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import examples, factories
from worker.service import limits
from worker.service.commands import (
    Command,
    cancel_order,
    command_for,
    content_hash,
    dispatch_shipment,
    expect_restock,
    place_order,
    receive_stock,
    set_product_policy,
)
from worker.service.messages import InvalidEvent, UnexpectedRecord


def line(**overrides: Any) -> dict[str, Any]:
    return {
        "line_id": "L1",
        "sku": "SKU",
        "product_name": "Widget",
        "quantity": 1,
        "unit_price_minor": 100,
        **overrides,
    }


@pytest.mark.parametrize(
    "lines, message",
    [
        ([], "no lines"),
        ([line(quantity=0)], r"lines\[0\]\.quantity must be from 1 to"),
        ([line(quantity=-2)], r"quantity must be from 1 to"),
        ([line(sku="")], "sku must be a non-empty string"),
        ([line(sku="  ")], "sku must be a non-empty string"),
        ([line(unit_price_minor=-1)], "unit_price_minor must be from 0 to"),
        ([line(), line()], "line_id values repeat"),
    ],
)
def test_an_order_the_contract_does_not_allow_is_refused(lines: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        place_order(factories.order("1", "2026-01-01", lines))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"currency": "usd"}, "currency"),
        ({"currency": "EURO"}, "currency"),
        ({"order_id": ""}, "order_id"),
        ({"customer_id": ""}, "customer_id"),
    ],
)
def test_order_header_fields_are_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        place_order({**factories.order("1", "2026-01-01", [("SKU", 1)]), **fields})


def test_a_receipt_needs_a_positive_quantity_and_an_sku() -> None:
    with pytest.raises(InvalidEvent, match="quantity"):
        receive_stock(factories.receipt("R", "SKU", 0))
    with pytest.raises(InvalidEvent, match="sku"):
        receive_stock(factories.receipt("R", "", 3))


def test_the_same_fact_under_another_event_id_has_the_same_content_hash() -> None:
    first = factories.order("1", "2026-01-01", [("SKU", 1)])
    again = {**first, "event_id": "another"}
    changed = {**first, "lines": [line(quantity=2)]}
    assert content_hash(first) == content_hash(again)
    assert content_hash(first) != content_hash(changed)


def test_a_record_on_the_wrong_topic_is_refused() -> None:
    with pytest.raises(UnexpectedRecord):
        command_for("backorder.InventoryReceived", "backorder.OrderCreated", factories.receipt("R", "SKU", 1))


def test_a_cancellation_names_lines_by_non_empty_ids() -> None:
    command = cancel_order(factories.cancellation("1", "L1", "L2", reason="FRAUD_SUSPECTED", note="chargeback"))
    assert command.cancellation.line_ids == ("L1", "L2")
    assert command.orders == frozenset({"1"})
    with pytest.raises(InvalidEvent, match="line_ids"):
        cancel_order(factories.cancellation("1", ""))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"max_backorder_qty_per_customer": -1}, "max_backorder_qty_per_customer must be from 0 to"),
        ({"lead_time_days": 0}, "lead_time_days must be from 1 to"),
        ({"stale_after_days": -3}, "stale_after_days must be from 1 to"),
        ({"sku": ""}, "sku"),
    ],
)
def test_a_product_policy_is_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        set_product_policy({**factories.policy("SKU"), **fields})


# Input limits (README.md, "Input limits"): every value the database or the contract cannot hold is refused here,
# as a dead letter with a reason, instead of failing in PostgreSQL, in date arithmetic or in a metric label.

NOW = factories.at("2026-01-20")
Path = tuple[str | int, ...]


def restock() -> dict[str, Any]:
    return factories.restock("SKU", "PO-1", 10, dt.date(2026, 2, 1), NOW, event_id="E-1")


def shipment(**fields: Any) -> dict[str, Any]:
    return {
        "event_id": "E-1",
        "occurred_at": NOW,
        "shipment_id": str(uuid.uuid4()),
        "order_id": "1",
        "carrier": "UPS",
        "tracking_number": "1Z999",
        "estimated_delivery": None,
        **fields,
    }


BUILDERS: dict[str, tuple[Callable[[], dict[str, Any]], Callable[[dict[str, Any]], Command]]] = {
    "order": (lambda: factories.order("1", "2026-01-01", [("SKU", 1)]), place_order),
    "receipt": (lambda: factories.receipt("R", "SKU", 1, supplier_id="acme", purchase_order_id="PO-1"), receive_stock),
    "cancellation": (lambda: factories.cancellation("1", "L1", note="n"), cancel_order),
    "policy": (lambda: factories.policy("SKU"), set_product_policy),
    "restock": (restock, expect_restock),
    "shipment": (shipment, dispatch_shipment),
}

IDENTIFIERS: list[tuple[str, Path]] = [
    ("order", ("event_id",)),
    ("order", ("order_id",)),
    ("order", ("customer_id",)),
    ("order", ("lines", 0, "line_id")),
    ("order", ("lines", 0, "sku")),
    ("receipt", ("event_id",)),
    ("receipt", ("receipt_id",)),
    ("receipt", ("sku",)),
    ("receipt", ("supplier_id",)),
    ("receipt", ("purchase_order_id",)),
    ("cancellation", ("event_id",)),
    ("cancellation", ("order_id",)),
    ("cancellation", ("line_ids", 0)),
    ("policy", ("event_id",)),
    ("policy", ("sku",)),
    ("restock", ("event_id",)),
    ("restock", ("purchase_order_id",)),
    ("restock", ("sku",)),
    ("restock", ("supplier_id",)),
    ("shipment", ("event_id",)),
    ("shipment", ("order_id",)),
    ("shipment", ("carrier",)),
    ("shipment", ("tracking_number",)),
]


def built(kind: str, path: Path = (), value: Any = None) -> Command:
    """The command for a valid record of `kind`, with the field at `path` (if any) set to `value`."""
    make, build = BUILDERS[kind]
    record = copy.deepcopy(make())
    if path:
        target: Any = record
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
    return build(record)


def refused(kind: str, path: Path, value: Any) -> str:
    with pytest.raises(InvalidEvent) as caught:
        built(kind, path, value)
    return str(caught.value)


@pytest.mark.parametrize("kind, path", IDENTIFIERS)
def test_an_identifier_is_bounded_and_holds_no_control_character(kind: str, path: Path) -> None:
    built(kind, path, "x" * limits.MAX_IDENTIFIER_LENGTH)
    built(kind, path, "Größe-ß-✓-😀 with spaces")
    assert "at most 200 characters" in refused(kind, path, "x" * (limits.MAX_IDENTIFIER_LENGTH + 1))
    for bad in ["S\x00KU", "S\nKU", "S\x1fKU", "S\x7fKU", "S\x85KU", "S\x9fKU", "S\ud800KU", "\udfff"]:
        assert "control characters or surrogates" in refused(kind, path, bad), repr(bad)
    assert "non-empty" in refused(kind, path, " ")


def test_a_3000_character_order_id_is_refused_with_a_short_reason() -> None:
    reason = refused("order", ("order_id",), "O" * 3000)
    assert "order_id must be at most 200 characters" in reason
    assert "(3,000 characters)" in reason
    assert len(reason) < 250


@pytest.mark.parametrize(
    "kind, path, longest",
    [
        ("order", ("lines", 0, "product_name"), limits.MAX_PRODUCT_NAME_LENGTH),
        ("cancellation", ("note",), limits.MAX_NOTE_LENGTH),
    ],
)
def test_free_text_is_bounded_and_holds_no_nul_or_surrogate(kind: str, path: Path, longest: int) -> None:
    built(kind, path, "x" * longest)
    built(kind, path, "two\tlines\r\nof text, \x85 and \x7f kept")
    assert f"at most {longest:,} characters" in refused(kind, path, "x" * (longest + 1))
    assert "NUL or surrogates (U+0000 at 1)" in refused(kind, path, "a\x00b")
    assert "NUL or surrogates (U+DC80 at 0)" in refused(kind, path, "\udc80")


def test_a_million_character_product_name_is_refused_without_echoing_it() -> None:
    reason = refused("order", ("lines", 0, "product_name"), "P" * 1_000_000)
    assert "(1,000,000 characters)" in reason
    assert len(reason) < 250


@pytest.mark.parametrize(
    "kind, path, low, high",
    [
        ("order", ("lines", 0, "quantity"), 1, limits.MAX_QUANTITY),
        ("order", ("lines", 0, "unit_price_minor"), 0, limits.MAX_UNIT_PRICE_MINOR),
        ("receipt", ("quantity",), 1, limits.MAX_QUANTITY),
        ("restock", ("quantity",), 0, limits.MAX_QUANTITY),  # 0 withdraws the purchase order line
        ("policy", ("max_backorder_qty_per_customer",), 0, limits.MAX_BACKORDER_QTY_PER_CUSTOMER),
        ("policy", ("lead_time_days",), 1, limits.MAX_POLICY_DAYS),
        ("policy", ("stale_after_days",), 1, limits.MAX_POLICY_DAYS),
    ],
)
def test_a_number_is_bounded_on_both_sides(kind: str, path: Path, low: int, high: int) -> None:
    built(kind, path, low)
    built(kind, path, high)
    assert f"must be from {low:,} to {high:,}, got {low - 1:,}" in refused(kind, path, low - 1)
    assert f"must be from {low:,} to {high:,}, got {high + 1:,}" in refused(kind, path, high + 1)
    assert "must be an integer" in refused(kind, path, True)


@pytest.mark.parametrize(
    "path, value",
    [
        (("stale_after_days",), 2_147_483_647),  # made sweep die with OverflowError
        (("lead_time_days",), 3_000_000),  # made every later order of the SKU fail its ETA
    ],
)
def test_policy_days_that_overflowed_date_arithmetic_are_refused(path: Path, value: int) -> None:
    assert "must be from 1 to 3,650" in refused("policy", path, value)


def test_the_largest_line_value_fits_a_bigint() -> None:
    assert limits.MAX_QUANTITY * limits.MAX_UNIT_PRICE_MINOR < 2**63
    assert limits.MAX_LINES_PER_ORDER * limits.MAX_QUANTITY < 2**31  # customer_order.order_units is an integer


@pytest.mark.parametrize(
    "kind, path",
    [
        ("order", ("need_by",)),
        ("restock", ("expected_date",)),
        ("shipment", ("estimated_delivery",)),
    ],
)
def test_a_date_lies_within_the_documented_window(kind: str, path: Path) -> None:
    built(kind, path, dt.date(2000, 1, 1))
    built(kind, path, dt.date(2100, 12, 31))
    assert "must be from 2000-01-01 to 2100-12-31" in refused(kind, path, dt.date(1999, 12, 31))
    assert "must be from 2000-01-01 to 2100-12-31" in refused(kind, path, dt.date(2101, 1, 1))
    assert "must be from 2000-01-01 to 2100-12-31" in refused(kind, path, dt.date(1, 1, 1))


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_an_event_time_carries_a_zone_and_lies_within_the_window(kind: str) -> None:
    path = ("occurred_at",)
    earliest = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    latest = dt.datetime(2100, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC)
    built(kind, path, earliest)
    built(kind, path, latest)
    built(kind, path, dt.datetime(2000, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=-1))))
    for outside in [
        earliest - dt.timedelta(milliseconds=1),
        latest + dt.timedelta(milliseconds=1),
        dt.datetime(2000, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))),  # 1999-12-31T23:30Z
        dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),  # before the calendar in UTC
        dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-2))),  # after it
    ]:
        assert "occurred_at must be from 2000-01-01T00:00:00+00:00" in refused(kind, path, outside), outside
    assert "must carry a time zone" in refused(kind, path, dt.datetime(2026, 1, 1))


def test_an_order_has_one_to_the_documented_number_of_lines() -> None:
    def order_of(count: int) -> dict[str, Any]:
        return factories.order("1", "2026-01-01", [("SKU", 1)] * count)

    assert len(place_order(order_of(limits.MAX_LINES_PER_ORDER)).order.lines) == 500
    with pytest.raises(InvalidEvent, match="order has 501 lines, more than 500"):
        place_order(order_of(limits.MAX_LINES_PER_ORDER + 1))
    with pytest.raises(InvalidEvent, match="order has 10,000 lines, more than 500"):
        place_order(order_of(10_000))
    with pytest.raises(InvalidEvent, match="no lines"):
        place_order(order_of(0))


def test_repeated_line_ids_are_named_once_each() -> None:
    lines = [line(line_id=f"L{i % 300}") for i in range(400)]
    with pytest.raises(InvalidEvent) as caught:
        place_order(factories.order("1", "2026-01-01", lines))
    assert str(caught.value) == "line_id values repeat within the order: ['L0', 'L1', 'L2', ...] (100 items)"


def test_a_cancellation_names_at_most_the_documented_number_of_lines() -> None:
    ids = [f"L{i}" for i in range(limits.MAX_LINE_IDS_PER_CANCELLATION + 1)]
    assert len(cancel_order(factories.cancellation("1", *ids[:-1])).cancellation.line_ids) == 500
    assert cancel_order(factories.cancellation("1")).cancellation.line_ids == ()  # every open line
    with pytest.raises(InvalidEvent, match="line_ids names 501 lines, more than 500"):
        cancel_order(factories.cancellation("1", *ids))
    with pytest.raises(InvalidEvent, match="line_ids names 20,000 lines"):
        cancel_order(factories.cancellation("1", *(["L1"] * 20_000)))


@pytest.mark.parametrize("currency", ["USD", "EUR", "JPY", "GBP", "CHF", "XOF", "KWD"])
def test_an_active_iso_4217_currency_is_accepted(currency: str) -> None:
    assert place_order(factories.order("1", "2026-01-01", [("SKU", 1)], currency=currency)).order.currency == currency


@pytest.mark.parametrize("currency", ["ABC", "QQQ", "XTS", "XXX", "XAU", "usd", "US", "", "U\x00D", "DEM", "HRK"])
def test_a_currency_outside_iso_4217_is_refused(currency: str) -> None:
    with pytest.raises(InvalidEvent, match="currency must be an active ISO 4217 code"):
        place_order(factories.order("1", "2026-01-01", [("SKU", 1)], currency=currency))


def test_the_currency_set_holds_only_three_letter_codes() -> None:
    assert 150 < len(limits.CURRENCIES) < 200
    assert all(len(code) == 3 and code.isascii() and code.isalpha() and code.isupper() for code in limits.CURRENCIES)


@pytest.mark.parametrize(
    "value, quoted",
    [
        ("short", "'short'"),
        ("x" * 80, repr("x" * 80)),
        ("x" * 81, f"{'x' * 80!r}... (81 characters)"),
        (bytes(100), repr(bytes(80)) + "... (100 bytes)"),
        (["a", "b"], "['a', 'b']"),
        (["a"] * 5, "['a', 'a', 'a', ...] (5 items)"),
        (["y" * 100], f"[{'y' * 80!r}... (100 characters)]"),
        (10**100, f"{str(10**100)[:80]}... (101 characters)"),
    ],
)
def test_an_error_quotes_at_most_a_bounded_part_of_a_value(value: object, quoted: str) -> None:
    assert limits.quote(value) == quoted


# Hypothesis leaves out surrogates unless they are asked for by category.
_ANY_CHARACTER = st.characters(exclude_categories=()) | st.characters(categories=["Cs"])
_ANY_TEXT = st.text(_ANY_CHARACTER, max_size=40) | st.text(st.sampled_from("a\x00\x01\x1f\x7f\x85\ud800\udfff é"))


@given(
    st.one_of(
        _ANY_TEXT,
        st.builds(lambda head, tail: head * 199 + tail, st.sampled_from(["x", "é", "😀"]), _ANY_TEXT),
    )
)
@settings(max_examples=examples(500))
def test_every_identifier_validation_accepts_can_be_stored(value: str) -> None:
    if limits.identifier_problem(value) is None:
        stored = value.encode("utf-8")  # raises on a lone surrogate
        assert b"\x00" not in stored
        assert len(value) <= 200 and len(stored) <= 800  # far below a btree index row's ~2,700 bytes
        assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in value)
        assert value.strip()


@given(_ANY_TEXT)
@settings(max_examples=examples(300))
def test_every_free_text_validation_accepts_can_be_stored(value: str) -> None:
    if limits.text_problem(value, 30) is None:
        assert b"\x00" not in value.encode("utf-8")
        assert len(value) <= 30
