"""The promise API: `POST /v1/promise` answers what the shop can promise for a cart at checkout.

An ASGI application (FastAPI), served by uvicorn from `backorder-worker serve`. Each request takes one
read-only snapshot of the store, runs `promise` (the real `place_order` handler) on it and answers; nothing
is written and nothing is reserved. The request model holds the same bounds as an inbound order (lines per
order, quantities, identifiers, dates: worker/service/limits.py), so every cart the API accepts is an
order the worker would accept too, and a cart it refuses gets a 422 naming the field.

Bounded whatever the clients do: a request's head must come within a bound of the connection's opening or last
response (else the connection is closed: `head_bound`), a body within `timeout_seconds` and up to MAX_BODY_BYTES
(413 beyond; both answers close the connection, whose body is left unread), a connection from the pool is waited
for at most `timeout_seconds` and a statement runs at most as long (the caller's pool sets `statement_timeout`);
a database that cannot answer gives 503 at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from worker.domain.model import CustomerTier, ShippingService, SplitPreference
from worker.domain.policy import ShopPolicy
from worker.service import limits
from worker.service.ports import Store, StoreUnavailable
from worker.service.promise import Cart, CartLine, Promise, QueueCopies, promise

Snapshots = Callable[[], AbstractContextManager[Store]]

# A cart of MAX_LINES_PER_ORDER lines with identifiers at their longest fits; the same bound as an inbound message.
MAX_BODY_BYTES = limits.MAX_MESSAGE_BYTES


def _identifier(value: str) -> str:
    problem = limits.identifier_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _business_date(value: dt.date) -> dt.date:
    if (problem := limits.date_problem(value)) is not None:
        raise ValueError(problem)
    return value


Identifier = Annotated[str, AfterValidator(_identifier)]


class CartLineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    line_id: Identifier | None = Field(
        default=None, description="the line's id in the order to come; default its position in the cart (1, 2, ...)"
    )
    sku: Identifier
    quantity: int = Field(ge=1, le=limits.MAX_QUANTITY)


class CartRequest(BaseModel):
    """A cart as the order it would become."""

    model_config = ConfigDict(extra="forbid")

    customer_id: Identifier
    customer_tier: CustomerTier = CustomerTier.STANDARD
    shipping_service: ShippingService = ShippingService.STANDARD
    need_by: Annotated[dt.date, AfterValidator(_business_date)] | None = Field(
        default=None, description="the date the customer needs the order by, if any"
    )
    split_preference: SplitPreference | None = Field(
        default=None, description="null: the product's (or the shop's) default split"
    )
    lines: list[CartLineRequest] = Field(min_length=1, max_length=limits.MAX_LINES_PER_ORDER)

    def line_ids(self) -> list[str]:
        """Each line's id: its own, or its position in the cart (1, 2, ...)."""
        return [line.line_id or str(position) for position, line in enumerate(self.lines, start=1)]

    @model_validator(mode="after")
    def _line_ids_unique(self) -> CartRequest:
        seen: set[str] = set()
        for line_id in self.line_ids():
            if line_id in seen:
                raise ValueError(f"line_id {limits.quote(line_id)} repeats within the cart")
            seen.add(line_id)
        return self

    def cart(self) -> Cart:
        return Cart(
            customer_id=self.customer_id,
            customer_tier=self.customer_tier,
            shipping_service=self.shipping_service,
            need_by=self.need_by,
            split_preference=self.split_preference,
            lines=tuple(
                CartLine(line_id, line.sku, line.quantity)
                for line_id, line in zip(self.line_ids(), self.lines, strict=True)
            ),
        )


class LinePromiseResponse(BaseModel):
    line_id: str
    sku: str
    quantity: int = Field(description="units asked for")
    ships_now: int = Field(description="units that would be released to shipping at once")
    backordered: int = Field(description="units that would wait (held for a ship-complete line included)")
    accepted: bool = Field(description="whether the units that would wait are taken as a backorder")
    rejected: int = Field(description="units refused")
    reason: str | None = Field(description="why, when refused or held")
    expected_ship_date: dt.date | None = Field(
        description="when the line's last unit would ship; today when it all ships now; null: not known"
    )
    rank: int | None = Field(description="the line's place in its SKU's queue (1: served first); null: none waits")


class PromiseResponse(BaseModel):
    as_of: dt.datetime = Field(description="the moment of the snapshot the promise was made on")
    lines: list[LinePromiseResponse]
    ship_complete_date: dt.date | None = Field(description="when the whole order would have shipped; null: not known")
    first_shipment_date: dt.date | None = Field(description="when its first units would ship; null: not known")

    @classmethod
    def of(cls, cart: Cart, made: Promise, as_of: dt.datetime) -> PromiseResponse:
        asked = {line.line_id: line.quantity for line in cart.lines}
        return cls(
            as_of=as_of,
            lines=[
                LinePromiseResponse(
                    line_id=line.line_id,
                    sku=line.sku,
                    quantity=asked[line.line_id],
                    ships_now=line.ships_now,
                    backordered=line.backordered,
                    accepted=line.accepted,
                    rejected=line.rejected,
                    reason=line.reason,
                    expected_ship_date=line.expected_ship_date,
                    rank=line.rank,
                )
                for line in made.lines
            ],
            ship_complete_date=made.ship_complete_date,
            first_shipment_date=made.first_shipment_date,
        )


class Problem(BaseModel):
    detail: str


def promise_for(
    request: CartRequest,
    snapshots: Snapshots,
    shop: ShopPolicy,
    now: dt.datetime,
    copies: QueueCopies | None = None,
) -> PromiseResponse:
    """The promise for a cart on one snapshot taken now: what the API answers and the CLI prints."""
    cart = request.cart()
    with snapshots() as store:
        made = promise(cart, store, shop, now, copies=copies)
    return PromiseResponse.of(cart, made, now)


def _field(loc: tuple[int | str, ...]) -> str:
    """`("body", "lines", 0, "quantity")` -> `lines[0].quantity`."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def validation_errors(errors: Any) -> list[dict[str, Any]]:
    """Pydantic's errors as FastAPI's `detail` items with the field spelled out, without echoing the input."""
    return [
        {"loc": list(e["loc"]), "field": _field(tuple(e["loc"])), "msg": e["msg"], "type": e["type"]} for e in errors
    ]


class BoundedBody:
    """Reads a request's whole body before the application sees it: at most `max_bytes` (413 beyond) and
    within `timeout_seconds` (408), so that a slow or huge upload holds no worker thread."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_seconds: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _answer(send, 413, f"the body is over {self.max_bytes:,} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout_seconds):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await _answer(send, 413, f"the body is over {self.max_bytes:,} bytes")
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await _answer(send, 408, f"the body did not arrive within {self.timeout_seconds:g} s")
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def head_bound(timeout_seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP/1.1 protocol (httptools) with the wait for a request's head bounded too: a connection that has
    not sent a whole request head within `timeout_seconds` of opening, or of its last response, is closed.

    uvicorn times a connection out only once a response is done and no byte comes after it (its keep-alive
    timeout, which any byte cancels): a connection that never sends a request, or sends its head a byte at a time,
    stays open, and every open connection counts toward `limit_concurrency`, beyond which every request gets 503. A
    client holding that many idle connections (a pool warmed and left, a proxy's spares) shut checkout out for as
    long as it held them. Give `timeout_seconds` more than the keep-alive timeout, so that an idle keep-alive
    connection still closes at the keep-alive timeout, as clients expect.
    """

    class HeadBoundProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_head()

        def on_headers_complete(self) -> None:
            self._head_came()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)  # the next request's head came already
            super().on_response_complete()
            if not pipelined and not self.transport.is_closing():
                self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_came()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            self._head_came()
            self._head_timer = self.loop.call_later(timeout_seconds, self._head_late)

        def _head_came(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            answering = self.cycle is not None and not self.cycle.response_complete
            if not answering and not self.transport.is_closing():
                self.transport.close()

    return HeadBoundProtocol


async def _answer(send: Send, status: int, detail: str) -> None:
    """An answer before the body was read whole (408, 413): the connection is closed after it, since what is left of
    the body would be read as the next request, and a connection kept would hold a place meanwhile."""
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(
    snapshots: Snapshots,
    shop: ShopPolicy,
    clock: Callable[[], dt.datetime],
    *,
    timeout_seconds: float = 2.0,
    copies: QueueCopies | None = None,
) -> FastAPI:
    """The promise API over `snapshots` (each call: a read-only store on one consistent snapshot), with the
    queue `copies` it keeps across requests, if any."""
    app = FastAPI(
        title="backorder-worker promise API",
        version="1",
        description=(
            "What the shop can promise for a cart at checkout, by the rules the worker applies when the order "
            "arrives. A promise reserves nothing and changes nothing: another order may take the units meanwhile."
        ),
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_errors(exc.errors())}, status_code=422)

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        detail = {"detail": "the database did not answer in time"}
        return JSONResponse(detail, status_code=503, headers={"Retry-After": "1"})

    @app.post(
        "/v1/promise",
        response_model=PromiseResponse,
        responses={503: {"model": Problem, "description": "the database did not answer in time"}},
        summary="What placing this cart now would give: units now, backordered, accepted, expected dates",
    )
    def post_promise(cart: CartRequest) -> Response:
        # Written here, in the request's thread, from the model built by promise_for: returned as a model,
        # FastAPI would validate it again, in a second trip through the thread pool (about 0.5 ms a request).
        made = promise_for(cart, snapshots, shop, clock(), copies)
        return Response(made.model_dump_json(), media_type="application/json")

    @app.get("/healthz", summary="200 while the server answers (it checks no dependency)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(BoundedBody, max_bytes=MAX_BODY_BYTES, timeout_seconds=timeout_seconds)
    return app
