"""The reference sync server: one server core, storage on memory, SQLite or PostgreSQL."""

from ._core import ConflictPolicy, Resolver, ServerCore, open_core
from ._storage import Storage, open_storage

__all__ = ["ConflictPolicy", "Resolver", "ServerCore", "Storage", "open_core", "open_storage"]
