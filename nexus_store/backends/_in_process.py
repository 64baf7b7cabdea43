"""A backend that runs the server core in this process: one client of it, for one tenant."""

from __future__ import annotations

from collections.abc import Sequence

from .._exceptions import LifecycleError
from .._remote import Changes, PushResult, RemoteBackend, RemoteOp
from ..server._core import ServerCore, check_tenant

__all__ = ["InProcessBackend"]


class InProcessBackend(RemoteBackend):
    """Pushes and pulls go straight to a :class:`ServerCore`, as ``tenant``.

    Args:
        core: the server core to talk to.
        tenant: whose data this client reads and writes.
        owns_core: close the core with this backend.
        loop_bound: the core's storage holds connections tied to the event loop that
            opened them (PostgreSQL): :meth:`close` closes them on that loop.
    """

    def __init__(
        self, core: ServerCore, *, tenant: str, owns_core: bool, loop_bound: bool = False
    ) -> None:
        self.tenant = check_tenant(tenant)
        self._core = core
        self._owns_core = owns_core
        self._loop_bound = loop_bound
        self._closed = False

    writer_aware = True

    async def push(self, ops: Sequence[RemoteOp], *, writer: int | None = None) -> PushResult:
        """Apply ``ops`` on the core, in one storage transaction; see :meth:`RemoteBackend.push`."""
        self._check_open()
        if self._loop_bound:
            self._bind_loop()
        return await self._core.push(self.tenant, ops, writer=writer)

    async def pull(
        self,
        cursor: int = 0,
        limit: int = 500,
        *,
        collections: Sequence[str] | None = None,
        skip_writer: int | None = None,
    ) -> Changes:
        """Changes after ``cursor``; see :meth:`RemoteBackend.pull`."""
        self._check_open()
        if self._loop_bound:
            self._bind_loop()
        return await self._core.pull(
            self.tenant, cursor, limit, collections=collections, skip_writer=skip_writer
        )

    async def aclose(self) -> None:
        """Close this client (and the core, if it owns it). Idempotent."""
        if not self._closed:
            self._closed = True
            self._unbind()
            if self._owns_core:
                await self._core.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise LifecycleError("the backend is closed")
