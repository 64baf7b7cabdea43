"""Resolvers that `nexus-store serve --conflict-policy module:function` imports in tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nexus_store.backends import Change, RemoteOp

NOT_A_FUNCTION = 42


def merge(op: RemoteOp, server: Change) -> Mapping[str, Any] | None:
    """The server's fields, overlaid with the stale write's, marked as merged."""
    return {**(server.data or {}), **(op.data or {}), "merged": True}
