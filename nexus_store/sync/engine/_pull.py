"""The pull half of a sync run: changes after each collection's cursor, page by page.

Each page and its cursor move commit in one transaction; pulled changes never overwrite
an item that still has pending ops (the pending op is pushed and the conflict rule
decides). A change that cannot be applied is kept in the quarantine with the cursor move.

One page ahead: while a page is applied (a durable transaction in a worker thread), the
request for the next one (when the page said there is more, and its cursor moved) is
already on the wire, in a task of the collection's pull (:class:`_PageAhead`). So a run
catching up on many changes keeps the network and the disk busy at once, and holds at
most two pages. Pages are still applied one at a time, in order. What the request ahead
brings is taken only after the page before it was applied: a failure of that request is
handled as if it had been sent then (the page before keeps its progress); a failure to
apply a page cancels the request ahead and is raised as itself; a stopped run (budget,
cancellation) applies no page after the stop, and the request ahead ends with the
collection's pull.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence

import anyio
import anyio.abc
import anyio.lowlevel

from ..._exceptions import AuthError, RemoteError
from ..._remote import Change, Changes
from ._engine import FailureScope, failure_scope
from ._run import _PAUSE_STOPS, _Run, _RunnerBase
from ._target import SyncTarget

__all__: list[str] = []


def _apply_page(target: SyncTarget, changes: Sequence[Change], cursor: int) -> tuple[int, int]:
    """Apply one pulled page and store its cursor in one transaction; return how many
    changes were applied and how many quarantined.

    The cursor moves past a change that could not be applied only because the target kept
    it (its ``apply_pulled`` quarantines such changes in this same transaction). A target
    without ``apply_pulled`` (one written before the quarantine) is applied as before.
    """
    apply_pulled = getattr(target, "apply_pulled", None)
    with target.database.transaction():
        if apply_pulled is not None:
            applied, quarantined = apply_pulled(changes)
        else:
            applied, quarantined = target.apply_remote_changes(changes), 0
        target.set_pull_cursor(cursor)
    return len(applied), quarantined


class _PageAhead:
    """The request for the next page, running in a task while the page before is applied.

    Whatever the request raises (short of cancellation) is kept and raised by
    :meth:`result` in the run's own task, where a request sent in turn would have raised it.
    """

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._changes: Changes | None = None
        self._error: Exception | None = None

    async def fetch(self, request: Callable[[], Awaitable[Changes]]) -> None:
        """Send the request and keep its answer or its error (the task's body)."""
        try:
            self._changes = await request()
        except Exception as exc:  # raised by result(), in the run's task
            self._error = exc
        finally:
            self._done.set()

    async def result(self) -> Changes:
        """The page, once it came; raises what the request raised."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._changes is not None
        return self._changes


class _Pulling(_RunnerBase):
    """A sync run's pull."""

    async def _pull_page(self, run: _Run, target: SyncTarget, cursor: int, page: int) -> Changes:
        """One page of the target's changes, without what this run pushed (a writer-aware
        backend leaves those out: the store has them already); counted as a request."""
        run.requests += 1
        collections = [target.collection]
        if self.backend.writer_aware:
            return await self.backend.pull(
                cursor, page, collections=collections, skip_writer=run.writer
            )
        return await self.backend.pull(cursor, page, collections=collections)

    # -- pull ---------------------------------------------------------------------------------

    async def _pull(self, run: _Run) -> None:
        page = self.config.pull_page
        for target in self.targets:
            retry = getattr(target, "retry_quarantined", None)
            if retry is not None:
                # Changes kept under another model (or migrations) may fit now.
                run.pulled += await self._local(retry)
            cursor = await self._local(target.pull_cursor)
            if not await self._pull_target(run, target, cursor, page):
                return

    async def _pull_target(self, run: _Run, target: SyncTarget, cursor: int, page: int) -> bool:
        """Pull one collection's pages after ``cursor``, the next page's request in a task
        of this call; ``False`` when a request failed (the run pulls no further).

        An error is raised as itself (not in an exception group), after the request ahead
        was cancelled.
        """
        caught: Exception | None = None
        async with anyio.create_task_group() as group:
            try:
                return await self._pull_pages(run, target, cursor, page, group)
            except Exception as exc:  # raised below, out of the task group
                caught = exc
                group.cancel_scope.cancel()  # the request ahead, if one is out
        assert caught is not None
        raise caught

    async def _pull_pages(
        self,
        run: _Run,
        target: SyncTarget,
        cursor: int,
        page: int,
        group: anyio.abc.TaskGroup,
    ) -> bool:
        try:
            changes = await self._pull_page(run, target, cursor, page)
        except RemoteError as exc:
            await self._pull_failed(run, exc)
            return False
        # Bounded: every page must move the cursor forward (and the server has a last one).
        while True:
            await self._exchanged(run)
            self._observe_server_clock()
            # A stopped run (budget, cancellation) applies nothing more, nor asks for more.
            await anyio.lowlevel.checkpoint_if_cancelled()
            ahead: _PageAhead | None = None
            if changes.has_more and changes.cursor > cursor:
                ahead = _PageAhead()
                request = functools.partial(self._pull_page, run, target, changes.cursor, page)
                group.start_soon(ahead.fetch, request)
            if changes.changes or changes.cursor > cursor:
                applied, quarantined = await self._local(
                    _apply_page, target, changes.changes, max(cursor, changes.cursor)
                )
                run.pulled += applied
                run.quarantined += quarantined
                self._publish_progress(run)
            # else nothing new: the file is not written (no transaction, no disk sync).
            if ahead is None:
                return True
            cursor = changes.cursor
            try:
                changes = await ahead.result()
            except RemoteError as exc:
                await self._pull_failed(run, exc)
                return False

    async def _pull_failed(self, run: _Run, exc: RemoteError) -> None:
        """A pull request failed: note it; refused credentials, a remote asking for quiet
        or one that is down pause the remote and stop the run."""
        run.error = f"pull: {type(exc).__name__}: {exc}"
        if (
            isinstance(exc, AuthError)
            or exc.retry_after is not None
            or failure_scope(exc) is FailureScope.REMOTE
        ):
            await self._pause(run, exc)
            assert run.paused is not None
            run.stop = _PAUSE_STOPS[run.paused.reason]
