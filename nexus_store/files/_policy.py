"""When and how files move: constraints per op and per priority, the file policy, decisions.

The decisions are pure functions of plain values (an op's constraints, the policy, the
device state, a failure count): :func:`unmet` says why a transfer may not start now,
:func:`plan_transfer_failure` what a failure does to it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .._backoff import RetryBackoff
from .._exceptions import ErrorKind
from .._priority import SyncPriority
from ._refs import Attachment

__all__ = [
    "DeviceLike",
    "FilePolicy",
    "Prefetch",
    "TransferConstraints",
    "effective_constraints",
    "plan_transfer_failure",
    "unmet",
]


class DeviceLike(Protocol):
    """What a transfer's constraints read of the device (a
    :class:`~nexus_store.sync.device.DeviceState` is one)."""

    @property
    def metered(self) -> bool: ...
    @property
    def temporarily_unmetered(self) -> bool: ...
    @property
    def charging(self) -> bool: ...
    @property
    def battery_low(self) -> bool: ...


Prefetch = Literal["all", "none"] | Callable[[Attachment], bool]
"""Which attachments of pulled records are downloaded at once: ``"all"``, ``"none"`` (on
:meth:`~nexus_store.NexusStore.open_attachment` only), or a function of the reference."""


@dataclass(frozen=True)
class TransferConstraints:
    """What a transfer needs of the device before it starts.

    Attributes:
        unmetered: an unmetered network (Wi-Fi, ethernet; a temporarily unmetered
            connection counts).
        charging: the device on mains power.
        battery_not_low: a battery that is not low (or no battery).
    """

    unmetered: bool = False
    charging: bool = False
    battery_not_low: bool = False

    def __or__(self, other: TransferConstraints) -> TransferConstraints:
        return TransferConstraints(
            self.unmetered or other.unmetered,
            self.charging or other.charging,
            self.battery_not_low or other.battery_not_low,
        )

    def to_json(self) -> dict[str, bool]:
        """The constraints as a JSON object (only those that are set)."""
        return {k: v for k, v in self.__dict__.items() if v}

    @classmethod
    def from_json(cls, value: Any) -> TransferConstraints:
        """Constraints from :meth:`to_json` (unknown keys are ignored)."""
        if not isinstance(value, dict):
            return cls()
        return cls(
            unmetered=value.get("unmetered") is True,
            charging=value.get("charging") is True,
            battery_not_low=value.get("battery_not_low") is True,
        )


_NONE = TransferConstraints()


@dataclass(frozen=True)
class FilePolicy:
    """How a store's files move (recorded in the file, so a worker process follows it too).

    Attributes:
        per_priority: constraints for every transfer of a priority (e.g. ``LOW`` only on
            an unmetered network).
        large_file_bytes: files of at least this size are *large* (``None``: none is).
        large_file: constraints for large files (by default an unmetered network).
        max_parallel: transfers running at once in a sync run (a stuck one never holds
            up the others beyond its own slot).
        chunk_size: bytes per tus PATCH (capped by what the server accepts); a resume
            sends again at most the chunk that was cut.
        backoff: the retry schedule of failed transfers, e.g.
            ``RetryBackoff(base=30, factor=2, max_delay=120, jitter=False)`` for 30, 60,
            120 s. ``None``: the queue's own backoff.
        max_attempts: failed attempts after which a transfer is dead-lettered (``None``:
            the queue's ``max_attempts``).
        cache_limit_bytes: the most bytes of local copies kept of blobs the server has;
            the least recently used are evicted beyond it (``None``: no limit). Blobs not
            yet on the server are never evicted.
        link: take files in by hard link when the file system allows (no copy), instead
            of copying them.
    """

    per_priority: Mapping[SyncPriority, TransferConstraints] = field(default_factory=dict)
    large_file_bytes: int | None = 64 * 1024 * 1024
    large_file: TransferConstraints = TransferConstraints(unmetered=True)
    max_parallel: int = 3
    chunk_size: int = 16 * 1024 * 1024
    backoff: RetryBackoff | None = None
    max_attempts: int | None = None
    cache_limit_bytes: int | None = None
    link: bool = True

    def __post_init__(self) -> None:
        if self.max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        if self.chunk_size < 1024:
            raise ValueError("chunk_size must be at least 1 KiB")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.cache_limit_bytes is not None and self.cache_limit_bytes < 0:
            raise ValueError("cache_limit_bytes must not be negative")

    def to_json(self) -> str:
        """The policy as JSON (what ``nx_meta`` keeps)."""
        backoff = self.backoff
        return json.dumps(
            {
                "per_priority": {int(p): c.to_json() for p, c in self.per_priority.items()},
                "large_file_bytes": self.large_file_bytes,
                "large_file": self.large_file.to_json(),
                "max_parallel": self.max_parallel,
                "chunk_size": self.chunk_size,
                "backoff": None
                if backoff is None
                else [backoff.base, backoff.factor, backoff.max_delay, backoff.jitter],
                "max_attempts": self.max_attempts,
                "cache_limit_bytes": self.cache_limit_bytes,
                "link": self.link,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | None) -> FilePolicy:
        """A policy from :meth:`to_json` (the default one for ``None`` or damaged text)."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            backoff = data.get("backoff")
            return cls(
                per_priority={
                    SyncPriority(int(p)): TransferConstraints.from_json(c)
                    for p, c in (data.get("per_priority") or {}).items()
                },
                large_file_bytes=data.get("large_file_bytes"),
                large_file=TransferConstraints.from_json(data.get("large_file")),
                max_parallel=int(data.get("max_parallel", 3)),
                chunk_size=int(data.get("chunk_size", 16 * 1024 * 1024)),
                backoff=None
                if backoff is None
                else RetryBackoff(
                    float(backoff[0]), float(backoff[1]), float(backoff[2]), jitter=bool(backoff[3])
                ),
                max_attempts=data.get("max_attempts"),
                cache_limit_bytes=data.get("cache_limit_bytes"),
                link=bool(data.get("link", True)),
            )
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return cls()


def effective_constraints(
    own: TransferConstraints, priority: SyncPriority, size: int, policy: FilePolicy
) -> TransferConstraints:
    """The op's own constraints, with its priority's and (for a large file) the large
    files' added."""
    result = own | policy.per_priority.get(priority, _NONE)
    if policy.large_file_bytes is not None and size >= policy.large_file_bytes:
        result = result | policy.large_file
    return result


def unmet(constraints: TransferConstraints, device: DeviceLike | None) -> str | None:
    """Why a transfer with these constraints may not start on this device now (``None``:
    it may). No device state known: every constraint counts as met."""
    if device is None:
        return None
    if constraints.unmetered and device.metered and not device.temporarily_unmetered:
        return "waiting for an unmetered network"
    if constraints.charging and not device.charging:
        return "waiting for the device to charge"
    if constraints.battery_not_low and device.battery_low:
        return "waiting for the battery to be not low"
    return None


@dataclass(frozen=True)
class TransferFailure:
    """What to tell the queue about a failed transfer."""

    kind: ErrorKind
    reason: str
    retry_after: float | None


def plan_transfer_failure(
    *,
    kind: ErrorKind,
    reason: str,
    attempts: int,
    retry_after: float | None,
    policy: FilePolicy,
) -> TransferFailure:
    """A transfer failed after ``attempts`` earlier failures: how to nack it.

    The policy's backoff sets the wait (the queue may wait longer only if its own backoff
    says so); its ``max_attempts`` dead-letters the op when reached.
    """
    if kind is ErrorKind.RETRYABLE:
        count = attempts + 1
        if policy.max_attempts is not None and count >= policy.max_attempts:
            return TransferFailure(
                ErrorKind.PERMANENT, f"gave up after {count} attempts: {reason}", None
            )
        if policy.backoff is not None:
            wait = max(retry_after or 0.0, policy.backoff.delay(count))
            return TransferFailure(kind, reason, wait)
    return TransferFailure(kind, reason, retry_after)
