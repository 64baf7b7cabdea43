"""MemoryBackend: the server core in process, a real backend for tests and demos."""

from __future__ import annotations

from collections.abc import Sequence

from .._exceptions import LifecycleError
from ..server._core import ConflictPolicy, ServerCore, check_tenant
from ..server._storage_memory import MemoryStorage
from ._base import Changes, PushResult, RemoteBackend, RemoteOp

__all__ = ["MemoryBackend"]


class MemoryBackend(RemoteBackend):
    """A client of an in-process server: the same core (and rules) as the sync server.

    Two backends sharing one ``core`` are two clients of one server, e.g. two devices::

        phone = MemoryBackend()
        laptop = MemoryBackend(phone.core)
        shop = MemoryBackend(phone.core, tenant="shop")  # another tenant: sees nothing of these

    Any core works, whatever its storage (``MemoryBackend(await open_core("sqlite:///x.db"))``
    is a client of an in-process server on SQLite).

    Args:
        core: the server to talk to; a new one over :class:`MemoryStorage` by default
            (owned by this backend and closed with it).
        tenant: whose data this client reads and writes.
        conflict_policy: the policy of the new core (only when ``core`` is not given).
    """

    def __init__(
        self,
        core: ServerCore | None = None,
        *,
        tenant: str = "default",
        conflict_policy: ConflictPolicy | None = None,
    ) -> None:
        if core is not None and conflict_policy is not None:
            raise ValueError("conflict_policy configures a new core: pass it to that core instead")
        self.tenant = check_tenant(tenant)
        self._owns_core = core is None
        self._core = core or ServerCore(MemoryStorage(), conflict_policy=conflict_policy or "lww")
        self._closed = False

    @property
    def core(self) -> ServerCore:
        """The server this client talks to (share it to make another client)."""
        return self._core

    async def push(self, ops: Sequence[RemoteOp]) -> PushResult:
        """Apply ``ops`` on the in-process server; see :meth:`RemoteBackend.push`."""
        self._check_open()
        return await self._core.push(self.tenant, ops)

    async def pull(
        self, cursor: int = 0, limit: int = 500, *, collections: Sequence[str] | None = None
    ) -> Changes:
        """Changes after ``cursor``; see :meth:`RemoteBackend.pull`."""
        self._check_open()
        return await self._core.pull(self.tenant, cursor, limit, collections=collections)

    async def aclose(self) -> None:
        """Close this client (and the core, if this backend made it). Idempotent."""
        if not self._closed:
            self._closed = True
            if self._owns_core:
                await self._core.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise LifecycleError("the backend is closed")

    def __repr__(self) -> str:
        return f"MemoryBackend(tenant={self.tenant!r})"
