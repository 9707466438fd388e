"""The persistent store behind the service database: keys and values shaped
like the registry, in one SQLite file in the kernel's state directory.

A key is a full path (``\\Registry\\Machine\\System\\CurrentControlSet\\Services\\Beep``),
compared case-insensitively as the registry does, keeping the case it was
created with.  A value is (name, type, data) with ``data`` the bytes the
registry would hold: REG_SZ is UTF-16LE with its terminating NUL, REG_DWORD
four little-endian bytes, REG_MULTI_SZ NUL-separated strings ending in two
NULs.  ``encode``/``decode`` convert to and from Python values.

Invariant: every key's parent key exists (creating a key creates its
parents; deleting one deletes its subtree), and a value belongs to exactly one
key.  A database that is not ours, is damaged or cannot be read is reported
at open and left untouched: it is never reset.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
import time
from contextlib import contextmanager

from ringzero.nt import registry as reg

FILE_NAME = "registry.sqlite3"
FORMAT = "ringzero-registry"
VERSION = "1"

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE keys (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE COLLATE NOCASE,
    last_write INTEGER NOT NULL
);
CREATE TABLE key_values (
    key_id INTEGER NOT NULL REFERENCES keys(id) ON DELETE CASCADE,
    name TEXT NOT NULL COLLATE NOCASE,
    type INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (key_id, name)
);
"""


class StoreError(RuntimeError):
    """The service database cannot be used as it is."""


def _filetime() -> int:
    return time.time_ns() // 100 + 116444736000000000


def encode(value_type: int, value) -> bytes:
    """A Python value as the registry stores it."""
    if value_type in (reg.REG_SZ, reg.REG_EXPAND_SZ, reg.REG_LINK):
        return (str(value) + "\0").encode("utf-16-le")
    if value_type == reg.REG_MULTI_SZ:
        return "".join(str(s) + "\0" for s in value).encode("utf-16-le") + b"\0\0"
    if value_type == reg.REG_DWORD:
        return struct.pack("<I", int(value) & 0xFFFFFFFF)
    if value_type == reg.REG_DWORD_BIG_ENDIAN:
        return struct.pack(">I", int(value) & 0xFFFFFFFF)
    if value_type == reg.REG_QWORD:
        return struct.pack("<Q", int(value) & 0xFFFFFFFFFFFFFFFF)
    return bytes(value)


def decode(value_type: int, data: bytes):
    """Registry bytes as a Python value (str, list of str, int, or bytes)."""
    if value_type in (reg.REG_SZ, reg.REG_EXPAND_SZ, reg.REG_LINK):
        return bytes(data).decode("utf-16-le", "replace").split("\0", 1)[0]
    if value_type == reg.REG_MULTI_SZ:
        return [s for s in bytes(data).decode("utf-16-le", "replace").split("\0") if s]
    if value_type == reg.REG_DWORD and len(data) >= 4:
        return struct.unpack_from("<I", data)[0]
    if value_type == reg.REG_DWORD_BIG_ENDIAN and len(data) >= 4:
        return struct.unpack_from(">I", data)[0]
    if value_type == reg.REG_QWORD and len(data) >= 8:
        return struct.unpack_from("<Q", data)[0]
    return bytes(data)


def parent_of(path: str) -> str:
    return path.rsplit("\\", 1)[0]


class Store:
    """One open database.  Every method is atomic and may be called from any
    kernel thread."""

    def __init__(self, path: str, db: sqlite3.Connection):
        self.path = path
        self._db = db
        self._lock = threading.RLock()

    # -- opening ------------------------------------------------------------------

    @classmethod
    def open(cls, state_dir: str) -> Store:
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the state directory {state_dir}: {e.strerror}") from None
        path = os.path.join(state_dir, FILE_NAME)
        fresh = not os.path.exists(path) or os.path.getsize(path) == 0
        if not fresh and not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(f"the service database {path} cannot be opened for reading and writing "
                             f"(permission denied); the kernel must run as its owner")
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the service database {path}: {e}") from None
        try:
            if not fresh and not db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall():
                fresh = True     # no table at all: nothing in it to keep (a creation that was cut short)
            if fresh:
                # schema and format in one transaction: a kernel killed half-way leaves no tables
                db.executescript("BEGIN;" + _SCHEMA
                                 + f"INSERT INTO meta VALUES ('format', '{FORMAT}'), ('version', '{VERSION}');"
                                 + "COMMIT;")
            else:
                _verify(db, path)
            db.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as e:
            db.close()
            raise StoreError(_damaged(path, str(e))) from None
        except StoreError:
            db.close()
            raise
        return cls(path, db)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- keys -----------------------------------------------------------------------

    def _key_id(self, path: str) -> int | None:
        row = self._db.execute("SELECT id FROM keys WHERE path = ?", (path.rstrip("\\"),)).fetchone()
        return row[0] if row else None

    def key_exists(self, path: str) -> bool:
        with self._lock:
            return self._key_id(path) is not None

    def key_path(self, path: str) -> str | None:
        """The key's path as it was created (its case), or None."""
        with self._lock:
            row = self._db.execute("SELECT path FROM keys WHERE path = ?", (path.rstrip("\\"),)).fetchone()
            return row[0] if row else None

    def create_key(self, path: str) -> bool:
        """Create the key and any missing parents; True if it was new."""
        path = path.rstrip("\\")
        with self._lock:
            if self._key_id(path) is not None:
                return False
            parts = path.split("\\")
            for i in range(2, len(parts) + 1):
                p = "\\".join(parts[:i])
                if self._key_id(p) is None:
                    self._db.execute("INSERT INTO keys (path, last_write) VALUES (?, ?)", (p, _filetime()))
            return True

    def delete_tree(self, path: str) -> None:
        path = path.rstrip("\\")
        with self._lock:
            like = path.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "\\%"
            self._db.execute("DELETE FROM keys WHERE path = ? OR path LIKE ? ESCAPE '!'", (path, like))

    def subkeys(self, path: str) -> list[str]:
        """Names of the direct subkeys, as created, sorted case-insensitively."""
        path = path.rstrip("\\")
        with self._lock:
            like = path.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "\\%"
            rows = self._db.execute("SELECT path FROM keys WHERE path LIKE ? ESCAPE '!'", (like,)).fetchall()
        names = {p[len(path) + 1:] for (p,) in rows}
        return sorted((n for n in names if "\\" not in n), key=str.upper)

    # -- values ------------------------------------------------------------------------

    def set_value(self, path: str, name: str, value_type: int, data: bytes) -> None:
        with self._lock:
            key = self._key_id(path)
            if key is None:
                raise KeyError(path)
            self._db.execute("INSERT INTO key_values (key_id, name, type, data) VALUES (?, ?, ?, ?) "
                             "ON CONFLICT (key_id, name) DO UPDATE SET type = excluded.type, data = excluded.data",
                             (key, name, value_type, bytes(data)))
            self._db.execute("UPDATE keys SET last_write = ? WHERE id = ?", (_filetime(), key))

    def delete_value(self, path: str, name: str) -> bool:
        with self._lock:
            key = self._key_id(path)
            if key is None:
                return False
            return self._db.execute("DELETE FROM key_values WHERE key_id = ? AND name = ?",
                                    (key, name)).rowcount > 0

    def get_value(self, path: str, name: str) -> tuple[str, int, bytes] | None:
        """(name as stored, type, data), or None."""
        with self._lock:
            row = self._db.execute("SELECT v.name, v.type, v.data FROM key_values v JOIN keys k ON k.id = v.key_id "
                                   "WHERE k.path = ? AND v.name = ?", (path.rstrip("\\"), name)).fetchone()
        return (row[0], row[1], bytes(row[2])) if row else None

    def values(self, path: str) -> list[tuple[str, int, bytes]]:
        with self._lock:
            rows = self._db.execute("SELECT v.name, v.type, v.data FROM key_values v JOIN keys k ON k.id = v.key_id "
                                    "WHERE k.path = ? ORDER BY v.rowid", (path.rstrip("\\"),)).fetchall()
        return [(n, t, bytes(d)) for n, t, d in rows]

    def get(self, path: str, name: str, default=None):
        """A value decoded to Python, or `default`."""
        v = self.get_value(path, name)
        return default if v is None else decode(v[1], v[2])

    def put(self, path: str, name: str, value_type: int, value) -> None:
        self.set_value(path, name, value_type, encode(value_type, value))


def _damaged(path: str, reason: str) -> str:
    return (f"the service database {path} is damaged or is not a ringzero database ({reason}). "
            f"It has been left exactly as it is: restore it from a backup, or move it aside to start "
            f"with an empty service database")


def _verify(db: sqlite3.Connection, path: str) -> None:
    """Raise StoreError unless `db` is an intact database of our format."""
    rows = db.execute("PRAGMA quick_check").fetchall()
    if [r[0] for r in rows] != ["ok"]:
        raise StoreError(_damaged(path, "; ".join(str(r[0]) for r in rows[:3])))
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = {"meta", "keys", "key_values"} - tables
    if missing:
        raise StoreError(_damaged(path, "missing tables " + ", ".join(sorted(missing))))
    meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
    if meta.get("format") != FORMAT:
        raise StoreError(_damaged(path, f"format {meta.get('format')!r}"))
    if meta.get("version") != VERSION:
        raise StoreError(f"the service database {path} has version {meta.get('version')!r}; this kernel "
                         f"reads version {VERSION} only. It has been left as it is")
