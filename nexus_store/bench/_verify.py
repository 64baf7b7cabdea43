"""Nothing lost, nothing duplicated: the run's items counted on the server.

Every item of a run has an id naming its client and its number (:func:`~._recorder.item_id`),
and each client process reports, per client, a bitmap of the items the server
acknowledged. :class:`Tally` checks the ids the server holds against those bitmaps:

- **lost**: acknowledged to a client, but not on the server (must be 0);
- **duplicated**: an item the server returned more than once, or (where the server's
  database can be read) more ops applied than items written (must be 0);
- **applied, not acknowledged**: on the server, but the client never read the answer
  (a timeout after the server applied it: the op is sent again and answered by op id).

:func:`count_by_pull` reads the ids through the sync API (any server);
``nexus-store bench server`` reads its own server's database instead (:mod:`._servers`).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from ..backends import HttpBackend
from ._recorder import parse_item_id

__all__ = ["ItemCounter", "Tally", "Verification", "count_by_pull", "decode_bitmaps"]


@dataclass(frozen=True)
class Verification:
    """What the server holds of a run, against what its clients were told."""

    method: str
    """How it was counted: ``"pull"`` (the sync API) or ``"database"``."""
    server_items: int
    acked: int
    lost: int
    duplicated: int
    applied_unacked: int
    complete: bool = True
    """``False``: the count stopped early (time limit); the figures are partial."""

    def to_json(self) -> dict[str, Any]:
        """As a JSON object."""
        return dict(self.__dict__)


ItemCounter = Callable[[str, Mapping[int, bytes]], Verification]
"""Counts a run's items on the server: ``(collection, acked bitmaps) -> Verification``."""


def decode_bitmaps(parts: Iterable[Mapping[str, str]]) -> dict[int, bytes]:
    """The per-client bitmaps of every client process, decoded."""
    out: dict[int, bytes] = {}
    for part in parts:
        for client, encoded in part.items():
            out[int(client)] = base64.b64decode(encoded)
    return out


class Tally:
    """Item ids seen on the server, checked against the acknowledged bitmaps."""

    def __init__(self, acked: Mapping[int, bytes]) -> None:
        self._acked = acked
        self._seen: dict[int, bytearray] = {}
        self.items = 0
        self.found_acked = 0
        self.duplicated = 0
        self.applied_unacked = 0
        self.foreign = 0

    def see(self, value: object) -> None:
        """One item id the server holds."""
        parsed = parse_item_id(value)
        if parsed is None:
            self.foreign += 1
            return
        client, seq = parsed
        byte, bit = divmod(seq, 8)
        seen = self._seen.setdefault(client, bytearray())
        if len(seen) <= byte:
            seen.extend(b"\0" * (byte + 1 - len(seen) + 1024))
        if seen[byte] >> bit & 1:
            self.duplicated += 1
            return
        seen[byte] |= 1 << bit
        self.items += 1
        acked = self._acked.get(client, b"")
        if byte < len(acked) and acked[byte] >> bit & 1:
            self.found_acked += 1
        else:
            self.applied_unacked += 1

    @property
    def acked(self) -> int:
        """Ops the clients were told were applied."""
        return sum(bin(b).count("1") for bits in self._acked.values() for b in bits)

    def result(self, method: str, *, complete: bool = True, extra_ops: int = 0) -> Verification:
        """The verdict (``extra_ops``: ops the server applied beyond one per item)."""
        acked = self.acked
        return Verification(
            method=method,
            server_items=self.items,
            acked=acked,
            lost=acked - self.found_acked,
            duplicated=self.duplicated + max(0, extra_ops),
            applied_unacked=self.applied_unacked,
            complete=complete,
        )


def count_by_pull(
    url: str,
    token: str | None,
    *,
    page: int,
    time_limit: float = 600.0,
    allow_insecure_http: bool = False,
) -> ItemCounter:
    """An :data:`ItemCounter` that pulls the run's collection from ``url`` page by page."""

    def count(collection: str, acked: Mapping[int, bytes]) -> Verification:
        tally = Tally(acked)

        async def pull_all() -> bool:
            deadline = time.monotonic() + time_limit
            async with HttpBackend(
                url, token=token, timeout=60, allow_insecure_http=allow_insecure_http
            ) as backend:
                cursor = 0
                while time.monotonic() < deadline:
                    changes = await backend.pull(cursor, page, collections=[collection])
                    for change in changes.changes:
                        tally.see(change.item_id)
                    cursor = changes.cursor
                    if not changes.has_more:
                        return True
            return False

        complete = anyio.run(pull_all)
        return tally.result("pull", complete=complete)

    return count
