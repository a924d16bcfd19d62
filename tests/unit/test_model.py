"""A line's state: its quick copy with changes is `dataclasses.replace`, field for field."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from importlib.machinery import SourceFileLoader
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import compiled
from worker.domain.model import OrderLineState

LINES = st.builds(OrderLineState)
FIELDS = [f.name for f in dataclasses.fields(OrderLineState)]


@given(LINES, LINES, st.sets(st.sampled_from(FIELDS)))
def test_a_copy_with_changes_is_what_replace_makes(
    line: OrderLineState, other: OrderLineState, names: set[str]
) -> None:
    changes = {name: getattr(other, name) for name in names}
    copy = line._with(**changes)
    replaced = dataclasses.replace(line, **changes)
    assert copy == replaced
    # Field by field, of the same type too (`==` alone takes 1 for True). Not `is`: compiled (README, "Compiled
    # rules"), an int field is held unboxed and boxed anew as it is read.
    assert all(
        (type(getattr(copy, name)), getattr(copy, name)) == (type(getattr(replaced, name)), getattr(replaced, name))
        for name in FIELDS
    )


@given(LINES)
def test_a_copy_is_still_frozen_and_an_unknown_field_is_refused(line: OrderLineState) -> None:
    copy = line._with()
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.allocated = 1  # type: ignore[misc]
    with pytest.raises(KeyError):
        line._with(no_such_field=1)


def test_interpreted_a_line_is_made_by_its_slots_and_is_what_replace_makes() -> None:
    """`make test` runs the rules compiled (README, "Compiled rules"), where `_with` makes a line by its `__init__`:
    the way the interpreted module takes, setting the slots, is checked here on the module run from its source."""
    path = compiled.PACKAGE / "domain" / "model.py"
    spec = importlib.util.spec_from_loader("interpreted_model", SourceFileLoader("interpreted_model", str(path)))
    assert spec is not None and spec.loader is not None
    interpreted = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = interpreted  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(interpreted)
    finally:
        del sys.modules[spec.name]
    assert not interpreted.COMPILED and interpreted._line_of is interpreted._line_by_slots

    @given(
        st.builds(interpreted.OrderLineState), st.builds(interpreted.OrderLineState), st.sets(st.sampled_from(FIELDS))
    )
    def check(line: Any, other: Any, names: set[str]) -> None:
        changes = {name: getattr(other, name) for name in names}
        copy = line._with(**changes)
        assert type(copy) is interpreted.OrderLineState
        assert copy == dataclasses.replace(line, **changes)
        with pytest.raises(dataclasses.FrozenInstanceError):
            copy.allocated = 1

    check()
