"""Inbound messages as the service layer sees them, and the reasons a message is refused.

A refused message goes to the dead-letter topic with the class name of its reason as
`dlq.error.class` and the text as `dlq.error.message`; processing goes on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class InboundMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = field(default=())
    written_at: dt.datetime | None = None  # the Kafka timestamp: when the event entered the log


class RejectedMessage(Exception):
    """The message cannot be accepted; it belongs on the dead-letter topic."""


class UndecodableMessage(RejectedMessage):
    """Not Avro single-object encoding, or a body that does not match its writer schema."""


class UnknownSchema(RejectedMessage):
    """The writer-schema fingerprint is not among the schemas this worker knows."""


class UnexpectedRecord(RejectedMessage):
    """A well-formed record of a kind that does not belong on this topic."""


class InvalidEvent(RejectedMessage):
    """A field has a value the contract does not allow (quantity <= 0, empty SKU, no lines, ...)."""


class ConflictingDuplicate(RejectedMessage):
    """Same natural key (order_id, receipt_id) as an event already accepted, but different content."""


class UnprocessableEvent(RejectedMessage):
    """The event passed validation but could not be applied (an unexpected error, kept for a person)."""
