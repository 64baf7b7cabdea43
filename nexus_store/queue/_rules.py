"""The queue's rules as pure decisions: op ids, argument checks, coalescing, handover.

Nothing here reads or writes the database: the parts that do (enqueue, settle) ask these
functions what to do, so the rules are tested with plain values.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping, Sequence

from ._schema import _OUT

__all__ = ["may_coalesce"]

_MAX_COLLECTION = 63
_MAX_HLC = 64
"""The longest stamp the wire carries (``RemoteOp.hlc``)."""

_UUID7_MARKS = (0x7 << 76) | (0b10 << 62)
# A generator of our own (seeded from the OS), so an app that seeds the random module's
# shared one cannot make two devices issue the same ids; re-seeded in a forked child.
_rng = random.Random()  # noqa: S311 - ids must be unique, not secret
os.register_at_fork(after_in_child=_rng.seed)
_random_bits = _rng.getrandbits


def _new_op_id(now: float) -> str:
    """A time-ordered uuid (RFC 9562 version 7 layout: 48 bits of milliseconds, 74 random).

    Ids made close in time sort close together, so the unique index on ``op_id`` grows at
    its end instead of touching a random page per insert (a random uuid4 made inserts into
    a large queue several times slower once the index outgrew SQLite's page cache).
    """
    # 48 bits of milliseconds, version 7, 12 random bits, variant 0b10, 62 random bits, from
    # _rng: unique enough for ids, at a tenth of the cost of os.urandom.
    millis = min(max(int(now * 1000), 0), _MAX_MILLIS)
    bits = (millis << 80) | _UUID7_MARKS | (_random_bits(12) << 64) | _random_bits(62)
    h = f"{bits:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_MAX_MILLIS = (1 << 48) - 1


def may_coalesce(coalesce: bool, state: str, attempts: int, leases: int) -> bool:
    """Whether a new write merges into its item's newest live op (rather than queue behind).

    Only if coalescing is asked for and that op was never handed out: pending, never
    failed, never leased. An op that was ever leased may have reached the server under its
    op id (even a released one: the cancelled request may have arrived), so nothing
    merges into it.
    """
    return coalesce and state == "pending" and attempts == 0 == leases


def _op_ids(op_ids: str | Iterable[str]) -> list[str]:
    """The ids as a list, each once (a repeated id is one op: acked, nacked... once)."""
    if isinstance(op_ids, str):
        return [op_ids]
    ids = list(dict.fromkeys(op_ids))
    for op_id in ids:
        if not isinstance(op_id, str):
            raise ValueError(f"op ids are strings, not {type(op_id).__name__}")  # noqa: TRY004
    return ids


def _check_token(token: object) -> None:
    if token is not None and (isinstance(token, bool) or not isinstance(token, int)):
        raise ValueError(f"a lease token is an int (batch.token), not {type(token).__name__}")


def _check_item_id(item_id: object) -> str | int:
    if isinstance(item_id, bool) or not isinstance(item_id, str | int):
        raise ValueError(f"item_id must be a str or an int, not {type(item_id).__name__}")  # noqa: TRY004
    return item_id


def _handover(
    removed: Sequence[tuple[int, str, int]], versions: Mapping[str, int], first: int
) -> tuple[bool, int | None]:
    """Replay one item's removals in the order given (``(seq, op_id, chain)`` each).

    The item's head is its oldest live op; removing it makes the next live op the head,
    based on the version the removed head was acked with, if given. ``first`` is the
    item's oldest waiting op that stays. Returns whether ``first`` becomes the head, and
    the version it is then based on (``None``: it keeps its own).
    """
    live = sorted({seq for seq, _, chain in removed if chain != _OUT} | {first})
    version: int | None = None
    for seq, op_id, chain in removed:
        if chain == _OUT:
            continue
        was_head = seq == live[0]
        live.remove(seq)
        if was_head:
            version = versions.get(op_id)
            if live[0] == first:
                return True, version
    return False, None
