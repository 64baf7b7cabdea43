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
        "ChangeKind",
        "ChangeOrigin",
        "ChangeStream",
        "Clock",
        "CodecError",
        "CorruptDatabaseError",
        "DatabaseError",
        "ErrorKind",
        "FakeClock",
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
    "nexus_store.sync": [
        "AdapterKind",
        "AppRefreshRequest",
        "AppUsage",
        "BGTaskHandle",
        "BGTaskHandler",
        "BGTaskRequest",
        "BGTaskScheduler",
        "BGTaskSyncService",
        "BackgroundSyncConfig",
        "BackgroundSyncService",
        "BackgroundSyncServiceFactory",
        "BackgroundSyncStatus",
        "BackgroundSyncTask",
        "BackgroundSyncThread",
        "BackoffPolicy",
        "ChangeSource",
        "CommitWatcher",
        "Constraints",
        "ContinuedProcessingRequest",
        "DeterministicLaunchPolicy",
        "DeviceState",
        "DeviceStateProvider",
        "DispatchOrder",
        "EngineConfig",
        "ExistingPeriodicWorkPolicy",
        "ExistingWorkPolicy",
        "LaunchContext",
        "LaunchDecision",
        "LaunchPolicy",
        "LaunchRecord",
        "ManagerState",
        "NetworkType",
        "NoopSyncService",
        "OneTimeWorkRequestBuilder",
        "OpportunisticLaunchPolicy",
        "OutOfQuotaPolicy",
        "PeriodicWorkRequestBuilder",
        "PriorityProgress",
        "PrioritySummary",
        "ProcessingRequest",
        "RawCollection",
        "RequestKind",
        "RunOutcome",
        "RunRecord",
        "ScheduleResult",
        "SchedulingPolicy",
        "ServiceState",
        "SimulatedDevice",
        "StopReason",
        "StoreSyncTask",
        "SubmissionStrategy",
        "SyncEvent",
        "SyncPhase",
        "SyncProgress",
        "SyncRunner",
        "SyncStopReason",
        "SyncStreams",
        "SyncSummary",
        "SyncTarget",
        "SyncWorker",
        "SystemDevice",
        "TaskContext",
        "TaskOutcome",
        "TaskResult",
        "TaskRun",
        "UpdateResult",
        "WorkInfo",
        "WorkManager",
        "WorkManagerSyncService",
        "WorkQuery",
        "WorkRequest",
        "WorkState",
        "WorkWatch",
        "WorkerLease",
        "choose_adapter",
        "discover_collections",
        "handler_for_task",
    ],
    "nexus_store.testing": [
        "BackendContract",
        "BackendFactory",
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


@pytest.mark.parametrize("module_name", sorted(EXPORTED))
def test_exported_members(module_name: str) -> None:
    """__all__ is sorted, lists exactly the curated names, and each one resolves."""
    module = importlib.import_module(module_name)
    assert list(module.__all__) == sorted(module.__all__)
    assert list(module.__all__) == EXPORTED[module_name]
    for name in module.__all__:
        assert getattr(module, name) is not None


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
