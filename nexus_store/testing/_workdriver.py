"""The WorkManager test driver (WM-23): release work without waiting for time or the device.

Two modes, as androidx ``work-testing`` has:

- **manual** (the default, ``WorkDriver()``): the clock does not release initial or period
  delays and the device does not satisfy constraints; the test does, per work id, with
  :meth:`WorkDriver.set_initial_delay_met`, :meth:`WorkDriver.set_period_delay_met` and
  :meth:`WorkDriver.set_all_constraints_met`. Backoff after a retry is still timed by the
  clock (androidx ``TestScheduler`` checks ``calculateNextRunTime`` for backed-off work).
- **virtual clock** (``WorkDriver(virtual_clock=True)``): only advancing the
  :class:`~nexus_store.testing.FakeClock` releases delays, so the two delay methods raise
  :class:`~nexus_store.LifecycleError`; constraints come from the device, and
  ``set_all_constraints_met`` still overrides them for one run (as in androidx's
  time-based mode).

Overrides are used up when the work starts: a periodic work needs
``set_period_delay_met`` again for its next period.

::

    driver = WorkDriver()
    async with WorkManager(db, clock=FakeClock(), device=SimulatedDevice(), driver=driver) as wm:
        work_id = await wm.enqueue(OneTimeWorkRequestBuilder("job").set_initial_delay(3600).build())
        driver.set_initial_delay_met(work_id)
        await driver.settle()                     # the dispatcher has started it
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from .._exceptions import InvalidWorkRequestError, LifecycleError, UnknownWorkError
from ..sync.workmanager._decisions import ReleaseFlags
from ..sync.workmanager._records import WorkInfo
from ..sync.workmanager._running import DriverHooks

__all__ = ["WorkDriver"]


class WorkDriver:
    """Releases work of one :class:`~nexus_store.sync.workmanager.WorkManager` on demand (WM-23).

    Args:
        virtual_clock: use the virtual-clock mode (only the clock releases delays).
    """

    def __init__(self, *, virtual_clock: bool = False) -> None:
        self._virtual_clock = virtual_clock
        self._flags: dict[str, ReleaseFlags] = {}
        self._hooks: DriverHooks | None = None

    # -- the ReleaseControl seam used by the manager ---------------------------------------

    @property
    def manual_time(self) -> bool:
        """Whether delays wait for this driver instead of the clock."""
        return not self._virtual_clock

    @property
    def virtual_clock(self) -> bool:
        """Whether this driver is in virtual-clock mode."""
        return self._virtual_clock

    def flags(self) -> Mapping[str, ReleaseFlags]:
        """The overrides set so far and not yet used, by work id."""
        return dict(self._flags)

    def work_started(self, work_id: str) -> None:
        """Forget the overrides of work that just started."""
        self._flags.pop(work_id, None)

    def bind(self, hooks: DriverHooks) -> None:
        """Attach to the manager that was given this driver.

        Raises:
            LifecycleError: the driver already belongs to another manager.
        """
        if self._hooks is not None:
            raise LifecycleError("a WorkDriver drives one WorkManager")
        self._hooks = hooks

    # -- the test API ----------------------------------------------------------------------

    def set_all_constraints_met(self, work_id: str) -> None:
        """Treat every constraint of the work as met (for its next run).

        Raises:
            UnknownWorkError: no work with that id.
        """
        self._lookup(work_id)
        self._set(work_id, constraints_met=True)

    def set_initial_delay_met(self, work_id: str) -> None:
        """Treat the work's initial delay as elapsed.

        Raises:
            LifecycleError: in virtual-clock mode (advance the clock instead).
            UnknownWorkError: no work with that id.
        """
        self._refuse_in_virtual_clock_mode("set_initial_delay_met")
        self._lookup(work_id)
        self._set(work_id, initial_delay_met=True)

    def set_period_delay_met(self, work_id: str) -> None:
        """Treat the current period of periodic work as elapsed.

        Raises:
            LifecycleError: in virtual-clock mode (advance the clock instead).
            UnknownWorkError: no work with that id.
            InvalidWorkRequestError: the work is not periodic.
        """
        self._refuse_in_virtual_clock_mode("set_period_delay_met")
        info = self._lookup(work_id)
        if not info.is_periodic:
            raise InvalidWorkRequestError(f"work {work_id} isn't periodic")
        self._set(work_id, period_delay_met=True)

    async def settle(self) -> None:
        """Wait until the manager's dispatcher has acted on everything set so far."""
        await self._require_hooks().settle()

    # -- internals -------------------------------------------------------------------------

    def _refuse_in_virtual_clock_mode(self, method: str) -> None:
        if self._virtual_clock:
            raise LifecycleError(
                f"{method}() is not available in virtual-clock mode: advance the clock instead"
            )

    def _require_hooks(self) -> DriverHooks:
        if self._hooks is None:
            raise LifecycleError("this WorkDriver is not attached: pass it to WorkManager(driver=)")
        return self._hooks

    def _lookup(self, work_id: str) -> WorkInfo:
        info = self._require_hooks().lookup(work_id)
        if info is None:
            raise UnknownWorkError(f"work with id {work_id!r} is not enqueued")
        return info

    def _set(self, work_id: str, **changes: bool) -> None:
        current = self._flags.get(work_id, ReleaseFlags())
        self._flags[work_id] = dataclasses.replace(current, **changes)
        self._require_hooks().wake()

    def __repr__(self) -> str:
        mode = "virtual_clock" if self._virtual_clock else "manual"
        return f"WorkDriver(mode={mode}, pending={len(self._flags)})"
