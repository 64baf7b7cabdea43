"""Enqueueing work into the WorkManager: plain, unique (KEEP/REPLACE/UPDATE...), updated, cancelled.

Each call validates the request against the manager's policy, writes the specs in one
transaction of the ``nx_work*`` tables and wakes the dispatcher (WM-13..WM-18).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import anyio
import anyio.from_thread
import anyio.lowlevel

from ..._exceptions import InvalidWorkRequestError, UnknownWorkError
from ._decisions import WorkSpec, after_cancel, initial_state, is_unfinished
from ._dispatch import _Dispatching
from ._policy import clamp_periodic
from ._records import WorkQuery
from ._requests import WorkRequest
from ._states import (
    ExistingPeriodicWorkPolicy,
    ExistingWorkPolicy,
    OutOfQuotaPolicy,
    UpdateResult,
    WorkState,
)

__all__: list[str] = []

logger = logging.getLogger("nexus_store.sync.workmanager")


class _Enqueueing(_Dispatching):
    """What goes into the manager: enqueue, unique work, updates, cancellation."""

    # -- enqueueing ------------------------------------------------------------------------

    async def enqueue(self, request: WorkRequest, *, depends_on: Sequence[str] = ()) -> str | None:
        """Enqueue work; with ``depends_on`` it runs after those ids succeed (WM-10).

        Returns:
            The work id, or ``None`` when expedited work was dropped by ``DROP`` (WM-14).

        Raises:
            InvalidWorkRequestError: the request was already enqueued, or periodic work in
                a chain.
            UnknownWorkError: a prerequisite id does not exist.
            LifecycleError: the manager is not running.
        """
        store = self._check_running()
        request = self._admit(request)
        now = self._clock.now()
        with store.transaction():
            spec = self._insert(request, now, prerequisites=list(depends_on), unique_name=None)
        if spec is None:
            return None
        self._after_write([spec])
        await anyio.lowlevel.checkpoint()
        return spec.id

    async def enqueue_unique(
        self,
        name: str,
        policy: ExistingWorkPolicy | ExistingPeriodicWorkPolicy,
        request: WorkRequest,
        *,
        durable: bool = True,
    ) -> str | None:
        """Enqueue work under a unique name, resolving a clash by ``policy`` (WM-16, WM-17).

        One-time work takes an :class:`ExistingWorkPolicy`, periodic work an
        :class:`ExistingPeriodicWorkPolicy`. Replaced or cancelled predecessors stay
        readable as CANCELLED but lose the name.

        ``durable=False`` records the request without waiting for the disk: a crash of
        the process loses nothing, but a power cut may roll it back. For requests the
        caller asks for again after a restart anyway (the sync service asks for its
        expedited runs from what its queue holds), where the wait would only delay the run.

        Returns:
            The id of the work now carrying the request (the existing id for ``UPDATE``),
            or ``None`` when nothing was enqueued (``KEEP`` with unfinished work, ``DROP``).

        Raises:
            InvalidWorkRequestError: the policy does not fit the request, or ``UPDATE`` of a
                chain or of one-time work.
            LifecycleError: the manager is not running.
        """
        store = self._check_running()
        if not isinstance(name, str) or not name:
            raise InvalidWorkRequestError("a unique work name must be a non-empty string")
        if request.is_periodic and not isinstance(policy, ExistingPeriodicWorkPolicy):
            raise InvalidWorkRequestError("periodic work takes an ExistingPeriodicWorkPolicy")
        if not request.is_periodic and not isinstance(policy, ExistingWorkPolicy):
            raise InvalidWorkRequestError("one-time work takes an ExistingWorkPolicy")
        request = self._admit(request)
        now = self._clock.now()
        changed: list[WorkSpec] = []
        with store.transaction(durable=durable):
            existing = store.with_name(name)
            if isinstance(policy, ExistingPeriodicWorkPolicy):
                work_id = self._unique_periodic(
                    name, policy, request, existing=existing, now=now, changed=changed
                )
            else:
                work_id = self._unique_one_time(
                    name, policy, request, existing=existing, now=now, changed=changed
                )
        self._after_write(changed)
        await anyio.lowlevel.checkpoint()
        return work_id

    def _unique_one_time(
        self,
        name: str,
        policy: ExistingWorkPolicy,
        request: WorkRequest,
        *,
        existing: list[WorkSpec],
        now: float,
        changed: list[WorkSpec],
    ) -> str | None:
        prerequisites: list[str] = []
        if existing:
            if policy is ExistingWorkPolicy.KEEP:
                if any(is_unfinished(spec.state) for spec in existing):
                    return None
                self._detach(name, now, changed)
            elif policy is ExistingWorkPolicy.REPLACE:
                self._cancel_tree([spec.id for spec in existing], now, changed)
                self._detach(name, now, changed)
            else:
                store = self._require_store()
                leaves = [spec for spec in existing if not store.dependents(spec.id)]
                broken = any(
                    spec.state in (WorkState.FAILED, WorkState.CANCELLED) for spec in leaves
                )
                if policy is ExistingWorkPolicy.APPEND_OR_REPLACE and broken:
                    self._cancel_tree([spec.id for spec in existing], now, changed)
                    self._detach(name, now, changed)
                else:
                    prerequisites = [spec.id for spec in leaves]
        spec = self._insert(request, now, prerequisites=prerequisites, unique_name=name)
        if spec is None:
            return None
        changed.append(spec)
        return spec.id

    def _unique_periodic(
        self,
        name: str,
        policy: ExistingPeriodicWorkPolicy,
        request: WorkRequest,
        *,
        existing: list[WorkSpec],
        now: float,
        changed: list[WorkSpec],
    ) -> str | None:
        if existing:
            if policy is ExistingPeriodicWorkPolicy.KEEP:
                if any(is_unfinished(spec.state) for spec in existing):
                    return None
                self._detach(name, now, changed)
            elif policy is ExistingPeriodicWorkPolicy.CANCEL_AND_REENQUEUE:
                self._cancel_tree([spec.id for spec in existing], now, changed)
                self._detach(name, now, changed)
            else:
                if len(existing) > 1:
                    raise InvalidWorkRequestError(
                        "Can't apply UPDATE policy to the chains of work."
                    )
                current = existing[0]
                if not current.request.is_periodic:
                    raise InvalidWorkRequestError(
                        "Can't update one-time work to periodic work: an update must keep"
                        " the work's type"
                    )
                if not current.state.is_finished:
                    self._update_in_place(current, request, now, changed)
                    return current.id
                self._detach(name, now, changed)  # UPDATE replaces a CANCELLED predecessor
        spec = self._insert(request, now, prerequisites=[], unique_name=name)
        if spec is None:
            return None
        changed.append(spec)
        return spec.id

    async def update_work(self, request: WorkRequest) -> UpdateResult:
        """Change the spec of existing work ``request.id`` in place (androidx ``updateWork``).

        Keeps state, attempt and period counts and the last enqueue time, bumps the
        generation; a running instance finishes with the old spec (WM-17).

        Raises:
            UnknownWorkError: no work with that id.
            InvalidWorkRequestError: one-time and periodic cannot be swapped.
        """
        store = self._check_running()
        request = self._admit(request)
        now = self._clock.now()
        changed: list[WorkSpec] = []
        with store.transaction():
            current = store.get(request.id)
            if current is None:
                raise UnknownWorkError(f"no work with id {request.id!r}")
            result = self._update_in_place(current, request, now, changed)
        self._after_write(changed)
        await anyio.lowlevel.checkpoint()
        return result

    def _update_in_place(
        self, current: WorkSpec, request: WorkRequest, now: float, changed: list[WorkSpec]
    ) -> UpdateResult:
        if current.state.is_finished:
            return UpdateResult.NOT_APPLIED
        if current.request.is_periodic != request.is_periodic:
            raise InvalidWorkRequestError("an update must keep the work's type (one-time/periodic)")
        running = current.state is WorkState.RUNNING
        updated = dataclasses.replace(
            current,
            request=dataclasses.replace(request, id=current.id),
            generation=current.generation + 1,
            progress=current.progress if running else {},
        )
        self._require_store().save(updated, now=now)
        changed.append(updated)
        return UpdateResult.APPLIED_FOR_NEXT_RUN if running else UpdateResult.APPLIED_IMMEDIATELY

    def _admit(self, request: WorkRequest) -> WorkRequest:
        """Apply this manager's periodic floors (a request built under a lower floor)."""
        if not isinstance(request, WorkRequest):
            raise InvalidWorkRequestError("enqueue() takes a WorkRequest from a builder")
        if request.interval is None:
            return request
        # A request without a flex window carries flex == interval; re-clamping must keep
        # it without one (not invent a window of the raised interval minus the old one).
        flex_window = (
            request.flex if request.flex is not None and request.flex < request.interval else None
        )
        interval, flex = clamp_periodic(
            request.interval,
            flex_window,
            min_interval=self.policy.min_periodic_interval.total_seconds(),
            min_flex=self.policy.min_periodic_flex.total_seconds(),
        )
        if (interval, flex) == (request.interval, request.flex):
            return request
        return dataclasses.replace(request, interval=interval, flex=flex)

    def _insert(
        self,
        request: WorkRequest,
        now: float,
        *,
        prerequisites: list[str],
        unique_name: str | None,
    ) -> WorkSpec | None:
        store = self._require_store()
        if store.get(request.id) is not None:
            raise InvalidWorkRequestError(f"work {request.id} was already enqueued")
        states: list[WorkState | None] = []
        for prerequisite_id in prerequisites:
            prerequisite = store.get(prerequisite_id)
            if prerequisite is None:
                raise UnknownWorkError(f"no work with id {prerequisite_id!r} to depend on")
            if request.is_periodic or prerequisite.request.is_periodic:
                raise InvalidWorkRequestError("periodic work cannot be part of a chain")
            states.append(prerequisite.state)
        if request.expedited:
            granted = self._apply_quota(request, now)
            if granted is None:
                return None
            request = granted
        spec = WorkSpec(
            request=request,
            state=initial_state(states),
            last_enqueue_time=now,
            unique_name=unique_name,
            enqueued_at=now,
        )
        spec = store.insert(spec, now=now)
        if prerequisites:
            store.add_dependencies(spec.id, prerequisites)
        return spec

    def _apply_quota(self, request: WorkRequest, now: float) -> WorkRequest | None:
        store = self._require_store()
        window = self.policy.expedited_quota_window.total_seconds()
        if store.expedited_grants_since(now - window) < self.policy.expedited_quota:
            store.grant_expedited(now=now, forget_before=now - window)
            return request
        if request.out_of_quota_policy is OutOfQuotaPolicy.DROP:
            logger.info("expedited quota used up: dropping work %s", request.id)
            return None
        logger.info("expedited quota used up: work %s runs as normal work", request.id)
        return dataclasses.replace(request, expedited=False)

    async def cancel_by_id(self, work_id: str) -> int:
        """Cancel work and its dependents (WM-10); returns how many became CANCELLED."""
        self._check_running()
        return await self._cancel([work_id])

    async def cancel_by_tag(self, tag: str) -> int:
        """Cancel all work with ``tag`` and its dependents (WM-18)."""
        store = self._check_running()
        return await self._cancel([spec.id for spec in store.find(WorkQuery(tags={tag}))])

    async def cancel_unique(self, name: str) -> int:
        """Cancel the work under unique name ``name`` and its dependents (WM-18)."""
        store = self._check_running()
        return await self._cancel([spec.id for spec in store.with_name(name)])

    async def cancel_all(self) -> int:
        """Cancel all unfinished work."""
        store = self._check_running()
        query = WorkQuery(states={WorkState.ENQUEUED, WorkState.RUNNING, WorkState.BLOCKED})
        return await self._cancel([spec.id for spec in store.find(query)])

    async def _cancel(self, ids: list[str]) -> int:
        store = self._check_running()
        now = self._clock.now()
        changed: list[WorkSpec] = []
        with store.transaction():
            self._cancel_tree(ids, now, changed)
        self._after_write(changed)
        await anyio.lowlevel.checkpoint()
        return len({spec.id for spec in changed})

    def _cancel_tree(self, ids: list[str], now: float, changed: list[WorkSpec]) -> None:
        store = self._require_store()
        stack, seen = list(ids), set[str]()
        while stack:
            work_id = stack.pop()
            if work_id in seen:
                continue
            seen.add(work_id)
            spec = store.get(work_id)
            if spec is None:
                continue
            if spec.state not in (WorkState.SUCCEEDED, WorkState.FAILED, WorkState.CANCELLED):
                cancelled = after_cancel(spec)
                store.save(cancelled, now=now)
                changed.append(cancelled)
            stack.extend(store.dependents(work_id))

    def _detach(self, name: str, now: float, changed: list[WorkSpec]) -> None:
        store = self._require_store()
        for spec in store.with_name(name):
            detached = dataclasses.replace(spec, unique_name=None)
            store.save(detached, now=now)
            changed.append(detached)
