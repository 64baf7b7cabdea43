"""The WorkManager's tables in the store's file (``nx_work*``), and a work spec read from a row.

The schema is versioned (``nx_work_meta``); :func:`_spec` rebuilds a
:class:`~._decisions.WorkSpec` from a row of :data:`_COLUMNS`, decoding the request's
input, output and progress (:mod:`nexus_store._codec`) and its constraints (JSON).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..._codec import decode
from ..._priority import SyncPriority
from ._decisions import WorkSpec
from ._policy import Constraints
from ._requests import WorkRequest
from ._states import BackoffPolicy, OutOfQuotaPolicy, StopReason, WorkState

__all__ = ["SCHEMA_VERSION"]

SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS nx_work_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS nx_work (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        worker_name TEXT NOT NULL,
        state TEXT NOT NULL,
        unique_name TEXT,
        input BLOB NOT NULL,
        output BLOB NOT NULL,
        progress BLOB NOT NULL,
        constraints TEXT NOT NULL,
        initial_delay REAL NOT NULL,
        interval REAL,
        flex REAL,
        backoff_policy TEXT NOT NULL,
        backoff_delay REAL NOT NULL,
        backoff_on_system_interruptions INTEGER NOT NULL,
        expedited INTEGER NOT NULL,
        out_of_quota_policy TEXT,
        priority INTEGER NOT NULL,
        execution_time_limit REAL,
        run_attempt_count INTEGER NOT NULL,
        period_count INTEGER NOT NULL,
        generation INTEGER NOT NULL,
        last_enqueue_time REAL NOT NULL,
        stop_reason INTEGER NOT NULL,
        enqueued_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS nx_work_by_state ON nx_work (state, last_enqueue_time, seq)",
    "CREATE INDEX IF NOT EXISTS nx_work_by_name ON nx_work (unique_name)"
    " WHERE unique_name IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS nx_work_tag (
        tag TEXT NOT NULL,
        work_id TEXT NOT NULL REFERENCES nx_work (id) ON DELETE CASCADE,
        PRIMARY KEY (tag, work_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS nx_work_tag_by_work ON nx_work_tag (work_id)",
    """CREATE TABLE IF NOT EXISTS nx_work_dependency (
        work_id TEXT NOT NULL REFERENCES nx_work (id) ON DELETE CASCADE,
        prerequisite_id TEXT NOT NULL REFERENCES nx_work (id) ON DELETE CASCADE,
        PRIMARY KEY (work_id, prerequisite_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS nx_work_dependency_by_prerequisite"
    " ON nx_work_dependency (prerequisite_id)",
    """CREATE TABLE IF NOT EXISTS nx_work_run (
        run_id INTEGER PRIMARY KEY AUTOINCREMENT,
        work_id TEXT NOT NULL,
        worker_name TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        expedited INTEGER NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        duration REAL,
        outcome TEXT,
        stop_reason INTEGER,
        error TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS nx_work_run_by_work ON nx_work_run (work_id, run_id)",
    "CREATE TABLE IF NOT EXISTS nx_work_quota (granted_at REAL NOT NULL)",
)
_COLUMNS = (
    "seq, id, worker_name, state, unique_name, input, output, progress, constraints,"
    " initial_delay, interval, flex, backoff_policy, backoff_delay,"
    " backoff_on_system_interruptions, expedited, out_of_quota_policy, priority,"
    " execution_time_limit, run_attempt_count, period_count, generation, last_enqueue_time,"
    " stop_reason, enqueued_at"
)
_SELECT = (
    f"SELECT {_COLUMNS}, (SELECT json_group_array(tag) FROM nx_work_tag t"
    " WHERE t.work_id = w.id) AS tags FROM nx_work w"
)


def _spec(row: Sequence[Any]) -> WorkSpec:
    (
        seq,
        work_id,
        worker_name,
        state,
        unique_name,
        input_blob,
        output_blob,
        progress_blob,
        constraints,
        initial_delay,
        interval,
        flex,
        backoff_policy,
        backoff_delay,
        backoff_on_system,
        expedited,
        out_of_quota,
        priority,
        time_limit,
        run_attempt_count,
        period_count,
        generation,
        last_enqueue_time,
        stop_reason,
        enqueued_at,
        tags,
    ) = row
    request = WorkRequest(
        id=work_id,
        worker_name=worker_name,
        tags=frozenset(json.loads(tags)) if tags else frozenset(),
        input=decode(input_blob),
        constraints=Constraints.model_validate_json(constraints),
        initial_delay=initial_delay,
        backoff_policy=BackoffPolicy(backoff_policy),
        backoff_delay=backoff_delay,
        backoff_on_system_interruptions=bool(backoff_on_system),
        expedited=bool(expedited),
        out_of_quota_policy=None if out_of_quota is None else OutOfQuotaPolicy(out_of_quota),
        priority=SyncPriority(priority),
        execution_time_limit=time_limit,
        interval=interval,
        flex=flex,
    )
    return WorkSpec(
        request=request,
        state=WorkState(state),
        last_enqueue_time=last_enqueue_time,
        run_attempt_count=run_attempt_count,
        period_count=period_count,
        generation=generation,
        stop_reason=StopReason(stop_reason),
        output=decode(output_blob),
        progress=decode(progress_blob),
        unique_name=unique_name,
        seq=seq,
        enqueued_at=enqueued_at,
    )
