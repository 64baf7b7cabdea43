"""The reference sync server: one server core, storage on memory, SQLite or PostgreSQL.

To embed the server in another ASGI application or process::

    core = await open_core("sqlite:///server.db", conflict_policy="lww")
    app = create_app(core, verifier=StaticTokenVerifier({"dev-token": "tenant-a"}))

``run(ServeOptions(...))`` is what ``nexus-store serve`` calls. The ASGI parts (Starlette,
uvicorn) load on first use of the names that need them.
"""

from typing import TYPE_CHECKING, Any

from ._auth import ChainVerifier, SignedTokenVerifier, StaticTokenVerifier, TokenVerifier
from ._core import ServerCore, open_core
from ._rules import ConflictPolicy, Resolver
from .storage import Storage, open_storage

if TYPE_CHECKING:  # pragma: no cover
    from ._app import create_app
    from ._jwt import JwtVerifier, issue_jwt
    from ._limits import Limits
    from ._run import ServeOptions, run

_LAZY = {
    "JwtVerifier": "._jwt",
    "Limits": "._limits",
    "ServeOptions": "._run",
    "create_app": "._app",
    "issue_jwt": "._jwt",
    "run": "._run",
}

__all__ = [
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
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    return getattr(importlib.import_module(module, __name__), name)
