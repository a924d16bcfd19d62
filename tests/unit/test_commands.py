"""Inbound records are checked against the contract before anything happens."""

from __future__ import annotations

from typing import Any

import pytest

from tests import factories
from worker.service.commands import (
    cancel_order,
    command_for,
    content_hash,
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
        ([line(quantity=0)], "quantity must be > 0"),
        ([line(quantity=-2)], "quantity must be > 0"),
        ([line(sku="")], "sku must be a non-empty string"),
        ([line(sku="  ")], "sku must be a non-empty string"),
        ([line(unit_price_minor=-1)], "unit_price_minor must be >= 0"),
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
        ({"max_backorder_qty_per_customer": -1}, "max_backorder_qty_per_customer must be >= 0"),
        ({"lead_time_days": 0}, "lead_time_days must be > 0"),
        ({"stale_after_days": -3}, "stale_after_days must be > 0"),
        ({"sku": ""}, "sku"),
    ],
)
def test_a_product_policy_is_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        set_product_policy({**factories.policy("SKU"), **fields})
