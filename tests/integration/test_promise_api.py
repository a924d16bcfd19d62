"""A promise at checkout is what the worker then does: carts asked of the real endpoint (`backorder-worker
serve` over HTTP), then placed as orders through Kafka with nothing else in between, get the same units now,
the same acceptance and the same expected ship date. And `backorder-worker promise` prints the same."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import localstack
import pytest

from tests import factories
from tests.integration.conftest import ROOT, Deployment, days_ago, wait_for
from tests.unit.test_http import closed_by_server
from worker.service import limits


class PromiseServer:
    """`python -m worker serve` on a free port of this test's world."""

    def __init__(self, deployment: Deployment, log_path: Path, **settings: str) -> None:
        self.port = localstack.free_port()
        self._log = log_path.open("ab")
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "serve"],
            env=deployment.env(BACKORDER_PROMISE_PORT=str(self.port), **settings),
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_for("the promise API", self._answers, timeout_s=30)
        except BaseException:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self._log.close()
            raise

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self._log.close()
        return code


@pytest.fixture
def server(deployment: Deployment, tmp_path: Path) -> Iterator[PromiseServer]:
    served = PromiseServer(deployment, tmp_path / "serve.log")
    try:
        yield served
    finally:
        if served.proc.poll() is None:
            served.stop()


def status_of(server: PromiseServer, path: str) -> int:
    try:
        return server.get(path)[0]
    except urllib.error.HTTPError as exc:
        return exc.code


def test_connections_that_send_no_request_head_are_closed_and_leave_room_for_carts(
    deployment: Deployment, tmp_path: Path
) -> None:
    """As many connections as the API takes at once (4 here), opened and left without a request, or sending a head a
    few bytes at a time: while they are open, a cart gets 503 (the concurrency limit counts connections); each is
    closed once its head is late (the 5 s keep-alive plus BACKORDER_PROMISE_TIMEOUT_SECONDS, 1 s here, after it
    opened), and carts are answered again. A keep-alive connection idle 3 s after a response still serves."""
    served = PromiseServer(
        deployment,
        tmp_path / "serve.log",
        BACKORDER_PROMISE_MAX_CONCURRENCY="4",
        BACKORDER_PROMISE_TIMEOUT_SECONDS="1",
    )
    try:
        idle = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(3)]
        dribbling = socket.create_connection(("127.0.0.1", served.port))
        dribbling.sendall(b"POST /v1/promise HTTP/1.1\r\n")
        time.sleep(0.2)
        assert status_of(served, "/healthz") == 503  # the limit reached by connections that ask nothing
        for part in (b"Host: x\r\n", b"Content-", b"Type: app", b"lication/", b"json\r\n", b"Content-"):
            time.sleep(1.0)
            with contextlib.suppress(OSError):  # closed already
                dribbling.sendall(part)
        assert [closed_by_server(sock, wait_s=3.0) for sock in [*idle, dribbling]] == [True] * 4
        assert status_of(served, "/healthz") == 200
        for sock in [*idle, dribbling]:
            sock.close()

        kept = http.client.HTTPConnection("127.0.0.1", served.port, timeout=5)
        sockets = []
        for pause in (0.0, 3.0):  # past the promise timeout, within the keep-alive
            time.sleep(pause)
            kept.request("GET", "/healthz")
            answer = kept.getresponse()
            assert (answer.status, answer.read()) == (200, b'{"status":"ok"}')
            sockets.append(kept.sock)
        assert sockets[0] is sockets[1]  # one connection, kept
        kept.close()
    finally:
        served.stop()


def placed(deployment: Deployment, order_id: str, lines: int) -> dict[str, tuple[Any, ...]]:
    """line id -> (allocated, rejected, still wanted and not allocated, expected ship date) once handled."""
    rows = wait_for(
        f"order {order_id} handled",
        lambda: (
            r
            if len(
                r := deployment.query(
                    """SELECT line_id, quantity_allocated, quantity_rejected,
                              quantity - quantity_rejected - quantity_cancelled - quantity_allocated,
                              expected_ship_date
                       FROM order_line WHERE order_id = %s""",
                    order_id,
                )
            )
            == lines
            else None
        ),
        timeout_s=30,
        every_s=0.1,
    )
    return {row[0]: row[1:] for row in rows}


def test_the_promise_is_what_the_worker_then_does(deployment: Deployment, server: PromiseServer) -> None:
    deployment.start_worker()
    # IN: 5 on hand. OUT: none, two orders waiting, 6 expected in 10 days. GONE: discontinued. CAP: at
    # most 2 per customer on backorder.
    deployment.produce("inventory-received", factories.receipt("R-IN", "IN", 5))
    deployment.produce("product-policy", factories.policy("GONE", discontinued=True))
    deployment.produce("product-policy", factories.policy("CAP", max_backorder_qty_per_customer=2))
    deployment.produce("order-created", factories.order("old-std", days_ago(3), [("OUT", 2)]))
    deployment.produce("order-created", factories.order("old-vip", days_ago(1), [("OUT", 2)], customer_tier="VIP"))
    restock_date = dt.date.today() + dt.timedelta(days=10)
    restock = factories.restock("OUT", "PO-1", 6, restock_date, dt.datetime.now(dt.UTC), event_id="restock-PO-1")
    deployment.produce("restock-expected", restock)
    wait_for(
        "the setup handled",
        lambda: deployment.query(
            "SELECT (SELECT count(*) FROM order_line) = 2 AND (SELECT count(*) FROM product_policy) = 2"
            " AND (SELECT count(*) FROM stock_receipt) = 1 AND EXISTS (SELECT FROM expected_restock)"
        )[0][0],
        timeout_s=30,
    )

    carts: list[dict[str, Any]] = [
        {"customer_id": "c1", "lines": [{"sku": "IN", "quantity": 3}]},  # in stock
        {"customer_id": "c2", "lines": [{"sku": "IN", "quantity": 4}]},  # 2 now, 2 wait with no date
        {"customer_id": "c3", "customer_tier": "VIP", "lines": [{"sku": "OUT", "quantity": 1}]},  # after old-vip
        {
            "customer_id": "c4",
            "split_preference": "SHIP_COMPLETE",
            "shipping_service": "EXPEDITED",
            "lines": [{"sku": "OUT", "quantity": 1}, {"sku": "IN", "quantity": 1}],
        },
        {"customer_id": "c5", "lines": [{"sku": "GONE", "quantity": 2}]},  # refused: discontinued
        {"customer_id": "c6", "lines": [{"sku": "CAP", "quantity": 3}, {"sku": "IN", "quantity": 1}]},  # 1 over the cap
    ]
    answers = []
    for n, cart in enumerate(carts, start=1):
        status, answer = server.post("/v1/promise", cart)
        assert status == 200, answer
        answers.append(answer)
        order_id = f"cart-{n}"
        lines = [
            {
                "line_id": str(i),
                "sku": line["sku"],
                "product_name": "p",
                "quantity": line["quantity"],
                "unit_price_minor": 0,
            }
            for i, line in enumerate(cart["lines"], start=1)
        ]
        fields = {k: v for k, v in cart.items() if k != "lines"}
        deployment.produce("order-created", factories.order(order_id, answer["as_of"], lines, **fields))
        real = placed(deployment, order_id, len(lines))
        for line in answer["lines"]:
            allocated, rejected, waiting, expected = real[line["line_id"]]
            assert (line["ships_now"], line["rejected"], line["backordered"]) == (allocated, rejected, waiting), (
                cart,
                answer,
                real,
            )
            assert line["accepted"] == (rejected == 0)
            if waiting:
                assert line["expected_ship_date"] == (expected.isoformat() if expected else None), (cart, answer, real)

    # What the carts show: the stock shipping now, a queue position behind the older VIP, the refusals.
    first, second, vip, complete, gone, capped = (a["lines"] for a in answers)
    assert (first[0]["ships_now"], first[0]["expected_ship_date"]) == (3, dt.datetime.now(dt.UTC).date().isoformat())
    assert (second[0]["ships_now"], second[0]["backordered"]) == (2, 2)
    assert (vip[0]["ships_now"], vip[0]["rank"], vip[0]["expected_ship_date"] is not None) == (0, 2, True)
    assert answers[3]["first_shipment_date"] == complete[0]["expected_ship_date"]  # ship complete: nothing now
    assert (gone[0]["accepted"], gone[0]["rejected"]) == (False, 2)
    assert (capped[0]["rejected"], capped[0]["accepted"]) == (1, False)

    # The server kept OUT's queue from the earlier promises; the orders placed since set its version anew,
    # so the same VIP cart now stands behind the expedited cart-4, old-vip and cart-3.
    assert deployment.query("SELECT count(*) FROM sku_queue_version WHERE sku = 'OUT'")[0][0] == 1
    status, again = server.post("/v1/promise", carts[2])
    assert status == 200 and again["lines"][0]["rank"] == 4, again

    # Refused carts are 422s naming the field, and the document of it all is published.
    status, refused = server.post(
        "/v1/promise", {"customer_id": "c7", "lines": [{"sku": "IN", "quantity": limits.MAX_QUANTITY + 1}]}
    )
    assert status == 422 and refused["detail"][0]["field"] == "lines[0].quantity"
    assert "/v1/promise" in server.get("/openapi.json")[1]["paths"]

    # The terminal's version of the same on the same database: IN is sold out by now.
    shown = deployment.cli("promise", "--customer", "c8", "--line", "IN:1", "--line", "OUT:2")
    assert "nothing was reserved or changed" in shown
    assert [row.split()[:5] for row in shown.splitlines()[1:3]] == [
        ["1", "IN", "1", "0", "1"],
        ["2", "OUT", "2", "0", "2"],
    ]
    assert server.stop() == 0
