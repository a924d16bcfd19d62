"""A COPY's rows made ahead, while the server is busy with the COPY before it (`unit_of_work._Rows`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.adapters.postgres import unit_of_work
from worker.adapters.postgres.unit_of_work import _make_ahead, _Rows

ROWS = [(n, f"row {n}") for n in range(100)]
SLICE = unit_of_work._AHEAD_SLICE


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
    assert made_rows == list(range(3 * SLICE))
    assert made(rows) == ROWS
    assert made(rows) == []  # a COPY's rows are taken once


def test_all_rows_made_ahead_are_told() -> None:
    rows = _Rows(iter(ROWS))
    assert rows.make_ahead(lambda: True)
    assert rows.make_ahead(lambda: True)  # and stay made
    assert made(rows) == ROWS


def test_rows_given_as_a_list_are_made_already_without_a_look_at_the_server() -> None:
    def never() -> bool:
        raise AssertionError("the server was asked")

    rows = _Rows(ROWS)
    assert rows.make_ahead(never)
    assert made(rows) == ROWS


def test_no_more_than_ahead_rows_are_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unit_of_work, "AHEAD_ROWS", 40)
    rows = _Rows(iter(ROWS))
    assert not rows.make_ahead(lambda: True)
    assert rows._made == ROWS[:40]
    assert not rows.make_ahead(lambda: True)  # full: nothing more is made
    assert rows._made == ROWS[:40]
    assert made(rows) == ROWS


def test_the_copies_after_are_made_in_their_order_until_the_server_is_done() -> None:
    first, second, third = _Rows(iter(ROWS[:10])), _Rows(iter(ROWS[10:80])), _Rows(iter(ROWS[80:]))
    _make_ahead([first, second, third], answers(True))  # the first whole; the second's two slices, then done
    assert first._made == ROWS[:10]
    assert second._made == ROWS[10 : 10 + 2 * SLICE]
    assert third._made == []
    assert [*made(first), *made(second), *made(third)] == ROWS


def test_a_copy_of_exactly_ahead_rows_is_all_made_and_the_next_is_made_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unit_of_work, "AHEAD_ROWS", 40)
    first, second = _Rows(iter(ROWS[:40])), _Rows(iter(ROWS[40:]))
    _make_ahead([first, second], lambda: True)
    assert first._made == ROWS[:40] and second._made == ROWS[40:80]
    assert [*made(first), *made(second)] == ROWS


def test_a_full_copy_keeps_the_copies_after_it_for_their_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unit_of_work, "AHEAD_ROWS", 40)
    first, second = _Rows(iter(ROWS[:60])), _Rows(iter(ROWS[60:]))
    _make_ahead([first, second], lambda: True)
    assert len(first._made) == 40 and second._made == []
    assert [*made(first), *made(second)] == ROWS


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=150), min_size=1, max_size=4),
    listed=st.lists(st.booleans(), min_size=4, max_size=4),
    looks=st.lists(st.booleans(), max_size=40),
    bound=st.integers(min_value=0, max_value=120),
    between=st.integers(min_value=1, max_value=40),
    ends=st.integers(min_value=0, max_value=4),
)
def test_whatever_is_made_ahead_each_copy_takes_its_rows_once_in_order(
    sizes: list[int], listed: list[bool], looks: list[bool], bound: int, between: int, ends: int
) -> None:
    """Any number of COPYs, their rows given as lists or made as they come, any answers of the server, any bound
    and slice, made ahead at the ends of any number of the COPYs before: each COPY takes its own rows, each once,
    in their order, and no more than the bound of a COPY's rows made from a source is ever held ahead."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(unit_of_work, "AHEAD_ROWS", bound)
        patch.setattr(unit_of_work, "_AHEAD_SLICE", between)
        sources = [[(copy, n) for n in range(size)] for copy, size in enumerate(sizes)]
        copies = [_Rows(rows if listed[i] else iter(rows)) for i, rows in enumerate(sources)]
        answers = iter(looks)
        for end in range(min(ends, len(copies))):
            _make_ahead(copies[end + 1 :], lambda: next(answers, False))
            for i, rows in enumerate(copies):
                assert listed[i] or len(rows._made) <= bound
        assert [made(rows) for rows in copies] == sources
