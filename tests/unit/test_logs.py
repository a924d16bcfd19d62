"""The log format: a person at a terminal reads the console renderer, a program reads JSON lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from worker.entrypoints.cli import main
from worker.entrypoints.logs import LogFormat, chosen_format, configure_logging
from worker.settings import Settings


class Stderr(io.StringIO):
    """A stand-in for sys.stderr that says whether it is a terminal."""

    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


@pytest.fixture(autouse=True)
def logging_restored() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back for the tests that follow."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def logged(monkeypatch: pytest.MonkeyPatch, fmt: LogFormat, *, terminal: bool) -> str:
    """What one `allocated` record looks like on stderr once logging is configured with `fmt`."""
    stderr = Stderr(terminal)
    monkeypatch.setattr("sys.stderr", stderr)
    configure_logging("INFO", fmt)
    structlog.get_logger("worker.demo").info("allocated", sku="WIDGET-PRO-BLUE", units=50)
    logging.getLogger("psycopg.pool").warning("pool is slow")  # the standard library's records too
    return stderr.getvalue()


@pytest.mark.parametrize(
    ("fmt", "terminal", "chosen"),
    [
        ("auto", True, "console"),
        ("auto", False, "json"),
        ("json", True, "json"),
        ("json", False, "json"),
        ("console", True, "console"),
        ("console", False, "console"),
    ],
)
def test_the_format_chosen(fmt: LogFormat, terminal: bool, chosen: str) -> None:
    assert chosen_format(fmt, terminal) == chosen


def test_auto_on_a_terminal_is_the_console_renderer(monkeypatch: pytest.MonkeyPatch) -> None:
    text = logged(monkeypatch, "auto", terminal=True)
    first, second = text.splitlines()
    assert not first.lstrip().startswith("{")
    assert "allocated" in first and "WIDGET-PRO-BLUE" in first and "units" in first
    assert "\x1b[" in first  # coloured for the terminal
    assert "pool is slow" in second


@pytest.mark.parametrize("fmt", ["auto", "json"])
def test_json_lines_when_no_terminal_or_asked_for(monkeypatch: pytest.MonkeyPatch, fmt: LogFormat) -> None:
    first, second = (json.loads(line) for line in logged(monkeypatch, fmt, terminal=fmt == "json").splitlines())
    assert first["event"] == "allocated" and first["units"] == 50 and first["level"] == "info"
    assert first["sku"] == "WIDGET-PRO-BLUE" and first["logger"] == "worker.demo" and "timestamp" in first
    assert (second["event"], second["logger"], second["level"]) == ("pool is slow", "psycopg.pool", "warning")


def test_console_asked_for_without_a_terminal_has_no_colour_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    text = logged(monkeypatch, "console", terminal=False)
    assert "allocated" in text and "units" in text and "50" in text
    assert not text.lstrip().startswith("{") and "\x1b[" not in text


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKORDER_LOG_FORMAT", raising=False)
    assert Settings().log_format == "auto"
    monkeypatch.setenv("BACKORDER_LOG_FORMAT", "console")
    assert Settings().log_format == "console"


def test_an_unknown_format_is_a_clear_settings_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKORDER_LOG_FORMAT", "pretty")
    assert main(["settings"]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "log_format" in err
    assert "'auto', 'json' or 'console'" in err and "pretty" in err


def test_a_record_below_the_level_is_dropped_before_any_work_is_spent_on_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", Stderr(False))
    configure_logging("WARNING", "json")
    seen: list[str] = []

    def spy(logger: object, method: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        seen.append(str(event["event"]))
        return event

    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[spy, *processors])
    log = structlog.get_logger("worker.demo")
    log.info("backordered", order_id="O-1")
    log.warning("consumer_error", code=1)
    assert seen == ["consumer_error"]


def test_a_record_that_cannot_be_written_does_not_fail_the_code_that_logs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """As with the standard library's records: logging reports it on stderr and the caller goes on."""
    stderr = Stderr(False)
    monkeypatch.setattr("sys.stderr", stderr)
    configure_logging("INFO", "json")
    stderr.close()
    monkeypatch.setattr(logging, "raiseExceptions", False)  # what would report it writes to the closed stream too
    structlog.get_logger("worker.demo").info("allocated", sku="WIDGET-PRO-BLUE", units=50)
    logging.getLogger("psycopg.pool").warning("pool is slow")


def test_the_level_of_a_records_logging_logger_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The promise server quiets the rules' records (its decisions are what-ifs) through `logging`'s logger
    `worker.service`, as an operator may quiet any of the worker's loggers."""
    stderr = Stderr(False)
    monkeypatch.setattr("sys.stderr", stderr)
    configure_logging("INFO", "json")
    quiet = logging.getLogger("worker.service")
    before = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        structlog.get_logger("worker.service.handlers").info("allocated", sku="WIDGET-PRO-BLUE", units=50)
        structlog.get_logger("worker.service.handlers").warning("sweep_failed")
        structlog.get_logger("worker.adapters.relay").info("outbox_published", rows=2)
    finally:
        quiet.setLevel(before)
    events = [json.loads(line)["event"] for line in stderr.getvalue().splitlines()]
    assert events == ["sweep_failed", "outbox_published"]
