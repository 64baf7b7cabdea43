"""Remote backends: the seam (:class:`RemoteBackend`) and its implementations.

Implementations that need optional packages (httpx is always there; psycopg is not)
are imported on first use, so ``import nexus_store.backends`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .._remote import Change, Changes, OpResult, OpStatus, PushResult, RemoteBackend, RemoteOp

if TYPE_CHECKING:  # pragma: no cover
    from ._http import HttpBackend
    from ._memory import MemoryBackend
    from ._postgres import PostgresBackend
    from ._tokens import RefreshingTokenProvider

_LAZY: dict[str, str] = {
    # name -> private module that defines it; filled in as backends land
    "HttpBackend": "._http",
    "MemoryBackend": "._memory",
    "PostgresBackend": "._postgres",
    "RefreshingTokenProvider": "._tokens",
}

__all__ = [
    "Change",
    "Changes",
    "HttpBackend",
    "MemoryBackend",
    "OpResult",
    "OpStatus",
    "PostgresBackend",
    "PushResult",
    "RefreshingTokenProvider",
    "RemoteBackend",
    "RemoteOp",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
