"""The public API: exactly these names are exported, each one importable."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

EXPORTED = {
    "nexus_store": [
        "AuthError",
        "BackgroundSyncConfig",
        "BackgroundSyncService",
        "BackgroundSyncServiceFactory",
        "BackgroundSyncStatus",
        "BackgroundSyncTask",
        "BlobNotFoundError",
        "ChangeKind",
        "ChangeOrigin",
        "ChangeStream",
        "Clock",
        "CodecError",
        "CorruptDatabaseError",
        "DatabaseError",
        "ErrorKind",
        "FileTransferError",
        "ImmediateRunIneligibleError",
        "InvalidWorkRequestError",
        "ItemValidationError",
        "LeaseBatch",
        "LifecycleError",
        "LocalChange",
        "MigrationError",
        "Migrations",
        "NetworkError",
        "NexusStore",
        "NexusStoreError",
        "NotPermittedError",
        "OpKind",
        "OpNotFoundError",
        "OpState",
        "PayloadTooLargeError",
        "PermanentError",
        "PrioritySyncQueue",
        "ProtocolError",
        "QuarantinedChange",
        "QueueError",
        "QueueStats",
        "QueuedOp",
        "RateLimitedError",
        "RemoteError",
        "RetryBackoff",
        "RetryableError",
        "ScheduleResult",
        "SchedulingError",
        "SchemaError",
        "ServerUnavailableError",
        "Settled",
        "SourceChangedError",
        "StoreClosedError",
        "StoreError",
        "SyncCancelledError",
        "SyncError",
        "SyncPriority",
        "SystemClock",
        "TooManyPendingTaskRequestsError",
        "UnavailableError",
        "UnknownWorkError",
        "WorkDataTooLargeError",
        "__version__",
        "set_gc_pause",
    ],
    "nexus_store.backends": [
        "Change",
        "Changes",
        "HttpBackend",
        "MemoryBackend",
        "OpResult",
        "OpStatus",
        "PostgresBackend",
        "PushResult",
        "RefreshingTokenProvider",
        "RemoteBackend",
        "RemoteOp",
    ],
    "nexus_store.bench": [
        "BENCHMARKS",
        "main",
        "missing_packages",
        "run_benchmark",
        "run_benchmarks",
    ],
    "nexus_store.dashboard": [],
    "nexus_store.files": [
        "Attachment",
        "FilePolicy",
        "FileTransfers",
        "FolderWatch",
        "Prefetch",
        "TransferConstraints",
        "Upload",
        "UploadState",
    ],
    "nexus_store.queue": [
        "LeaseBatch",
        "OpKind",
        "OpState",
        "PrioritySyncQueue",
        "QueueStats",
        "QueuedOp",
        "Settled",
    ],
    "nexus_store.server": [
        "ChainVerifier",
        "ConflictPolicy",
        "JwtVerifier",
        "Limits",
        "Resolver",
        "ServeOptions",
        "ServerCore",
        "SignedTokenVerifier",
        "StaticTokenVerifier",
        "Storage",
        "TokenVerifier",
        "create_app",
        "issue_jwt",
        "open_core",
        "open_storage",
        "run",
    ],
    "nexus_store.server.blobs": [
        "BlobInfo",
        "BlobLimits",
        "BlobRefusedError",
        "BlobService",
        "BlobStorage",
        "ChunkRejectedError",
        "FileBlobStorage",
        "GarbageReport",
        "MemoryBlobStorage",
        "S3BlobStorage",
        "UploadInfo",
        "blob_routes",
        "collect_unreferenced_blobs",
        "default_blob_url",
        "in_process_blobs",
        "open_blob_storage",
        "tenant_key",
    ],
    "nexus_store.server.storage": [
        "MemoryStorage",
        "PostgresStorage",
        "SqliteStorage",
        "Storage",
        "open_storage",
    ],
    "nexus_store.sync": [
        "AdapterKind",
        "BGTaskSyncService",
        "BackgroundSyncConfig",
        "BackgroundSyncService",
        "BackgroundSyncServiceFactory",
        "BackgroundSyncStatus",
        "BackgroundSyncTask",
        "BackgroundSyncThread",
        "ChangeSource",
        "CommitWatcher",
        "DeviceState",
        "DeviceStateProvider",
        "NetworkType",
        "NoopSyncService",
        "PriorityProgress",
        "PrioritySummary",
        "ScheduleResult",
        "ServiceState",
        "StoreSyncTask",
        "SyncEvent",
        "SyncPhase",
        "SyncProgress",
        "SyncStopReason",
        "SyncSummary",
        "SyncWorker",
        "SystemDevice",
        "TaskContext",
        "TaskOutcome",
        "TaskResult",
        "TaskRun",
        "WorkManagerSyncService",
        "WorkerLease",
        "choose_adapter",
    ],
    "nexus_store.sync.bgtask": [
        "AppRefreshRequest",
        "AppUsage",
        "BGTaskHandle",
        "BGTaskHandler",
        "BGTaskRequest",
        "BGTaskScheduler",
        "BGTaskSyncService",
        "ContinuedProcessingRequest",
        "DeterministicLaunchPolicy",
        "LaunchContext",
        "LaunchDecision",
        "LaunchPolicy",
        "LaunchRecord",
        "OpportunisticLaunchPolicy",
        "ProcessingRequest",
        "RequestKind",
        "SubmissionStrategy",
        "handler_for_task",
    ],
    "nexus_store.sync.device": [
        "DeviceState",
        "DeviceStateProvider",
        "NetworkType",
        "SimulatedDevice",
        "SystemDevice",
    ],
    "nexus_store.sync.engine": [
        "EngineConfig",
        "PriorityProgress",
        "PrioritySummary",
        "RawCollection",
        "SyncEvent",
        "SyncPhase",
        "SyncProgress",
        "SyncRunner",
        "SyncStopReason",
        "SyncStreams",
        "SyncSummary",
        "SyncTarget",
        "TransferKind",
        "TransferProgress",
        "TransferState",
        "discover_collections",
    ],
    "nexus_store.sync.workmanager": [
        "BackoffPolicy",
        "Constraints",
        "DispatchOrder",
        "ExistingPeriodicWorkPolicy",
        "ExistingWorkPolicy",
        "ManagerState",
        "OneTimeWorkRequestBuilder",
        "OutOfQuotaPolicy",
        "PeriodicWorkRequestBuilder",
        "RunOutcome",
        "RunRecord",
        "SchedulingPolicy",
        "StopReason",
        "UpdateResult",
        "WorkInfo",
        "WorkManager",
        "WorkManagerSyncService",
        "WorkQuery",
        "WorkRequest",
        "WorkState",
        "WorkWatch",
    ],
    "nexus_store.testing": [
        "BackendContract",
        "BackendFactory",
        "BlobStorageContract",
        "FakeClock",
        "Fault",
        "FaultKind",
        "FaultMode",
        "FaultProxy",
        "FaultyBackend",
        "InjectedFault",
        "MultiTenantBackendContract",
        "OpWriter",
        "ProxyRecord",
        "ProxyStats",
        "RawAnswer",
        "ScriptedRequest",
        "ScriptedServer",
        "ServerProcess",
        "ServerStartError",
        "SimulatedDevice",
        "SkewedClock",
        "TemporaryPostgres",
        "WorkDriver",
        "http_answer",
        "pull_all",
        "shared_postgres",
    ],
}
# Names a door no longer exports, and the door of the room that keeps them.
MOVED = {
    "nexus_store": {"FakeClock": "nexus_store.testing"},
    "nexus_store.sync": {
        "AppRefreshRequest": "nexus_store.sync.bgtask",
        "AppUsage": "nexus_store.sync.bgtask",
        "BGTaskHandle": "nexus_store.sync.bgtask",
        "BGTaskHandler": "nexus_store.sync.bgtask",
        "BGTaskRequest": "nexus_store.sync.bgtask",
        "BGTaskScheduler": "nexus_store.sync.bgtask",
        "BackoffPolicy": "nexus_store.sync.workmanager",
        "Constraints": "nexus_store.sync.workmanager",
        "ContinuedProcessingRequest": "nexus_store.sync.bgtask",
        "DeterministicLaunchPolicy": "nexus_store.sync.bgtask",
        "DispatchOrder": "nexus_store.sync.workmanager",
        "EngineConfig": "nexus_store.sync.engine",
        "ExistingPeriodicWorkPolicy": "nexus_store.sync.workmanager",
        "ExistingWorkPolicy": "nexus_store.sync.workmanager",
        "LaunchContext": "nexus_store.sync.bgtask",
        "LaunchDecision": "nexus_store.sync.bgtask",
        "LaunchPolicy": "nexus_store.sync.bgtask",
        "LaunchRecord": "nexus_store.sync.bgtask",
        "ManagerState": "nexus_store.sync.workmanager",
        "OneTimeWorkRequestBuilder": "nexus_store.sync.workmanager",
        "OpportunisticLaunchPolicy": "nexus_store.sync.bgtask",
        "OutOfQuotaPolicy": "nexus_store.sync.workmanager",
        "PeriodicWorkRequestBuilder": "nexus_store.sync.workmanager",
        "ProcessingRequest": "nexus_store.sync.bgtask",
        "RawCollection": "nexus_store.sync.engine",
        "RequestKind": "nexus_store.sync.bgtask",
        "RunOutcome": "nexus_store.sync.workmanager",
        "RunRecord": "nexus_store.sync.workmanager",
        "SchedulingPolicy": "nexus_store.sync.workmanager",
        "SimulatedDevice": "nexus_store.sync.device",
        "StopReason": "nexus_store.sync.workmanager",
        "SubmissionStrategy": "nexus_store.sync.bgtask",
        "SyncRunner": "nexus_store.sync.engine",
        "SyncStreams": "nexus_store.sync.engine",
        "SyncTarget": "nexus_store.sync.engine",
        "UpdateResult": "nexus_store.sync.workmanager",
        "WorkInfo": "nexus_store.sync.workmanager",
        "WorkManager": "nexus_store.sync.workmanager",
        "WorkQuery": "nexus_store.sync.workmanager",
        "WorkRequest": "nexus_store.sync.workmanager",
        "WorkState": "nexus_store.sync.workmanager",
        "WorkWatch": "nexus_store.sync.workmanager",
        "discover_collections": "nexus_store.sync.engine",
        "handler_for_task": "nexus_store.sync.bgtask",
    },
}


@pytest.mark.parametrize("module_name", sorted(EXPORTED))
def test_exported_members(module_name: str) -> None:
    """__all__ is sorted, lists exactly the curated names, and each one resolves."""
    module = importlib.import_module(module_name)
    assert list(module.__all__) == sorted(module.__all__)
    assert list(module.__all__) == EXPORTED[module_name]
    for name in module.__all__:
        assert getattr(module, name) is not None


@pytest.mark.parametrize("door", sorted(MOVED))
def test_names_left_out_of_a_door_stay_in_their_rooms_door(door: str) -> None:
    """A name a door no longer exports is exported by the door of the room that keeps it."""
    module = importlib.import_module(door)
    for name, room_door in MOVED[door].items():
        assert name not in module.__all__
        assert name in importlib.import_module(room_door).__all__


def test_import_stays_light() -> None:
    """import nexus_store loads no server, database driver, file watcher or sync engine."""
    code = (
        "import sys, nexus_store;"
        "heavy = ['psycopg', 'starlette', 'uvicorn', 'watchfiles', 'jwt',"
        " 'nexus_store.sync.engine._runner'];"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_server_loads_asgi_parts_on_first_use() -> None:
    """import nexus_store.server stays free of Starlette and uvicorn until create_app is used."""
    code = (
        "import sys, nexus_store.server as s;"
        "before = [m for m in ('starlette', 'uvicorn') if m in sys.modules];"
        "s.create_app; s.run;"
        "print(before, [m for m in ('starlette', 'uvicorn') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] ['starlette', 'uvicorn']"


def test_version_is_exported() -> None:
    """The package exposes its version string."""
    nexus_store = importlib.import_module("nexus_store")
    assert isinstance(nexus_store.__version__, str)
    assert nexus_store.__version__.count(".") >= 2
