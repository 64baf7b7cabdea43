"""A SQLite VFS that can tell what a power cut would leave on disk (for the power-loss tests).

The store talks to SQLite through Python's ``sqlite3`` module, which uses the system's
``libsqlite3``. This module registers a VFS named ``powercut`` in that very library
(through ``ctypes``), wrapping the default VFS: every write and truncate of a file is
remembered until the file is synced. :meth:`PowerCut.cut` then computes each file as a power
cut at that moment could leave it: by default as it was at its last sync (every unsynced
write lost), or with a random subset of the unsynced writes having reached the disk (as a
disk that reorders writes might). The live files are never touched: the images go to
another folder, to be opened as the next boot would.

Not modelled (say so where it matters): deletes and renames (a file deleted but not synced
in its directory stays deleted), directory syncs, torn sectors within one write, and the
``-shm`` file (memory-mapped; SQLite rebuilds it from the WAL after a reboot, which is why
the images leave it out). APSW's VFS layer does the same, but APSW links its own copy of
SQLite, which the store's connections do not use.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import random
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PowerCut", "powercut_available"]

_OK = 0
_IOERR = 10
_SHORT_READ = 522  # SQLITE_IOERR_SHORT_READ: the rest of the buffer is zero-filled

c_int, c_int64, c_void_p, c_char_p = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_char_p
_CB = ctypes.CFUNCTYPE

_xClose = _CB(c_int, c_void_p)
_xRead = _CB(c_int, c_void_p, c_void_p, c_int, c_int64)
_xWrite = _CB(c_int, c_void_p, c_void_p, c_int, c_int64)
_xTruncate = _CB(c_int, c_void_p, c_int64)
_xSync = _CB(c_int, c_void_p, c_int)
_xFileSize = _CB(c_int, c_void_p, ctypes.POINTER(c_int64))
_xLock = _CB(c_int, c_void_p, c_int)
_xCheckReservedLock = _CB(c_int, c_void_p, ctypes.POINTER(c_int))
_xFileControl = _CB(c_int, c_void_p, c_int, c_void_p)
_xSectorSize = _CB(c_int, c_void_p)
_xShmMap = _CB(c_int, c_void_p, c_int, c_int, c_int, ctypes.POINTER(c_void_p))
_xShmLock = _CB(c_int, c_void_p, c_int, c_int, c_int)
_xShmBarrier = _CB(None, c_void_p)
_xShmUnmap = _CB(c_int, c_void_p, c_int)
_xFetch = _CB(c_int, c_void_p, c_int64, c_int, ctypes.POINTER(c_void_p))
_xUnfetch = _CB(c_int, c_void_p, c_int64, c_void_p)


class _IoMethods(ctypes.Structure):
    _fields_ = [
        ("iVersion", c_int),
        ("xClose", _xClose),
        ("xRead", _xRead),
        ("xWrite", _xWrite),
        ("xTruncate", _xTruncate),
        ("xSync", _xSync),
        ("xFileSize", _xFileSize),
        ("xLock", _xLock),
        ("xUnlock", _xLock),
        ("xCheckReservedLock", _xCheckReservedLock),
        ("xFileControl", _xFileControl),
        ("xSectorSize", _xSectorSize),
        ("xDeviceCharacteristics", _xSectorSize),
        ("xShmMap", _xShmMap),
        ("xShmLock", _xShmLock),
        ("xShmBarrier", _xShmBarrier),
        ("xShmUnmap", _xShmUnmap),
        ("xFetch", _xFetch),
        ("xUnfetch", _xUnfetch),
    ]


class _Vfs(ctypes.Structure):
    pass


# The name is passed on as the pointer SQLite gave (the default VFS keeps it, and URI
# parameters follow it in memory), so it is an address here.
_xOpen = _CB(c_int, ctypes.POINTER(_Vfs), c_void_p, c_void_p, c_int, ctypes.POINTER(c_int))
_Vfs._fields_ = [
    ("iVersion", c_int),
    ("szOsFile", c_int),
    ("mxPathname", c_int),
    ("pNext", ctypes.POINTER(_Vfs)),
    ("zName", c_char_p),
    ("pAppData", c_void_p),
    ("xOpen", _xOpen),
    ("xDelete", c_void_p),
    ("xAccess", c_void_p),
    ("xFullPathname", c_void_p),
    ("xDlOpen", c_void_p),
    ("xDlError", c_void_p),
    ("xDlSym", c_void_p),
    ("xDlClose", c_void_p),
    ("xRandomness", c_void_p),
    ("xSleep", c_void_p),
    ("xCurrentTime", c_void_p),
    ("xGetLastError", c_void_p),
    ("xCurrentTimeInt64", c_void_p),
    ("xSetSystemCall", c_void_p),
    ("xGetSystemCall", c_void_p),
    ("xNextSystemCall", c_void_p),
]

_HEADER = 8  # our sqlite3_file: a pointer to our methods, then the wrapped file


@dataclass
class _Write:
    offset: int
    data: bytes
    """What was written (None-length for a truncate)."""
    old: bytes
    """What the range held before."""
    old_size: int
    truncate: bool = False


@dataclass
class _File:
    name: str
    inner: int
    """Address of the wrapped file."""
    unsynced: list[_Write] = field(default_factory=list)


def _library() -> Any:
    name = ctypes.util.find_library("sqlite3") or "libsqlite3.so.0"
    return ctypes.CDLL(name)


def powercut_available() -> str | None:
    """``None`` if the shim can wrap the library the ``sqlite3`` module uses, else why not."""
    try:
        lib = _library()
    except OSError as exc:
        return f"no libsqlite3 to load: {exc}"
    lib.sqlite3_libversion.restype = c_char_p
    version = lib.sqlite3_libversion().decode()
    if version != sqlite3.sqlite_version:
        return f"sqlite3 uses SQLite {sqlite3.sqlite_version}, the library found is {version}"
    return None


class PowerCut:
    """The ``powercut`` VFS (registered once per process; :meth:`reset` between tests).

    ``on_write``, when set, is called before each write with the running count of writes:
    where a test takes its cuts.
    """

    _instance: PowerCut | None = None

    def __init__(self) -> None:
        self._lib = _library()
        self._lib.sqlite3_vfs_find.restype = ctypes.POINTER(_Vfs)
        self._lib.sqlite3_vfs_find.argtypes = [c_char_p]
        self._lib.sqlite3_vfs_register.argtypes = [ctypes.POINTER(_Vfs), c_int]
        self._base = self._lib.sqlite3_vfs_find(None)
        base = self._base.contents
        self._files: dict[int, _File] = {}
        self._lock = threading.RLock()
        self.writes = 0
        self.on_write: Callable[[int], None] | None = None
        self._methods = _IoMethods(
            2,
            _xClose(self._close),
            _xRead(self._read),
            _xWrite(self._write),
            _xTruncate(self._truncate),
            _xSync(self._sync),
            _xFileSize(self._size),
            _xLock(lambda f, n: self._inner(f).xLock(self._addr(f), n)),
            _xLock(lambda f, n: self._inner(f).xUnlock(self._addr(f), n)),
            _xCheckReservedLock(
                lambda f, out: self._inner(f).xCheckReservedLock(self._addr(f), out)
            ),
            _xFileControl(lambda f, op, arg: self._inner(f).xFileControl(self._addr(f), op, arg)),
            _xSectorSize(lambda f: self._inner(f).xSectorSize(self._addr(f))),
            _xSectorSize(lambda f: self._inner(f).xDeviceCharacteristics(self._addr(f))),
            _xShmMap(lambda f, p, s, e, out: self._inner(f).xShmMap(self._addr(f), p, s, e, out)),
            _xShmLock(lambda f, o, n, fl: self._inner(f).xShmLock(self._addr(f), o, n, fl)),
            _xShmBarrier(lambda f: self._inner(f).xShmBarrier(self._addr(f))),
            _xShmUnmap(lambda f, d: self._inner(f).xShmUnmap(self._addr(f), d)),
            _xFetch(),
            _xUnfetch(),
        )
        self._open_cb = _xOpen(self._open)
        self._vfs = _Vfs()
        ctypes.pointer(self._vfs)[0] = base  # copy every field of the default VFS
        self._vfs.szOsFile = base.szOsFile + _HEADER
        self._vfs.zName = b"powercut"
        self._vfs.pNext = ctypes.POINTER(_Vfs)()
        self._vfs.xOpen = self._open_cb
        if self._lib.sqlite3_vfs_register(ctypes.byref(self._vfs), 0) != _OK:
            raise RuntimeError("could not register the powercut VFS")

    @classmethod
    def get(cls) -> PowerCut:
        """The process's shim (registered on first use)."""
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def reset(self) -> None:
        """Forget the unsynced writes of closed files and the write count."""
        with self._lock:
            self.writes = 0
            self.on_write = None

    # -- plumbing ------------------------------------------------------------------------------

    @staticmethod
    def _addr(f: int) -> int:
        return f + _HEADER

    def _inner(self, f: int) -> _IoMethods:
        methods = ctypes.cast(
            ctypes.c_void_p.from_address(f + _HEADER).value, ctypes.POINTER(_IoMethods)
        )
        return methods.contents

    def _open(self, _vfs: Any, name: int | None, f: int, flags: int, out: Any) -> int:
        try:
            ctypes.c_void_p.from_address(f).value = None
            rc: int = self._base.contents.xOpen(self._base, name, f + _HEADER, flags, out)
            if rc == _OK and ctypes.c_void_p.from_address(f + _HEADER).value:
                ctypes.c_void_p.from_address(f).value = ctypes.addressof(self._methods)
                path = ctypes.string_at(name).decode() if name else ""
                with self._lock:
                    self._files[f] = _File(path, f + _HEADER)
        except Exception:
            return _IOERR
        return rc

    def _close(self, f: int) -> int:
        with self._lock:
            self._files.pop(f, None)
        rc: int = self._inner(f).xClose(self._addr(f))
        return rc

    def _read(self, f: int, buf: int, amount: int, offset: int) -> int:
        rc: int = self._inner(f).xRead(self._addr(f), buf, amount, offset)
        return rc

    def _size(self, f: int, out: Any) -> int:
        rc: int = self._inner(f).xFileSize(self._addr(f), out)
        return rc

    def _current(self, f: int) -> bytes:
        size = c_int64()
        self._inner(f).xFileSize(self._addr(f), ctypes.byref(size))
        return self._range(f, 0, size.value)

    def _range(self, f: int, offset: int, amount: int) -> bytes:
        if amount <= 0:
            return b""
        buffer = ctypes.create_string_buffer(amount)
        self._inner(f).xRead(self._addr(f), buffer, amount, offset)  # short reads zero-fill
        return buffer.raw

    def _write(self, f: int, buf: int, amount: int, offset: int) -> int:
        try:
            with self._lock:
                self.writes += 1
                if self.on_write is not None:
                    self.on_write(self.writes)
                entry = self._files.get(f)
                if entry is not None:
                    size = c_int64()
                    self._inner(f).xFileSize(self._addr(f), ctypes.byref(size))
                    entry.unsynced.append(
                        _Write(
                            offset,
                            ctypes.string_at(buf, amount),
                            self._range(f, offset, min(amount, size.value - offset)),
                            size.value,
                        )
                    )
        except Exception:
            return _IOERR
        rc: int = self._inner(f).xWrite(self._addr(f), buf, amount, offset)
        return rc

    def _truncate(self, f: int, size: int) -> int:
        try:
            with self._lock:
                entry = self._files.get(f)
                if entry is not None:
                    old_size = c_int64()
                    self._inner(f).xFileSize(self._addr(f), ctypes.byref(old_size))
                    tail = self._range(f, size, old_size.value - size)
                    entry.unsynced.append(_Write(size, b"", tail, old_size.value, truncate=True))
        except Exception:
            return _IOERR
        rc: int = self._inner(f).xTruncate(self._addr(f), size)
        return rc

    def _sync(self, f: int, flags: int) -> int:
        rc: int = self._inner(f).xSync(self._addr(f), flags)
        if rc == _OK:
            with self._lock:
                entry = self._files.get(f)
                if entry is not None:
                    entry.unsynced.clear()
        return rc

    # -- the cut -------------------------------------------------------------------------------

    def cut(self, folder: Path, rng: random.Random | None = None) -> list[str]:
        """Write what a power cut now would leave of every open file into ``folder``.

        Args:
            folder: where the images go (same file names).
            rng: with a generator, each unsynced write independently reached the disk or
                not; without, none did.

        Returns:
            The names of the files written.
        """
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        with self._lock:
            for f, entry in self._files.items():
                if not entry.name or entry.name.endswith("-shm"):
                    continue
                image = bytearray(self._current(f))
                for write in reversed(entry.unsynced):  # back to the last synced state
                    if write.truncate:
                        del image[write.offset :]
                        image.extend(write.old)
                    else:
                        image[write.offset : write.offset + len(write.old)] = write.old
                        del image[write.old_size :]
                if rng is not None:
                    for write in entry.unsynced:  # then the writes that made it after all
                        if rng.random() < 0.5:
                            continue
                        if write.truncate:
                            del image[write.offset :]
                        else:
                            if len(image) < write.offset:
                                image.extend(bytes(write.offset - len(image)))
                            image[write.offset : write.offset + len(write.data)] = write.data
                name = Path(entry.name).name
                (folder / name).write_bytes(bytes(image))
                written.append(name)
        return written
