"""Clock times whose UTC offset the JSON form cannot keep.

A stored item is its JSON form (``model_dump(mode="json")``), which writes a UTC offset in
whole minutes. A ``datetime`` or ``time`` whose offset has seconds (local mean time before
about 1920, e.g. ``Africa/Accra`` in 1915: -00:00:52) would read back as another instant;
the store refuses it instead (:func:`inexact_offset`), and only looks in the fields whose
annotation can hold one (:func:`clock_fields`, decided once per model).
"""

from __future__ import annotations

import datetime
import typing
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

__all__ = ["clock_fields", "inexact_offset"]


def clock_fields(model: type[BaseModel]) -> list[str]:
    """The fields of ``model`` whose values may hold a ``datetime`` or ``time``, at any depth."""
    return [
        name
        for name, field in model.model_fields.items()
        if _may_hold(field.annotation, frozenset({model}))
    ]


def _may_hold(annotation: Any, seen: frozenset[type]) -> bool:
    if annotation is Any or annotation in (datetime.datetime, datetime.time, object):
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in seen:
            return False
        inner = seen | {annotation}
        return any(_may_hold(f.annotation, inner) for f in annotation.model_fields.values())
    return any(_may_hold(arg, seen) for arg in typing.get_args(annotation))


def inexact_offset(values: Iterable[object]) -> datetime.datetime | datetime.time | None:
    """The first ``datetime`` or ``time`` in ``values`` (at any depth) whose UTC offset is not
    a whole number of minutes, or ``None``."""
    stack = list(values)
    seen = 0
    while stack and seen < 1_000_000:  # bounded: a value is never walked forever
        value = stack.pop()
        seen += 1
        if isinstance(value, datetime.datetime | datetime.time):
            offset = value.utcoffset()
            if offset is not None and (offset.seconds % 60 or offset.microseconds):
                return value
        elif isinstance(value, BaseModel):
            stack.extend(value.__dict__.values())
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple | set | frozenset):
            stack.extend(value)
    return None
