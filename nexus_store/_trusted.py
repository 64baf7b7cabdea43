"""Pydantic records built from values known to be valid, without validating them again.

Hot paths make records from values that are typed already: rows of our own tables,
checked arguments, wire values checked field by field. Validating them again costs as
much as the work around it (pydantic's ``model_construct`` twice that), so
:func:`trusted_builder` fills an instance the way ``model_construct`` does, from a
complete dict of field values.

The builder is checked once, when it is made, against validation of a sample: if
pydantic's internals ever differ from what it relies on, it validates instead (slower,
never wrong).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["trusted_builder"]

M = TypeVar("M", bound=BaseModel)

_new = object.__new__
_set = object.__setattr__


def _slot_setter(name: str) -> Callable[[Any, Any], None]:
    """The setter of BaseModel's slot ``name``: its descriptor's, cheaper than
    ``object.__setattr__`` by name (used instead if a pydantic release has no such slot;
    :func:`_agrees` checks the result either way)."""
    setter: Callable[[Any, Any], None] | None = getattr(
        BaseModel.__dict__.get(name), "__set__", None
    )
    if setter is not None:
        return setter
    return lambda record, value: _set(record, name, value)  # pragma: no cover - older pydantic


_set_fields_set = _slot_setter("__pydantic_fields_set__")
_set_extra = _slot_setter("__pydantic_extra__")
_set_private = _slot_setter("__pydantic_private__")


def trusted_builder(model: type[M], sample: Mapping[str, Any]) -> Callable[[dict[str, Any]], M]:
    """A function making ``model`` instances from dicts of every field's (valid) value.

    The dict passed becomes the instance's ``__dict__`` (do not reuse it). All instances
    share one fields-set (every field), which is what validation of a complete dict gives.

    Args:
        model: a model without private attributes or extra fields.
        sample: a value for every field, of the types validation produces (e.g. enum
            members), used to check the builder against validation.

    Raises:
        ValueError: ``sample`` does not name exactly the model's fields.
    """
    fields_set = set(model.model_fields)
    if set(sample) != fields_set:
        raise ValueError(f"the sample for {model.__name__} must name exactly its fields")

    def build(values: dict[str, Any]) -> M:
        record = _new(model)
        _set(record, "__dict__", values)
        _set_fields_set(record, fields_set)
        _set_extra(record, None)
        _set_private(record, None)
        return record

    def validate(values: dict[str, Any]) -> M:
        return model(**values)

    return build if _agrees(model, build, validate, sample) else validate


def _agrees(
    model: type[M],
    build: Callable[[dict[str, Any]], M],
    validate: Callable[[dict[str, Any]], M],
    sample: Mapping[str, Any],
) -> bool:
    """Whether a built instance behaves as a validated one, in every way we rely on."""
    try:
        trusted = build(dict(sample))
        validated = validate(dict(sample))
        name, value = next(iter(sample.items()))
        copied = trusted.model_copy(update={name: value})
        same = (
            trusted == validated
            and trusted.model_dump() == validated.model_dump()
            and trusted.model_fields_set == validated.model_fields_set
            and repr(trusted) == repr(validated)
            and copied == validated
            and copied.__dict__ is not trusted.__dict__
        )
        if same and model.model_config.get("frozen"):
            same = _hash_or_none(trusted) == _hash_or_none(validated)
    except Exception:  # any mismatch with pydantic's internals: validate instead
        return False
    return same


def _hash_or_none(record: BaseModel) -> int | None:
    """The hash of a frozen record, or ``None`` if a field value is unhashable (a dict)."""
    try:
        return hash(record)
    except TypeError:
        return None
