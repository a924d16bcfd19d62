"""The promise API's request and response: a cart in, the promise of the real handler out, as JSON; clear
422s naming the field; its OpenAPI document. Over the in-memory store, through Starlette's TestClient."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests import factories
from tests.unit.fakes import FakeState, FakeUnitOfWork, MemoryStore, handle_record
from worker.domain.model import CustomerTier, ShippingService
from worker.domain.policy import ShopPolicy
from worker.entrypoints.api import MAX_BODY_BYTES, create_app
from worker.entrypoints.cli import build_parser
from worker.service import limits
from worker.service.ports import Store, StoreUnavailable
from worker.service.promise import Cart, CartLine, promise

NOW = dt.datetime(2026, 1, 20, 12, tzinfo=dt.UTC)
SHOP = ShopPolicy()


def apply(uow: FakeUnitOfWork, record: dict[str, Any]) -> None:
    handle_record(uow, record, SHOP, NOW)


def shop_state() -> FakeState:
    """LAMP: 3 on hand. DESK: none, two orders of 2 waiting, 10 expected on 2026-02-01."""
    uow = FakeUnitOfWork()
    apply(uow, factories.receipt("R1", "LAMP", 3))
    apply(uow, factories.order("O1", "2026-01-10T10:00:00+00:00", [("DESK", 2)]))
    apply(uow, factories.order("O2", "2026-01-11T10:00:00+00:00", [("DESK", 2)]))
    apply(uow, factories.restock("DESK", "PO1", 10, dt.date(2026, 2, 1), event_id="restock-PO1"))
    return uow.state


class Unavailable(MemoryStore):
    def stock(self, skus: Any) -> dict[str, int]:
        raise StoreUnavailable("connection refused")


def client_over(store: MemoryStore) -> TestClient:
    @contextlib.contextmanager
    def snapshots() -> Iterator[Store]:
        yield store

    return TestClient(create_app(snapshots, SHOP, lambda: NOW))


@pytest.fixture
def state() -> FakeState:
    return shop_state()


@pytest.fixture
def client(state: FakeState) -> TestClient:
    return client_over(MemoryStore(state))


def test_a_cart_gets_the_promise_of_the_real_handler_as_json(client: TestClient, state: FakeState) -> None:
    before = state.copy()
    cart = {
        "customer_id": "C9",
        "customer_tier": "STANDARD",
        "shipping_service": "STANDARD",
        "lines": [{"line_id": "a", "sku": "LAMP", "quantity": 5}, {"sku": "DESK", "quantity": 1}],
    }
    answer = client.post("/v1/promise", json=cart)
    assert answer.status_code == 200, answer.text
    expected = promise(
        Cart(
            "C9",
            CustomerTier.STANDARD,
            ShippingService.STANDARD,
            None,
            None,
            (CartLine("a", "LAMP", 5), CartLine("2", "DESK", 1)),
        ),
        MemoryStore(before.copy()),
        SHOP,
        NOW,
    )
    body = answer.json()
    assert body["as_of"] == "2026-01-20T12:00:00Z"
    assert [line["line_id"] for line in body["lines"]] == ["a", "2"]
    lamp, desk = body["lines"]
    assert lamp == {
        "line_id": "a",
        "sku": "LAMP",
        "quantity": 5,
        "ships_now": 3,
        "backordered": 2,
        "accepted": True,
        "rejected": 0,
        "reason": None,
        "expected_ship_date": _iso(expected.lines[0].expected_ship_date),
        "rank": 1,
    }
    assert (desk["ships_now"], desk["backordered"], desk["accepted"], desk["rank"]) == (0, 1, True, 3)
    assert desk["expected_ship_date"] == _iso(expected.lines[1].expected_ship_date) is not None
    assert body["first_shipment_date"] == "2026-01-20"  # the lamps ship today
    assert body["ship_complete_date"] == _iso(expected.ship_complete_date)
    assert state == before  # a promise changes nothing


def test_defaults_fill_what_the_cart_leaves_out(client: TestClient) -> None:
    answer = client.post("/v1/promise", json={"customer_id": "C9", "lines": [{"sku": "LAMP", "quantity": 1}]})
    assert answer.status_code == 200, answer.text
    (line,) = answer.json()["lines"]
    assert (line["line_id"], line["ships_now"], line["backordered"], line["expected_ship_date"]) == (
        "1",
        1,
        0,
        "2026-01-20",
    )
    assert answer.json()["ship_complete_date"] == "2026-01-20"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lines": [{"sku": "LAMP", "quantity": 0}]}, "lines[0].quantity"),
        ({"lines": [{"sku": "LAMP", "quantity": limits.MAX_QUANTITY + 1}]}, "lines[0].quantity"),
        ({"lines": []}, "lines"),
        ({"lines": [{"sku": f"S{i}", "quantity": 1} for i in range(limits.MAX_LINES_PER_ORDER + 1)]}, "lines"),
        ({"lines": [{"sku": "", "quantity": 1}]}, "lines[0].sku"),
        ({"lines": [{"sku": "A\x00B", "quantity": 1}]}, "lines[0].sku"),
        ({"lines": [{"sku": "LAMP", "quantity": 1, "price": 3}]}, "lines[0].price"),
        ({"customer_id": "x" * (limits.MAX_IDENTIFIER_LENGTH + 1)}, "customer_id"),
        ({"customer_tier": "PLATINUM"}, "customer_tier"),
        ({"shipping_service": "OVERNIGHT"}, "shipping_service"),
        ({"split_preference": "WHENEVER"}, "split_preference"),
        ({"need_by": "2026-02-30"}, "need_by"),
        ({"need_by": "2200-01-01"}, "need_by"),
        ({"coupon": "X"}, "coupon"),
    ],
)
def test_an_invalid_cart_is_a_422_naming_the_field(client: TestClient, change: dict[str, Any], field: str) -> None:
    cart = {"customer_id": "C9", "lines": [{"sku": "LAMP", "quantity": 1}], **change}
    answer = client.post("/v1/promise", json=cart)
    assert answer.status_code == 422, answer.text
    fields = [error["field"] for error in answer.json()["detail"]]
    assert field in fields, fields
    assert all("input" not in error for error in answer.json()["detail"])  # nothing echoed back


def test_line_ids_may_not_repeat(client: TestClient) -> None:
    lines = [{"line_id": "2", "sku": "LAMP", "quantity": 1}, {"sku": "DESK", "quantity": 1}]  # the second is "2"
    answer = client.post("/v1/promise", json={"customer_id": "C9", "lines": lines})
    assert answer.status_code == 422
    assert "repeats" in answer.json()["detail"][0]["msg"]


def test_a_missing_field_and_a_body_that_is_not_json_are_422s(client: TestClient) -> None:
    missing = client.post("/v1/promise", json={"lines": [{"sku": "LAMP", "quantity": 1}]})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["field"] == "customer_id"
    broken = client.post("/v1/promise", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 422


def test_a_body_over_the_bound_is_refused_before_it_is_parsed(client: TestClient) -> None:
    answer = client.post(
        "/v1/promise", content=b" " * (MAX_BODY_BYTES + 1), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 413
    assert answer.headers["connection"] == "close"  # the body left unread is not read as a next request


def test_a_database_that_does_not_answer_is_a_503(state: FakeState) -> None:
    answer = client_over(Unavailable(state)).post(
        "/v1/promise", json={"customer_id": "C9", "lines": [{"sku": "LAMP", "quantity": 1}]}
    )
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"


def test_the_openapi_document_describes_the_cart_and_the_promise(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/v1/promise"]["post"]
    assert {"200", "422", "503"} <= set(operation["responses"])
    schemas = document["components"]["schemas"]
    cart = schemas["CartRequest"]
    assert cart["required"] == ["customer_id", "lines"]
    assert cart["properties"]["lines"]["maxItems"] == limits.MAX_LINES_PER_ORDER
    line = schemas["CartLineRequest"]["properties"]["quantity"]
    assert (line["minimum"], line["maximum"]) == (1, limits.MAX_QUANTITY)
    assert set(schemas["LinePromiseResponse"]["properties"]) == {
        "line_id",
        "sku",
        "quantity",
        "ships_now",
        "backordered",
        "accepted",
        "rejected",
        "reason",
        "expected_ship_date",
        "rank",
    }
    assert client.get("/healthz").json() == {"status": "ok"}


def test_the_promise_command_reads_its_cart_from_arguments() -> None:
    args = build_parser().parse_args(
        ["promise", "--customer", "C9", "--tier", "VIP", "--line", "LAMP:2", "--line", "NS:SKU:1"]
    )
    assert (args.customer, args.tier, args.line) == (
        "C9",
        "VIP",
        [{"sku": "LAMP", "quantity": 2}, {"sku": "NS:SKU", "quantity": 1}],
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["promise", "--customer", "C9", "--line", "LAMP"])


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day is not None else None
