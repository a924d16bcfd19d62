"""Logging, configured once at the entry point: JSON lines for machines, structlog's console renderer for a person.

Records from the standard library's logging (librdkafka through confluent-kafka, psycopg-pool)
are rendered by the same processors, so the stream stays one format.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]


def chosen_format(fmt: LogFormat, stderr_is_terminal: bool) -> Literal["json", "console"]:
    """`auto` is the console renderer when a person watches stderr, JSON lines when a program reads it."""
    if fmt == "auto":
        return "console" if stderr_is_terminal else "json"
    return fmt


class _Lines:
    """structlog's last step: each rendered record is written as one line to the standard library handler's stream,
    under that handler's lock, so the worker's records and the libraries' never interleave. The worker's records do
    not go through `logging` (a record made, copied and formatted again: 35-39 us a line, 20% of the worker's CPU at
    INFO in a burst; see the README's Logs section), but the level of their `logging` logger still holds (structlog's
    `filter_by_level` reads it here): `logging.getLogger("worker.service").setLevel(...)` quiets the rules' records."""

    def __init__(self, name: str, handler: logging.StreamHandler[TextIO]) -> None:
        self.name = name  # what `add_logger_name` reads
        self._handler = handler
        self._stdlib = logging.getLogger(name)

    @property
    def disabled(self) -> bool:
        return self._stdlib.disabled

    def getEffectiveLevel(self) -> int:  # what `filter_by_level` calls
        return self._stdlib.getEffectiveLevel()

    def msg(self, message: str) -> None:
        handler = self._handler
        handler.acquire()
        try:
            handler.stream.write(message + "\n")
            handler.stream.flush()
        except Exception:  # as in `logging`: a record that cannot be written (stderr closed) does not fail its caller
            handler.handleError(logging.makeLogRecord({"msg": message}))
        finally:
            handler.release()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def configure_logging(level: str = "INFO", fmt: LogFormat = "auto") -> None:
    terminal = sys.stderr.isatty()
    use_json = chosen_format(fmt, terminal) == "json"
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.dict_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=terminal)  # no escape codes in a file
    handler: logging.StreamHandler[TextIO] = logging.StreamHandler(sys.stderr)
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, renderer],
        # A call below the level returns at once, before any processor runs and before its event dict is
        # made: at WARNING, the info records of a burst (one per backordered order) had cost 5% of the
        # worker's CPU, and with stdlib's bound logger and `filter_by_level` still 3.4 us a call (0.9 now).
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=lambda name="", *_: _Lines(name, handler),
        cache_logger_on_first_use=True,
    )
    # The libraries' records (librdkafka through confluent-kafka, psycopg-pool) go through `logging`, rendered by
    # the same processors.
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
