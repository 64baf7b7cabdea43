"""The queue's tables in the database file, and the upgrades of older layouts at open.

``nx_queue`` holds the ops; ``chain`` places an op in its item's sequence (the head, waiting
behind it, or out of it: dead). ``nx_leases`` holds lease state beside the op, keyed by its
``seq``. A file made by an older version gains what this one needs when a queue opens it
for writing; opened only to inspect (``create=False``), the file stays as it is.
"""

from __future__ import annotations

from .._database import Database
from .._exceptions import QueueError, SchemaError
from . import _timeline

__all__ = ["create_schema"]

# -- SQL ------------------------------------------------------------------------------------
# Constant statements, so sqlite3's statement cache prepares each once per connection.
#
# ``chain`` places an op in its item's sequence: 0 the head (the item's oldest live op, the
# only one that may be sent), 1 waiting behind the head, 2 out of it (dead). The item
# indexes depend on ``chain`` alone, so leasing, releasing and nacking never rewrite them.

_HEAD, _WAITING, _OUT = 0, 1, 2

# item_id has no declared type on purpose: no affinity, so 1 and "1" stay distinct ids.
# No CHECK constraints: only this module writes the table, and they cost a third of an INSERT.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS nx_queue (
        seq INTEGER PRIMARY KEY,
        op_id TEXT NOT NULL UNIQUE,
        collection TEXT NOT NULL,
        item_id NOT NULL,
        kind TEXT NOT NULL,
        priority INTEGER NOT NULL,
        payload BLOB,
        schema_version INTEGER NOT NULL,
        base_version INTEGER NOT NULL,
        hlc TEXT NOT NULL,
        state TEXT NOT NULL,
        chain INTEGER NOT NULL,
        delayed INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at REAL NOT NULL,
        leased_until REAL,
        last_error TEXT,
        error_kind TEXT,
        tag TEXT,
        lease_count INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    # Heads not backing off, in serving order: what lease() reads. Leased heads stay in it
    # (skipped until their lease ends), so leasing rewrites no index and an expired lease
    # is eligible again with no extra step.
    """CREATE INDEX IF NOT EXISTS nx_queue_eligible ON nx_queue (priority, seq)
        WHERE chain = 0 AND delayed = 0""",
    # One head per item: a plain INSERT OR IGNORE of a head is how enqueue learns, without
    # a lookup, whether the item already has a live op.
    """CREATE UNIQUE INDEX IF NOT EXISTS nx_queue_head ON nx_queue (collection, item_id)
        WHERE chain = 0""",
    # The ops waiting behind their item's head (few: coalescing keeps chains short).
    "CREATE INDEX IF NOT EXISTS nx_queue_waiting ON nx_queue (collection, item_id) WHERE chain = 1",
    "CREATE INDEX IF NOT EXISTS nx_queue_delayed ON nx_queue (next_attempt_at) WHERE delayed = 1",
    "CREATE INDEX IF NOT EXISTS nx_queue_dead ON nx_queue (seq) WHERE chain = 2",
    # Lease state lives beside the op, keyed by its seq: a lease writes these small rows
    # (a page or two per batch) instead of rewriting the ops' own rows, which hold the
    # payloads and spread over many pages. A row stays while its op lives: leased_until
    # is NULL once the op is released, nacked or dead, and lease_count keeps counting
    # (an op handed out once may have reached the server, so nothing coalesces into it).
    """CREATE TABLE IF NOT EXISTS nx_leases (
        seq INTEGER PRIMARY KEY,
        leased_until REAL,
        lease_count INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        token INTEGER
    )""",
    # Whatever removes an op (ack, discard) removes its lease state with it.
    """CREATE TRIGGER IF NOT EXISTS nx_queue_forget_lease AFTER DELETE ON nx_queue
        BEGIN DELETE FROM nx_leases WHERE seq = old.seq; END""",
    _timeline.SCHEMA,
)
# nx_leases of a file made before leases had fencing tokens gains the column on open.
_LEASE_COLUMNS = "PRAGMA table_info(nx_leases)"
_ADD_TOKEN_COLUMN = "ALTER TABLE nx_leases ADD COLUMN token INTEGER"  # noqa: S105 - SQL
_HAS_LEASE_TABLE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'nx_leases'"
# A queue made before lease state moved to nx_leases keeps it in nx_queue's own columns
# (state 'leased', leased_until, lease_count): moved over once, when nx_leases is created.
# Opened only to inspect it, the file stays as it is: an empty nx_leases of the connection
# stands in, and _COLUMNS reads the lease state where the older layout keeps it.
_NO_LEASES = (
    "CREATE TEMP TABLE IF NOT EXISTS nx_leases (seq INTEGER PRIMARY KEY, leased_until REAL, "
    "lease_count INTEGER NOT NULL, updated_at REAL NOT NULL, token INTEGER)"
)
_ADOPT_OLD_LEASES = (
    "INSERT INTO nx_leases (seq, leased_until, lease_count, updated_at) "
    "SELECT seq, CASE WHEN state = 'leased' THEN leased_until END, "
    "max(lease_count, state = 'leased'), updated_at FROM nx_queue "
    "WHERE lease_count > 0 OR state = 'leased'",
    "UPDATE nx_queue SET state = 'pending', leased_until = NULL, lease_count = 0 "
    "WHERE lease_count > 0 OR state = 'leased'",
)
_TABLE_COLUMNS = (
    "seq, op_id, collection, item_id, kind, priority, payload, schema_version, base_version, "
    "hlc, state, chain, attempts, next_attempt_at, leased_until, last_error, error_kind, tag, "
    "lease_count, created_at, updated_at"
)
_REQUIRED_COLUMNS = frozenset(c.strip() for c in _TABLE_COLUMNS.split(",")) | {"delayed"}
# An op as read (what _to_op takes): nx_queue's columns with the lease state of nx_leases.
# In nx_queue itself state is only 'pending' or 'dead', leased_until NULL, lease_count 0,
# except in a file of the older layout opened only to inspect it (nx_leases then empty).
_STATE = "CASE WHEN l.leased_until IS NULL THEN q.state ELSE 'leased' END"
_COLUMNS = (
    "q.seq, q.op_id, q.collection, q.item_id, q.kind, q.priority, q.payload, "
    "q.schema_version, q.base_version, q.hlc, " + _STATE + ", q.chain, q.attempts, "
    "q.next_attempt_at, coalesce(l.leased_until, q.leased_until), q.last_error, q.error_kind, "
    "q.tag, coalesce(l.lease_count, q.lease_count), q.created_at, "
    "max(q.updated_at, coalesce(l.updated_at, 0))"
)
_OPS = " FROM nx_queue q LEFT JOIN nx_leases l ON l.seq = q.seq "


def create_schema(database: Database, create: bool) -> None:
    """Check the file's queue tables and, with ``create``, make or upgrade them.

    Raises:
        QueueError: ``create`` is false and the database holds no sync queue.
        SchemaError: the file has an ``nx_queue`` table of another layout.
    """
    with database.reading() as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(nx_queue)")}
    if not columns and not create:
        raise QueueError(f"{database.path}: no sync queue in this database")
    missing = _REQUIRED_COLUMNS - columns
    if columns and missing:
        raise SchemaError(
            f"{database.path}: table nx_queue lacks columns {sorted(missing)}; "
            "it was not made by this version of nexus-store"
        )
    with database.reading() as conn:
        has_leases = conn.execute(_HAS_LEASE_TABLE).fetchone() is not None
    if create:
        with database.transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            if columns and not has_leases:
                for statement in _ADOPT_OLD_LEASES:
                    conn.execute(statement)
            if not any(row[1] == "token" for row in conn.execute(_LEASE_COLUMNS)):
                conn.execute(_ADD_TOKEN_COLUMN)
    elif not has_leases:
        # A queue of the older layout, only inspected: the file stays as it is, and its
        # lease state is read where that layout keeps it (see _COLUMNS).
        with database.reading() as conn:
            conn.execute(_NO_LEASES)
