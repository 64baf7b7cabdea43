"""The contract suite as a third party runs it: it passes a good backend, catches bad ones."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

THIRD_PARTY_TESTS = '''
import dataclasses, uuid
import pytest
from nexus_store.backends import MemoryBackend, RemoteBackend
from nexus_store.server._core import ServerCore
from nexus_store.server.storage._memory import MemoryStorage
from nexus_store.testing import MultiTenantBackendContract


class ForgetfulBackend(MemoryBackend):
    """Applies every push as new (forgets op ids): replays take effect twice."""

    async def push(self, ops):
        fresh = [op.model_copy(update={"op_id": uuid.uuid4().hex}) for op in ops]
        result = await super().push(fresh)
        return result.model_copy(
            update={"results": [r.model_copy(update={"op_id": o.op_id})
                                for r, o in zip(result.results, ops)]}
        )


class UnfilteredBackend(MemoryBackend):
    """Ignores the collections filter."""

    async def pull(self, cursor=0, limit=500, *, collections=None):
        return await super().pull(cursor, limit)


@pytest.fixture
def anyio_backend():
    return "asyncio"


def factory(kind):
    core = ServerCore(MemoryStorage())
    return lambda tenant: kind(core, tenant=tenant)


class TestGood(MultiTenantBackendContract):
    @pytest.fixture
    def backend_factory(self):
        return factory(MemoryBackend)


class TestForgetful(MultiTenantBackendContract):
    @pytest.fixture
    def backend_factory(self):
        return factory(ForgetfulBackend)


class TestUnfiltered(MultiTenantBackendContract):
    @pytest.fixture
    def backend_factory(self):
        return factory(UnfilteredBackend)
'''


def test_contract_suite_runs_standalone_and_catches_broken_backends(tmp_path: Path) -> None:
    """Outside this repository's config, the suite passes MemoryBackend and fails the
    checks that a forgetful (no idempotency) or unfiltered backend breaks."""
    (tmp_path / "test_third_party.py").write_text(THIRD_PARTY_TESTS)
    report = tmp_path / "report.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"],
        cwd=tmp_path,
        capture_output=True,
        check=False,
        timeout=300,
    )
    outcome: dict[str, set[str]] = {
        "TestGood": set(),
        "TestForgetful": set(),
        "TestUnfiltered": set(),
    }
    passed: dict[str, set[str]] = {name: set() for name in outcome}
    for case in ET.parse(report).getroot().iter("testcase"):
        cls = case.get("classname", "").rsplit(".", 1)[-1]
        failed = case.find("failure") is not None or case.find("error") is not None
        name = case.get("name", "").split("[", 1)[0]
        (outcome if failed else passed)[cls].add(name)
    assert outcome["TestGood"] == set()
    assert len(passed["TestGood"]) >= 17
    assert {
        "test_replayed_batch_has_one_effect",
        "test_concurrent_replays_have_one_effect",
        "test_reused_op_id_with_other_payload_is_rejected",
        "test_op_ids_are_per_tenant",
    } <= outcome["TestForgetful"]
    assert outcome["TestUnfiltered"] == {"test_collections_filter_limits_pull"}
