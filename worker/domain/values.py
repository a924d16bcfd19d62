"""Frozen value classes with an `__init__` of their own, for the rules compiled with mypyc (README, "Compiled rules").

mypyc leaves the methods `dataclasses` writes to the interpreter: a frozen class's `__init__` sets each field with
`object.__setattr__` (3.3 us for `OrderLineState`'s 26 fields), where the same assignments written in the class
compile to a native `__init__` (0.04 us called from compiled code, 0.4 from the interpreter). Interpreted, such an
`__init__` is refused its own assignments (the class is frozen): `interpreted_inits` puts the one `dataclasses`
writes in its place.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any


def compiled(module_file: str) -> bool:
    """Whether the module of this `__file__` is an extension module (built by mypyc)."""
    return module_file.endswith(tuple(EXTENSION_SUFFIXES))


def interpreted_inits(module_file: str, *classes: type) -> None:
    """In the module of `module_file` run from its source, give each of `classes` (frozen dataclasses with an
    `__init__` of their own) the `__init__` `dataclasses` writes for it; compiled, leave them as they are."""
    if compiled(module_file):
        return
    for cls in classes:
        setattr(cls, "__init__", frozen_init(cls))  # noqa: B010 (mypy refuses assigning to a method)


def frozen_init(cls: type) -> Callable[..., None]:
    """The `__init__` `dataclasses` writes for the frozen dataclass `cls`: the same parameters, in the same order,
    with the same defaults and the same types (resolved: the classes the annotations name are in `cls`'s module)."""
    hints = typing.get_type_hints(cls)
    spec: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            spec.append((f.name, hints[f.name], dataclasses.field(default=f.default)))
        elif f.default_factory is not dataclasses.MISSING:
            spec.append((f.name, hints[f.name], dataclasses.field(default_factory=f.default_factory)))
        else:
            spec.append((f.name, hints[f.name], dataclasses.field()))
    init: Callable[..., None] = vars(dataclasses.make_dataclass(cls.__name__, spec, frozen=True))["__init__"]
    return init
