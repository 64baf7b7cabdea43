"""Whether a model can refer to blobs: a field typed with :class:`~._refs.Attachment`,
at any depth (``Attachment | None``, ``list[Attachment]``, a nested model holding one)."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel

from ._refs import Attachment

__all__ = ["model_refers_to_blobs"]

_MAX_DEPTH = 16


def model_refers_to_blobs(model: type[BaseModel]) -> bool:
    """Whether ``model`` has a field that can hold an :class:`Attachment`."""
    return _model(model, set(), 0)


def _model(model: type[BaseModel], seen: set[int], depth: int) -> bool:
    if id(model) in seen or depth > _MAX_DEPTH:
        return False
    seen.add(id(model))
    return any(
        _annotation(field.annotation, seen, depth + 1) for field in model.model_fields.values()
    )


def _annotation(annotation: Any, seen: set[int], depth: int) -> bool:
    if annotation is None or depth > _MAX_DEPTH:
        return False
    if isinstance(annotation, type):
        if issubclass(annotation, Attachment):
            return True
        if issubclass(annotation, BaseModel):
            return _model(annotation, seen, depth)
    return any(_annotation(arg, seen, depth + 1) for arg in typing.get_args(annotation))
