"""Sync priorities: what an op's urgency means for when it is sent."""

from __future__ import annotations

from enum import IntEnum


class SyncPriority(IntEnum):
    """How urgently a write should reach the remote, most urgent first.

    The integer values order the queue: a lower value is served first.

    - ``CRITICAL``: sync immediately (requests an expedited one-time run).
    - ``HIGH``: sync soon (a one-time run after a short debounce that batches bursts).
    - ``NORMAL``: the next scheduled (periodic) run.
    - ``LOW``: deferred while busy; not sent on a metered network or low battery,
      and only after higher priorities in the same run.
    """

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3

    @classmethod
    def coerce(cls, value: SyncPriority | int | str) -> SyncPriority:
        """Return ``value`` as a member, accepting a member, its value or its name.

        Raises:
            ValueError: if ``value`` names no priority.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                raise ValueError(f"unknown sync priority {value!r}") from None
        return cls(value)
