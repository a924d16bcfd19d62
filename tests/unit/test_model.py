"""A line's state: its quick copy with changes is `dataclasses.replace`, field for field."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.domain.model import OrderLineState

LINES = st.builds(OrderLineState)
FIELDS = [f.name for f in dataclasses.fields(OrderLineState)]


@given(LINES, LINES, st.sets(st.sampled_from(FIELDS)))
def test_a_copy_with_changes_is_what_replace_makes(
    line: OrderLineState, other: OrderLineState, names: set[str]
) -> None:
    changes = {name: getattr(other, name) for name in names}
    copy = line._with(**changes)
    assert copy == dataclasses.replace(line, **changes)
    assert all(getattr(copy, name) is getattr(dataclasses.replace(line, **changes), name) for name in FIELDS)


@given(LINES)
def test_a_copy_is_still_frozen_and_an_unknown_field_is_refused(line: OrderLineState) -> None:
    copy = line._with()
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.allocated = 1  # type: ignore[misc]
    with pytest.raises(KeyError):
        line._with(no_such_field=1)
