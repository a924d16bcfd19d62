"""handle_batch: a batch is applied in one transaction, and no message can stop the ones around it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tests import factories
from tests.unit.fakes import FakeUnitOfWorkFactory, apply
from worker.adapters.avro import AvroCodec
from worker.domain.events import FulfillmentRequested
from worker.domain.policy import ShopPolicy
from worker.service.batch import MessageResult, handle_batch
from worker.service.handlers import Outcome
from worker.service.messages import InboundMessage, UnprocessableEvent
from worker.service.ports import StoreUnavailable

NOW = dt.datetime(2026, 1, 20, 12, tzinfo=dt.UTC)
CODEC = AvroCodec.from_directory()
TOPICS = {"orders": "backorder.OrderCreated", "receipts": "backorder.InventoryReceived"}


def message(offset: int, topic: str, record: dict[str, Any]) -> InboundMessage:
    return InboundMessage(topic, 0, offset, None, CODEC.encode(TOPICS[topic], record))


def run(factory: FakeUnitOfWorkFactory, messages: list[InboundMessage], **options: Any) -> list[MessageResult]:
    return handle_batch(
        messages, decoder=CODEC, expected_records=TOPICS, unit_of_work=factory, shop=ShopPolicy(), now=NOW, **options
    )


def batch_with_poison(size: int, poison_at: set[int]) -> list[InboundMessage]:
    return [
        message(i, "orders", factories.order(f"O-{i}", "2026-01-01", [("POISON" if i in poison_at else "SKU", 1)]))
        for i in range(size)
    ]


def test_a_batch_commits_once() -> None:
    factory = FakeUnitOfWorkFactory()
    results = run(factory, batch_with_poison(5, set()))
    assert [r.outcome for r in results] == [Outcome.PROCESSED] * 5
    assert factory.transactions == 1


@pytest.mark.parametrize("poison_at", [{0}, {4}, {7}, {2, 3}, {0, 9}, set(range(10))])
def test_a_message_that_fails_the_batch_is_dead_lettered_and_the_others_commit(poison_at: set[int]) -> None:
    factory = FakeUnitOfWorkFactory()
    factory.refuse = lambda name: name == "POISON"
    messages = batch_with_poison(10, poison_at)

    results = run(factory, messages)

    assert [r.message.offset for r in results] == list(range(10))  # one result per message, in order
    dead = {r.message.offset for r in results if r.outcome is Outcome.DEAD_LETTERED}
    assert dead == poison_at
    assert all(r.outcome is Outcome.PROCESSED for r in results if r.message.offset not in poison_at)
    assert {m.offset for m, _ in factory.state.dead} == poison_at  # dead-lettered once each
    for _, error in factory.state.dead:
        assert isinstance(error, UnprocessableEvent)
        assert str(error) == "ValueError: the store cannot hold 'POISON'"  # the error's class and message
    placed = {order_id for order_id, _ in factory.state.lines}
    assert placed == {f"O-{i}" for i in range(10) if i not in poison_at}


def test_isolation_is_logarithmic_in_the_batch_size() -> None:
    factory = FakeUnitOfWorkFactory()
    factory.refuse = lambda name: name == "POISON"
    run(factory, batch_with_poison(128, {77}))
    # The failed batch, then two halves per level down to the message (log2(128) = 7), then its dead letter.
    assert factory.transactions <= 1 + 2 * 7 + 1


def test_the_messages_after_a_poison_message_see_what_those_before_it_did() -> None:
    factory = FakeUnitOfWorkFactory()
    factory.refuse = lambda name: name == "POISON"
    messages = [
        message(0, "orders", factories.order("O-1", "2026-01-01", [("SKU", 2)])),
        message(1, "orders", factories.order("O-X", "2026-01-01", [("POISON", 1)])),
        message(2, "receipts", factories.receipt("R-1", "SKU", 2)),
    ]
    results = run(factory, messages)
    assert [r.outcome for r in results] == [Outcome.PROCESSED, Outcome.DEAD_LETTERED, Outcome.PROCESSED]
    [shipment] = [e for e in factory.state.outbox if isinstance(e, FulfillmentRequested)]
    assert (shipment.order_id, shipment.lines[0].quantity) == ("O-1", 2)


def test_an_unavailable_store_is_not_any_message_s_fault() -> None:
    factory = FakeUnitOfWorkFactory()
    factory.unavailable = True
    with pytest.raises(StoreUnavailable):
        run(factory, batch_with_poison(4, set()))
    assert factory.state.dead == [] and factory.state.lines == {}


def test_a_batch_of_large_orders_commits_in_bounded_transactions() -> None:
    factory = FakeUnitOfWorkFactory()
    messages = [
        message(i, "orders", factories.order(f"O-{i}", "2026-01-01", [(f"SKU-{n}", 1) for n in range(3)]))
        for i in range(10)
    ]
    progress: list[int] = []

    results = run(
        factory, messages, on_progress=lambda: progress.append(len(factory.state.lines)), lines_per_transaction=7
    )

    assert [r.outcome for r in results] == [Outcome.PROCESSED] * 10
    assert factory.transactions == 5  # two orders of 3 lines fit under 7
    assert progress == [6, 12, 18, 24, 30]  # each transaction committed before the next began


def test_a_worker_stopping_begins_no_further_transaction_of_the_batch() -> None:
    """Asked to stop after two of a batch's five transactions: the results are those of the four orders they
    committed, a prefix of the batch, and nothing of the others is written."""
    factory = FakeUnitOfWorkFactory()
    messages = [
        message(i, "orders", factories.order(f"O-{i}", "2026-01-01", [(f"SKU-{n}", 1) for n in range(3)]))
        for i in range(10)
    ]

    results = run(factory, messages, lines_per_transaction=7, stopping=lambda: factory.transactions >= 2)

    assert [(r.message.offset, r.outcome) for r in results] == [(i, Outcome.PROCESSED) for i in range(4)]
    assert factory.transactions == 2
    assert {order_id for order_id, _ in factory.state.lines} == {f"O-{i}" for i in range(4)}


def test_a_worker_stopping_while_a_poison_message_is_sought_leaves_the_rest() -> None:
    """Stopping while the batch is split to find the message that fails it: the half committed before the stop
    is in the results, the rest (the poison message among it) is left to be consumed again, not dead-lettered."""
    factory = FakeUnitOfWorkFactory()
    factory.refuse = lambda name: name == "POISON"
    results = run(factory, batch_with_poison(8, {6}), stopping=lambda: factory.transactions >= 2)
    # The batch (failed), its first half (committed): then the stop.
    assert [(r.message.offset, r.outcome) for r in results] == [(i, Outcome.PROCESSED) for i in range(4)]
    assert factory.state.dead == []


def test_an_order_larger_than_the_transaction_budget_is_a_transaction_alone() -> None:
    factory = FakeUnitOfWorkFactory()
    messages = [message(0, "orders", factories.order("O-BIG", "2026-01-01", [(f"S{n}", 1) for n in range(9)]))]
    results = run(factory, messages, lines_per_transaction=4)
    assert [r.outcome for r in results] == [Outcome.PROCESSED] and factory.transactions == 1


def test_a_transaction_of_the_fake_that_fails_leaves_its_state_as_it_was() -> None:
    """The fake's transactions are isolated as the database's: what one that fails wrote is not kept, in the lists of
    its state either (a second cancellation of an order not seen yet is added to the first's, as it waits)."""
    factory = FakeUnitOfWorkFactory()
    with factory() as uow:
        apply(factories.command(factories.cancellation("O-1", "L1")), uow, ShopPolicy(), NOW)
    waiting = list(factory.state.pending["O-1"])
    with pytest.raises(RuntimeError), factory() as uow:
        apply(factories.command(factories.cancellation("O-1", "L2")), uow, ShopPolicy(), NOW)
        uow.flush()
        raise RuntimeError("the transaction fails after writing")
    assert len(waiting) == 1
    assert factory.state.pending["O-1"] == waiting
