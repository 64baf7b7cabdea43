"""The pull half of a sync run: changes after each collection's cursor, page by page.

Each page and its cursor move commit in one transaction; pulled changes never overwrite
an item that still has pending ops (the pending op is pushed and the conflict rule
decides). A change that cannot be applied is kept in the quarantine with the cursor move.
"""

from __future__ import annotations

from collections.abc import Sequence

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


class _Pulling(_RunnerBase):
    """A sync run's pull."""

    async def _pull_page(self, run: _Run, target: SyncTarget, cursor: int, page: int) -> Changes:
        """One page of the target's changes, without what this run pushed (a writer-aware
        backend leaves those out: the store has them already)."""
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
            # Bounded: every page must move the cursor forward.
            while True:
                run.requests += 1
                try:
                    changes = await self._pull_page(run, target, cursor, page)
                except RemoteError as exc:
                    run.error = f"pull: {type(exc).__name__}: {exc}"
                    if (
                        isinstance(exc, AuthError)
                        or exc.retry_after is not None
                        or failure_scope(exc) is FailureScope.REMOTE
                    ):
                        await self._pause(run, exc)
                        assert run.paused is not None
                        run.stop = _PAUSE_STOPS[run.paused.reason]
                    return
                await self._exchanged(run)
                self._observe_server_clock()
                applied, quarantined = await self._local(
                    _apply_page, target, changes.changes, max(cursor, changes.cursor)
                )
                run.pulled += applied
                run.quarantined += quarantined
                self._publish_progress(run)
                if not changes.has_more or changes.cursor <= cursor:
                    break
                cursor = changes.cursor
