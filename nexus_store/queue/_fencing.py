"""Lease fencing tokens: who may settle a leased op.

Every call to :meth:`~nexus_store.PrioritySyncQueue.lease` hands out its ops under a new
token, returned with the batch (:class:`LeaseBatch`). A lease can end without its holder
knowing (it expired while the holder was slow, and another run leased the op again), so
``ack``, ``nack`` and ``release`` take the token: an op is settled only if it is still held
under that token (its lease not ended by a settle, and not handed out again since). A
settle with a stale token changes nothing; the ops it was refused for are reported in the
call's result (:class:`Settled`), so a late holder can never end the current holder's
lease, and two runs never hold an item's ops at once.

An op whose lease expired but that nobody leased again is still held by its token: its
holder's late answer is the only one there is.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from ._records import QueuedOp

__all__ = ["LeaseBatch", "Settled", "new_token"]

# A generator of our own, seeded from the OS and re-seeded in a forked child, so two
# processes on one file never draw the same sequence of tokens.
_rng = random.Random()  # noqa: S311 - tokens must be unique, not secret
os.register_at_fork(after_in_child=_rng.seed)


def new_token() -> int:
    """A fresh lease token: a random positive 62-bit integer (fits SQLite's INTEGER)."""
    return _rng.getrandbits(62) + 1


class LeaseBatch(list["QueuedOp"]):
    """The ops of one lease (a list, in queue order), with the lease's fencing ``token``."""

    __slots__ = ("token",)

    def __init__(self, ops: Iterable[QueuedOp] = (), token: int = 0) -> None:
        super().__init__(ops)
        self.token = token
        """Pass it to ``ack``, ``nack`` and ``release`` to settle these ops."""

    def __repr__(self) -> str:
        return f"LeaseBatch({list.__repr__(self)}, token={self.token!r})"


class Settled(int):
    """How many ops a settle (``ack``, ``nack``, ``release``) changed: an ``int``, with
    the ops it refused because the caller's lease token was stale."""

    stale: tuple[str, ...]
    """Op ids not settled: not held under the given token any more (leased again by
    another run, settled already, or gone). Empty when no token was given."""

    def __new__(cls, count: int, stale: Iterable[str] = ()) -> Self:
        value = super().__new__(cls, count)
        value.stale = tuple(stale)
        return value

    def __repr__(self) -> str:
        return f"Settled({int(self)!r}, stale={self.stale!r})"

    def __str__(self) -> str:
        return int.__repr__(self)
