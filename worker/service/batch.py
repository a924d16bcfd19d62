"""Handling a polled batch: decode, map to commands, apply them in one database transaction (several in turn
for a batch of large orders, and for a receipt that fills more lines than one transaction writes: see
`lines_per_transaction`).

A message that cannot be accepted is written to the dead-letter topic (through the outbox, in the
same transaction) and the rest of the batch goes on. A database that is unavailable is not the
message's fault: `StoreUnavailable` leaves this function and the batch is retried later.

A worker asked to stop (`stopping`) begins no further message or receipt step: the results end with the last
message a committed transaction finished, and the messages after it (a receipt whose steps are not all given among
them) are left to be consumed again; the receipt, a duplicate then, gives the steps its plan still holds. (What a
failure already begun needs still follows, one short transaction: the dead letter of a message found failing alone,
the plan given back after a step that failed.)

Any other failure of the batch's transaction (one raised outside an event's savepoint, such as a value
the database refuses while the batch's orders and SKUs are locked or when its changes are saved) is
some message's fault, and must not
block the partition: the batch is split in halves, each handled in a transaction of its own, until the
message that fails alone is found; it is dead-lettered with its error, and the others are committed.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import structlog

from worker.domain.policy import ShopPolicy
from worker.service import commands, handlers
from worker.service.handlers import Outcome
from worker.service.messages import InboundMessage, RejectedMessage, UnprocessableEvent
from worker.service.ports import Decoder, StoreRefused, StoreUnavailable, UnitOfWorkFactory

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class MessageResult:
    message: InboundMessage
    outcome: Outcome
    error: RejectedMessage | None = None


def handle_batch(
    messages: Sequence[InboundMessage],
    *,
    decoder: Decoder,
    expected_records: dict[str, str],
    unit_of_work: UnitOfWorkFactory,
    shop: ShopPolicy,
    now: dt.datetime,
    on_progress: Callable[[], None] | None = None,
    lines_per_transaction: int = 5_000,
    stopping: Callable[[], bool] = lambda: False,
) -> list[MessageResult]:
    """Apply a batch; returns one result per message, in order, up to where it stopped. Raises StoreUnavailable.

    The batch is cut into transactions of at most `lines_per_transaction` order lines (a message with
    more is a transaction alone), and a receipt that fills more lines than that gives them in steps of about as
    many, transactions of their own before the messages after it are handled, so that no transaction holds its
    locks for long whatever the batch holds; `on_progress` is called after each. Once `stopping()` is true, no
    further message or step begins: the results are those of the messages handled in full, a prefix of the batch.
    """
    parsed = [(message, _parse(message, decoder, expected_records)) for message in messages]
    results: list[MessageResult] = []
    for chunk in _chunks(parsed, lines_per_transaction):
        done = _isolating(
            chunk,
            unit_of_work=unit_of_work,
            shop=shop,
            now=now,
            on_progress=on_progress,
            fills_per_step=lines_per_transaction,
            stopping=stopping,
        )
        results += done
        if on_progress is not None:
            on_progress()
        if len(done) < len(chunk):
            break  # stopped within the chunk
    if len(results) < len(messages):
        log.info("batch_stopped", handled=len(results), left=len(messages) - len(results))
    return results


Parsed = tuple[InboundMessage, commands.Command | RejectedMessage]


def _weight(item: commands.Command | RejectedMessage) -> int:
    """The order lines an event may touch, roughly what it costs to apply."""
    if isinstance(item, commands.PlaceOrder):
        return len(item.order.lines)
    if isinstance(item, commands.CancelOrder):
        return 1 + len(item.cancellation.line_ids)
    return 1


def _chunks(batch: list[Parsed], budget: int) -> Iterator[list[Parsed]]:
    chunk: list[Parsed] = []
    weight = 0
    for pair in batch:
        cost = _weight(pair[1])
        if chunk and weight + cost > budget:
            yield chunk
            chunk, weight = [], 0
        chunk.append(pair)
        weight += cost
    if chunk:
        yield chunk


def _isolating(
    batch: list[Parsed],
    *,
    unit_of_work: UnitOfWorkFactory,
    shop: ShopPolicy,
    now: dt.datetime,
    on_progress: Callable[[], None] | None = None,
    fills_per_step: int,
    stopping: Callable[[], bool],
) -> list[MessageResult]:
    """The results of `batch`'s messages, up to where it stopped (`stopping()` true before a transaction)."""
    results: list[MessageResult] = []
    while len(results) < len(batch) and not stopping():
        rest = batch[len(results) :]
        try:
            done, left = _in_one_transaction(
                rest, unit_of_work=unit_of_work, shop=shop, now=now, fills_per_step=fills_per_step
            )
        except StoreUnavailable:
            raise
        except Exception as exc:
            if len(rest) > 1:
                middle = len(rest) // 2
                log.warning("batch_split", messages=len(rest), error=_describe(exc))
                again = functools.partial(
                    _isolating,
                    unit_of_work=unit_of_work,
                    shop=shop,
                    now=now,
                    on_progress=on_progress,
                    fills_per_step=fills_per_step,
                    stopping=stopping,
                )
                first = again(rest[:middle])
                if len(first) < middle:
                    return results + first  # stopped
                return results + first + again(rest[middle:])
            message = rest[0][0]
            log.exception("message_isolated", topic=message.topic, partition=message.partition, offset=message.offset)
            error = UnprocessableEvent(_describe(exc))
            with unit_of_work() as uow:
                uow.caused_by(message.written_at)
                uow.dead_letter(message, error, now)
            return [*results, MessageResult(message, Outcome.DEAD_LETTERED, error)]
        results += done
        if left is not None and not _give_more(
            left,
            done[-1].message,
            unit_of_work=unit_of_work,
            shop=shop,
            now=now,
            on_progress=on_progress,
            stopping=stopping,
        ):
            return results[:-1]  # the receipt's steps are not all given: it is to be consumed again
    return results


def _give_more(
    left: handlers.FillsLeft,
    message: InboundMessage,
    *,
    unit_of_work: UnitOfWorkFactory,
    shop: ShopPolicy,
    now: dt.datetime,
    on_progress: Callable[[], None] | None,
    stopping: Callable[[], bool],
) -> bool:
    """A receipt's further steps, each in a transaction of its own, before the messages after it; False if the
    worker stopping left some (the receipt, consumed again, a duplicate then, gives the steps its plan still holds,
    as after the database lost, which stops them with the batch). A step that fails for a reason of its own (a
    defect) stops them too: the units its plan still promises are given back, on hand, where the next event that
    allocates the SKU's stock gives them."""
    more: handlers.FillsLeft | None = left
    while more is not None:
        if stopping():
            log.info("receipt_steps_left", receipt_id=left.command.receipt.receipt_id, sku=left.command.receipt.sku)
            return False
        try:
            with unit_of_work() as uow:
                uow.caused_by(message.written_at)
                done = handlers.give_more(more, uow, shop, now)
        except StoreUnavailable:
            raise
        except Exception:
            log.exception(
                "receipt_steps_stopped",
                receipt_id=left.command.receipt.receipt_id,
                sku=left.command.receipt.sku,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
            )
            try:
                with unit_of_work() as uow:
                    units = handlers.give_back(left.command, uow)
            except StoreUnavailable:
                raise  # the batch is handled again: the receipt, a duplicate then, gives the plan's steps
            except Exception:
                log.exception("receipt_plan_not_given_back", receipt_id=left.command.receipt.receipt_id)
                return True
            log.warning("receipt_plan_given_back", receipt_id=left.command.receipt.receipt_id, units=units)
            return True
        more = done if isinstance(done, handlers.FillsLeft) else None
        if on_progress is not None:
            on_progress()
    return True


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _in_one_transaction(
    batch: list[Parsed],
    *,
    unit_of_work: UnitOfWorkFactory,
    shop: ShopPolicy,
    now: dt.datetime,
    fills_per_step: int,
) -> tuple[list[MessageResult], handlers.FillsLeft | None]:
    """The batch's messages in one transaction, up to its end or to a receipt that leaves fills to give in
    transactions of their own (the messages after it come after those); their results, and what is left."""
    results: list[MessageResult] = []
    with unit_of_work() as uow:
        uow.prepare([item for _, item in batch if not isinstance(item, RejectedMessage)])
        for message, item in batch:
            uow.caused_by(message.written_at)
            if not isinstance(item, RejectedMessage):
                try:
                    with uow.savepoint():
                        done = handlers.handle(item, uow, shop, now, fills_per_step=fills_per_step)
                    if isinstance(done, handlers.FillsLeft):
                        results.append(MessageResult(message, done.outcome))
                        return results, done  # the transaction commits as the block ends
                    results.append(MessageResult(message, done))
                    continue
                except RejectedMessage as exc:
                    item = exc
                except (StoreUnavailable, StoreRefused):  # the transaction is lost: the batch is retried or split
                    raise
                except Exception as exc:  # a defect must not stop the worker or lose the event
                    log.exception(
                        "event_failed",
                        topic=message.topic,
                        partition=message.partition,
                        offset=message.offset,
                    )
                    item = UnprocessableEvent(_describe(exc))
            uow.dead_letter(message, item, now)
            results.append(MessageResult(message, Outcome.DEAD_LETTERED, item))
    return results, None


def _parse(
    message: InboundMessage, decoder: Decoder, expected_records: dict[str, str]
) -> commands.Command | RejectedMessage:
    try:
        record_name, record = decoder.decode(message.value)
        return commands.command_for(record_name, expected_records[message.topic], record)
    except RejectedMessage as exc:
        return exc
