"""A COPY's rows made ahead, while the server is busy with the COPY before it (`unit_of_work._Rows`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from worker.adapters.postgres import unit_of_work
from worker.adapters.postgres.unit_of_work import _make_ahead, _Rows

ROWS = [(n, f"row {n}") for n in range(100)]


def answers(*busy: bool) -> Callable[[], bool]:
    """A server busy for as many looks as `busy` says, then done."""
    looks = iter(busy)
    return lambda: next(looks, False)


def made(rows: _Rows) -> list[object]:
    return list(rows)


def test_rows_are_made_while_the_server_is_busy_then_each_comes_once_in_its_order() -> None:
    made_rows: list[int] = []

    def source() -> Iterator[tuple[int, str]]:
        for row in ROWS:
            made_rows.append(row[0])
            yield row

    rows = _Rows(source())
    assert not rows.make_ahead(answers(True, True))  # three slices: looked after each, done after the third
    assert made_rows == list(range(3 * unit_of_work._AHEAD_SLICE))
    assert made(rows) == ROWS
    assert made(rows) == []  # a COPY's rows are taken once


def test_all_rows_made_ahead_are_told() -> None:
    rows = _Rows(ROWS)
    assert rows.make_ahead(lambda: True)
    assert made(rows) == ROWS


def test_no_more_than_ahead_rows_are_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unit_of_work, "AHEAD_ROWS", 40)
    source = iter(ROWS)
    rows = _Rows(source)
    assert not rows.make_ahead(lambda: True)
    assert next(source) == ROWS[2 * unit_of_work._AHEAD_SLICE]  # two slices made: the second passed the bound
    rows = _Rows(ROWS)
    assert not rows.make_ahead(lambda: True)
    assert made(rows) == ROWS


def test_the_copies_after_are_made_in_their_order_until_the_server_is_done() -> None:
    first, second, third = _Rows(ROWS[:10]), _Rows(ROWS[10:80]), _Rows(ROWS[80:])
    _make_ahead([first, second, third], answers(True))  # the first whole; the second's two slices, then done
    assert first._made == ROWS[:10]
    assert second._made == ROWS[10 : 10 + 2 * unit_of_work._AHEAD_SLICE]
    assert third._made == []
    assert [*made(first), *made(second), *made(third)] == ROWS
