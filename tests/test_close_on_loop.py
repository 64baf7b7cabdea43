"""Closing a forgotten resource from a finalizer: the garbage collector may run it in a
context that carries anyio's "asyncio is running here" marker with no loop running (seen
in a test run: ``anyio.run`` then refused to start, and the close raised in the
finalizer). The close still happens, on the shared loop. (anyio reads the marker through
sniffio, which trio, a test dependency, brings.)"""

from __future__ import annotations

import contextvars

import sniffio

from nexus_store._loop import close_on_bound_loop


def test_a_close_in_a_context_marked_asyncio_without_a_loop_still_runs() -> None:
    closed: list[str] = []

    async def aclose() -> None:
        closed.append("closed")

    def in_marked_context() -> None:
        sniffio.current_async_library_cvar.set("asyncio")
        close_on_bound_loop(aclose, None, what="a backend", timeout=5)

    contextvars.copy_context().run(in_marked_context)
    assert closed == ["closed"]


def test_a_close_with_no_loop_and_no_marker_runs_here() -> None:
    closed: list[str] = []

    async def aclose() -> None:
        closed.append(sniffio.current_async_library())

    close_on_bound_loop(aclose, None, what="a backend")
    assert closed == ["asyncio"]
