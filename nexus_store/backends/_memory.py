"""MemoryBackend: the server core in process, a real backend for tests and demos."""

from __future__ import annotations

from ..server._core import ServerCore
from ..server._rules import ConflictPolicy
from ..server.storage._memory import MemoryStorage
from ._in_process import InProcessBackend

__all__ = ["MemoryBackend"]


class MemoryBackend(InProcessBackend):
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
        super().__init__(
            core or ServerCore(MemoryStorage(), conflict_policy=conflict_policy or "lww"),
            tenant=tenant,
            owns_core=core is None,
        )

    @property
    def core(self) -> ServerCore:
        """The server this client talks to (share it to make another client)."""
        return self._core

    def __repr__(self) -> str:
        return f"MemoryBackend(tenant={self.tenant!r})"
