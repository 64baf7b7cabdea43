"""Streams of work snapshots as they change (WM-19): by work id, or by query."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..._broadcast import BufferedStream
from ._records import WorkInfo, WorkQuery

__all__ = ["WorkWatch"]

T = TypeVar("T")


class WorkWatch(BufferedStream[T]):
    """Snapshots of work as they change: an async iterator (WM-19).

    The first item is the state at subscription time; then one item per persisted change.
    Ends when the manager closes (after the buffered items) or on :meth:`close`.
    """

    def __init__(self, first: T, remove: Callable[[WorkWatch[Any]], None]) -> None:
        super().__init__([first])
        self._remove = remove

    def _detach(self) -> None:
        self._remove(self)

    def _offer(
        self, infos: Mapping[str, WorkInfo], listing: Callable[[WorkQuery], list[WorkInfo]]
    ) -> None:
        """Take a change: ``infos`` the changed work, ``listing`` the work a query selects."""
        raise NotImplementedError


class _IdWatch(WorkWatch[WorkInfo]):
    def __init__(
        self, work_id: str, first: WorkInfo, remove: Callable[[WorkWatch[Any]], None]
    ) -> None:
        super().__init__(first, remove)
        self._work_id = work_id

    def _offer(
        self, infos: Mapping[str, WorkInfo], listing: Callable[[WorkQuery], list[WorkInfo]]
    ) -> None:
        info = infos.get(self._work_id)
        if info is not None:
            self._put(info)


class _QueryWatch(WorkWatch[list[WorkInfo]]):
    def __init__(
        self, query: WorkQuery, first: list[WorkInfo], remove: Callable[[WorkWatch[Any]], None]
    ) -> None:
        super().__init__(first, remove)
        self._query = query
        self._ids = {info.id for info in first}

    def _offer(
        self, infos: Mapping[str, WorkInfo], listing: Callable[[WorkQuery], list[WorkInfo]]
    ) -> None:
        if any(self._query.matches(info) or info.id in self._ids for info in infos.values()):
            current = listing(self._query)
            self._ids = {info.id for info in current}
            self._put(current)
