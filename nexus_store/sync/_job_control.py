"""Steering the service's jobs: register a job, switch it on or off, run it now, list them.

The switches are rows of ``nx_job`` in the store's file (:class:`~._jobs.JobTable`), so
they survive restarts and another process can flip them: the service reads the table's
control sequence on each pass of its trigger loop (the flipping commit wakes that loop)
and applies what changed. The store's sync is the job :data:`~._jobs.SYNC_JOB`: switched
off, it asks for no runs (saves stay queued) until switched on again.

Adapters answer three hooks: :meth:`_JobControl._job_switched` (schedule or cancel a job's
work), :meth:`_JobControl._job_run_now` (expedited work for one job) and
:meth:`_JobControl._job_states` (state and next run of each job's work).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from .._exceptions import LifecycleError, UnknownWorkError
from .._priority import SyncPriority
from ._config import ScheduleResult, ServiceState
from ._jobs import (
    SYNC_JOB,
    JobDefinition,
    JobInfo,
    JobTable,
    PeriodicSchedule,
    RunNowResult,
    unmet_job_constraints,
)
from ._pokes import _Pokes
from ._quick_read import read_soon
from ._task import BackgroundSyncTask, RegisteredTask, TaskRun

__all__: list[str] = []

logger = logging.getLogger("nexus_store.sync.service")

_SYNC_DEFINITION: dict[str, object] = {
    "name": "Sync",
    "description": "Push the queued ops to the remote and pull its changes.",
    "schedule": None,
    "constraints": {},
}


class _JobControl(_Pokes):
    """Jobs as people steer them (see the module docstring)."""

    _jobs: JobTable | None = None
    _control_seq: int = 0
    _sync_enabled: bool = True
    _periodic_wanted: bool = False

    if TYPE_CHECKING:  # defined by the service (:mod:`._service`)

        def register_task(
            self,
            task: BackgroundSyncTask,
            *,
            interval: timedelta | None = None,
            initial_delay: timedelta = ...,
            constrained: bool = True,
        ) -> None: ...

        async def run_history(
            self, task_id: str | None = None, *, limit: int = 100
        ) -> list[TaskRun]: ...

    def register_job(self, job: JobDefinition) -> None:
        """Register a job (see :class:`~nexus_store.sync.JobDefinition`) before starting.

        Its schedule and constraints are its own (not the config's). A job switched off
        (:meth:`disable`, here or from another process) stays off across restarts.

        Raises:
            LifecycleError: the service was already started.
            TypeError: ``job`` is not a JobDefinition.
            ValueError: a duplicate or reserved id, or a bad delay.
        """
        if not isinstance(job, JobDefinition):
            raise TypeError("register_job() takes a JobDefinition")
        schedule = job.schedule
        if isinstance(schedule, PeriodicSchedule):
            if schedule.initial_delay < timedelta(0):
                raise ValueError("initial_delay must not be negative")
            interval: timedelta | None = schedule.interval
            delay = schedule.initial_delay
        else:
            interval, delay = None, schedule.delay
        # The scheduler clamps an out-of-range interval (WM-1); register_task refuses a
        # non-positive one, so hand it the smallest positive one to clamp.
        if interval is not None and interval <= timedelta(0):
            interval = timedelta(microseconds=1)
        self.register_task(job, interval=interval, initial_delay=max(delay, timedelta(0)))
        registered = self._tasks[job.id]
        self._tasks[job.id] = RegisteredTask(
            registered.task, registered.interval, registered.initial_delay, True, job
        )

    # -- the table, at start and on every pass --------------------------------------------------

    def _open_jobs(self) -> None:
        """Record every job's definition in the file and read the switches (in a thread)."""
        table = JobTable(self._database)
        now = self._clock.now()
        table.upsert(SYNC_JOB, _SYNC_DEFINITION, now=now)
        for job_id, registered in self._tasks.items():
            if registered.definition is not None:
                described = registered.definition.described()
            else:
                described = {
                    "name": job_id,
                    "description": "",
                    "schedule": None
                    if registered.interval is None
                    else {"kind": "periodic", "interval": registered.interval.total_seconds()},
                    "constraints": {},
                }
            table.upsert(job_id, described, now=now)
        self._jobs = table
        self._control_seq = table.control_seq()
        self._sync_enabled = table.enabled(SYNC_JOB)

    def _job_enabled(self, job_id: str) -> bool:
        """Whether a job is switched on (for the adapter, at start)."""
        return self._jobs is None or self._jobs.enabled(job_id)

    async def _follow_controls(self) -> None:
        """Apply the switches other processes flipped since the last look."""
        table = self._jobs
        if table is None:
            return
        seq = await read_soon(table.database, table.control_seq)
        if seq == self._control_seq:
            return
        self._control_seq = seq
        rows = await anyio.to_thread.run_sync(table.rows)
        for row in rows:
            if row.job_id != SYNC_JOB and row.job_id not in self._tasks:
                continue  # another app's job (or one not registered in this run)
            await self._apply_switch(row.job_id, row.enabled)
            if row.run_requested_at is not None:
                await anyio.to_thread.run_sync(table.clear_run_request, row.job_id)
                result = await self._start_now(row.job_id)
                logger.info("job %s: run asked for from the file: %s", row.job_id, result.message)

    async def _apply_switch(self, job_id: str, enabled: bool) -> None:
        if job_id == SYNC_JOB:
            if enabled == self._sync_enabled:
                return
            self._sync_enabled = enabled
            self._stream_news()
            if enabled:
                if self._periodic_wanted:
                    await self._schedule()
                    self._periodic = True
                if self._backend is not None:  # catch up at once: push and pull
                    await self._request_run(SyncPriority.CRITICAL)
                self._fresh_look()
            else:
                await self._cancel()
                self._periodic = False
            self._update_scheduled(await self._has_schedule())
            logger.info("the sync job is switched %s", "on" if enabled else "off")
            return
        await self._job_switched(job_id, enabled)

    # -- the public verbs -----------------------------------------------------------------------

    def _known(self, job_id: str) -> None:
        if job_id != SYNC_JOB and job_id not in self._tasks:
            known = ", ".join([SYNC_JOB, *sorted(self._tasks)])
            raise UnknownWorkError(f"no job {job_id!r} (known: {known})")

    def _require_jobs(self) -> JobTable:
        self._check_running_jobs()
        assert self._jobs is not None
        return self._jobs

    def _check_running_jobs(self) -> None:
        if self._state is not ServiceState.RUNNING or self._jobs is None:
            raise LifecycleError("the service is not running: use `async with service:`")

    async def enable(self, job_id: str) -> None:
        """Switch a job on (kept across restarts): it is scheduled again.

        Raises:
            LifecycleError: the service is not running.
            UnknownWorkError: no such job.
        """
        await self._switch(job_id, True)

    async def disable(self, job_id: str) -> None:
        """Switch a job off (kept across restarts): its scheduled work is cancelled and a
        run in progress is stopped. Switching the sync off keeps saves queued.

        Raises:
            LifecycleError: the service is not running.
            UnknownWorkError: no such job.
        """
        await self._switch(job_id, False)

    async def _switch(self, job_id: str, enabled: bool) -> None:
        table = self._require_jobs()
        self._known(job_id)
        now = self._clock.now()
        await anyio.to_thread.run_sync(lambda: table.set_enabled(job_id, enabled, now=now))
        self._control_seq = await anyio.to_thread.run_sync(table.control_seq)
        await self._apply_switch(job_id, enabled)

    async def run_now(self, job_id: str) -> RunNowResult:
        """Run a job now, as expedited work (switched off or not).

        Expedited work waits only for its network and storage constraints (WM-14); every
        constraint not met now is reported in the result's ``unmet``.

        Raises:
            LifecycleError: the service is not running.
            UnknownWorkError: no such job.
        """
        self._require_jobs()
        self._known(job_id)
        return await self._start_now(job_id)

    async def _start_now(self, job_id: str) -> RunNowResult:
        try:
            state = self._device.current()
        except Exception:  # a probe failing is an answer, not a crash
            state = None
        if job_id == SYNC_JOB:
            from ._config import unmet_constraints  # noqa: PLC0415 - the config's words

            unmet = [] if state is None else unmet_constraints(self._config, state)
            if self._backend is None:
                return RunNowResult(job_id=job_id, accepted=False, message="no backend to sync")
            result = await self._request_run(SyncPriority.CRITICAL)
            self._update_scheduled(await self._has_schedule())
        else:
            registered = self._tasks[job_id]
            definition = registered.definition
            unmet = (
                unmet_job_constraints(definition.constraints, state)
                if definition is not None
                else []
            )
            result = await self._job_run_now(job_id)
        accepted = result is ScheduleResult.ACCEPTED
        if not accepted:
            message = f"refused: {result.value}"
        elif unmet:
            message = "asked for; waits for: " + "; ".join(unmet)
        else:
            message = "asked for; starting"
        return RunNowResult(job_id=job_id, accepted=accepted, unmet=unmet, message=message)

    async def jobs(self) -> list[JobInfo]:
        """Every job of this file: definition, switch, the scheduler's state, last run.

        Raises:
            LifecycleError: the service is not running.
        """
        table = self._require_jobs()
        rows = await anyio.to_thread.run_sync(table.rows)
        states = await self._job_states()
        history = await self._history(None, 200)
        infos = []
        for row in rows:
            if row.job_id != SYNC_JOB and row.job_id not in self._tasks:
                continue
            state, next_at = states.get(row.job_id, ("idle", None))
            last = next((run for run in history if run.task_id == row.job_id), None)
            infos.append(row.info(state=state, next_run_at=next_at, last_run=last))
        return infos

    async def job_history(self, job_id: str, *, limit: int = 50) -> list[TaskRun]:
        """A job's persisted runs, newest first (start, end, duration, outcome, message,
        attempt, stop reason).

        Raises:
            LifecycleError: the service is not running.
            UnknownWorkError: no such job.
        """
        self._known(job_id)
        return await self.run_history(job_id, limit=limit)

    # -- adapter hooks (defaults: the adapter cannot steer single jobs) ---------------------------

    async def _job_switched(self, job_id: str, enabled: bool) -> None:
        """Schedule (``enabled``) or cancel a job's work."""
        await anyio.lowlevel.checkpoint()

    async def _job_run_now(self, job_id: str) -> ScheduleResult:
        """Ask for an expedited run of one job."""
        await anyio.lowlevel.checkpoint()
        return ScheduleResult.UNSUPPORTED

    async def _job_states(self) -> dict[str, tuple[str, float | None]]:
        """The scheduler's state and next run time of each job's work."""
        await anyio.lowlevel.checkpoint()
        return {}
