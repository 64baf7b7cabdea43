"""The documentation: its examples run, it cites only files that exist, its API reference
covers every public name, and the change log's version is the package's.

The site itself is built by ``scripts/docs`` (``mkdocs build --strict``, run by CI), which
fails on a broken link or a reference to a name that does not resolve.
"""

from __future__ import annotations

import functools
import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

import nexus_store

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXPECTED = re.compile(r"print\(.*\)\s*# -> (.*)$")
# asyncio's debug mode (-X dev) notes each step over 0.1 s: on a busy machine, timing.
SLOW_STEP = re.compile(r"^Executing <.*> took \d+\.\d+ seconds$")


def load_tool(name: str) -> ModuleType:
    """A module of docs/_tools (the reference generator's pure parts)."""
    sys.path.insert(0, str(DOCS / "_tools"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(DOCS / "_tools"))


def pages() -> list[Path]:
    """The site's Markdown pages (the build helpers excepted)."""
    return sorted(p for p in DOCS.rglob("*.md") if "_tools" not in p.relative_to(DOCS).parts)


def python_blocks() -> list[tuple[str, str]]:
    """Every ``python`` block of the site: (page:line, code)."""
    found = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) == "python":
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{page.relative_to(ROOT)}:{line}", match.group(2)))
    return found


BLOCKS = python_blocks()


def test_the_guide_has_runnable_examples() -> None:
    """The guide's Python examples are found (the fence pattern is not stale)."""
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_every_python_block_of_the_guide_runs(where: str, code: str, tmp_path: Path) -> None:
    """A python block runs as written under -W error -X dev, printing what its ``# ->`` says."""
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-W", "error", "-X", "dev", script.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    stderr = "".join(
        line for line in done.stderr.splitlines(True) if not SLOW_STEP.match(line.strip())
    )
    assert done.returncode == 0, f"{where}: {done.stderr}"
    # Log lines are fine; an exception or warning ignored in a finalizer is not.
    assert "Traceback" not in stderr, f"{where}: {stderr}"
    assert "Exception ignored" not in stderr, f"{where}: {stderr}"
    expected = [m.group(1) for line in code.splitlines() if (m := EXPECTED.search(line))]
    assert done.stdout.splitlines() == expected, where


# Relative links of Markdown, and file paths named in text or code: `docs/guide/store.md`.
LINK = re.compile(r"\]\(([^)\s]+)\)")
PATH_LIKE = re.compile(
    r"(?<![\w/:.<-])((?:[\w.-]+/)+[\w.-]+\.(?:py|md|toml|txt|json|yml|yaml|cfg|ini|sh))\b"
)


def cited_files(text: str) -> tuple[set[str], set[str]]:
    """(relative link targets, path-like mentions) of a Markdown text."""
    links = {
        target.split("#", 1)[0]
        for target in LINK.findall(text)
        if not re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target)
    }
    return {link for link in links if link}, set(PATH_LIKE.findall(text))


@functools.cache
def generated_pages() -> set[Path]:
    """The API reference pages the build generates (they are not in the repository)."""
    doors = load_tool("doors")
    return {DOCS / path for path in doors.reference_pages(doors.load_package(str(ROOT)))}


@pytest.mark.parametrize(
    "document",
    [ROOT / "README.md", ROOT / "CHANGELOG.md", *pages()],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_docs_cite_only_files_in_the_repository(document: Path) -> None:
    """Every relative link, and every file path a page names, exists in this checkout."""
    links, mentions = cited_files(document.read_text(encoding="utf-8"))
    generated = generated_pages()
    missing = [
        link
        for link in sorted(links)
        if not (document.parent / link).exists() and (document.parent / link) not in generated
    ]
    missing += [
        path
        for path in sorted(mentions - links)
        if not (ROOT / path).exists() and not (document.parent / path).exists()
    ]
    assert not missing, f"{document.name} cites files that are not in the repository: {missing}"


def test_the_citation_check_sees_what_it_should() -> None:
    """The patterns find links and path mentions, and skip URLs and absolute paths."""
    links, mentions = cited_files(
        "[a](guide/x.md#part) [b](https://example.com/y.md) [c](#here) `tests/test_docs.py` "
        "see docs/guide/a.md; https://id.example/.well-known/jwks.json and /openapi.json"
    )
    assert links == {"guide/x.md"}
    assert mentions - links == {"tests/test_docs.py", "docs/guide/a.md"}


def test_the_reference_documents_every_public_name() -> None:
    """Each door's page renders every name of its __all__, or links to the door that does."""
    doors = load_tool("doors")
    package = doors.load_package(str(ROOT))
    generated = doors.reference_pages(package)
    found = doors.find_doors(package)
    for door in found:
        runtime = importlib.import_module(door.path)
        assert list(door.exports or []) == list(runtime.__all__), door.path  # griffe sees all
        page = generated[doors.page_name(door.path)]
        assert f"::: {door.path}\n" in page
        for name in runtime.__all__:
            rendered = f"::: {door.path}.{name}\n" in page
            linked = re.search(rf"\| \[`{re.escape(name)}`\]\[[\w.]+\] \|", page) is not None
            assert rendered != linked, f"{door.path}.{name}: rendered once, or linked"
    nav = generated[f"{doors.REFERENCE_DIR}/SUMMARY.md"]
    for door in found:
        assert f"({door.path}.md)" in nav


def test_every_public_package_has_a_reference_page() -> None:
    """A door is any package without a private part in its path; each has a page."""
    doors = load_tool("doors")
    found = {door.path for door in doors.find_doors(doors.load_package(str(ROOT)))}
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "nexus_store").rglob("__init__.py")
        if not any(part.startswith("_") for part in init.parent.relative_to(ROOT).parts)
    }
    assert found == on_disk - set(doors.NOT_API)
    assert {"nexus_store", "nexus_store.files", "nexus_store.dashboard"} <= found


def test_each_object_is_documented_in_one_door() -> None:
    """A name several doors export is documented once: where its module lives."""
    doors = load_tool("doors")
    home = doors.homes(doors.find_doors(doors.load_package(str(ROOT))))
    assert home["nexus_store.queue._queue.PrioritySyncQueue"] == "nexus_store.queue"
    assert home["nexus_store.sync.engine._progress.SyncSummary"] == "nexus_store.sync.engine"
    assert home["nexus_store._clock.FakeClock"] == "nexus_store.testing"
    assert home["nexus_store._exceptions.NexusStoreError"] == "nexus_store"


def changelog_versions() -> list[str]:
    """The versions of the change log's release headings, newest first."""
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    return re.findall(r"^## \[(\d+\.\d+\.\d+[^\]]*)\]", text, re.MULTILINE)


def test_the_changelog_and_the_package_agree_on_the_version() -> None:
    """The newest release heading of CHANGELOG.md is nexus_store.__version__."""
    versions = changelog_versions()
    assert versions, "CHANGELOG.md has no '## [x.y.z]' heading"
    assert versions[0] == nexus_store.__version__


def test_pyproject_takes_the_version_from_the_package() -> None:
    """The distribution's version is read from nexus_store._version, never written twice."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "nexus_store._version.__version__"}


def test_the_changelog_is_for_users() -> None:
    """Release notes name no private module: what changed for users, not internals."""
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    private = re.findall(r"nexus_store(?:\.\w+)*\._\w+", text)
    assert not private, private
