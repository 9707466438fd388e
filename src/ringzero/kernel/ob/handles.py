"""Per-process handle tables.

A handle is a small multiple of four, like NT's, meaningful only in the table
that issued it.  Values are never reused while the table lives, so a stale
handle can never reach someone else's object.  Each entry holds one pointer
reference and one handle count on its object plus the access granted at open.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ringzero.kernel.ob import object as ob
from ringzero.nt import status as st


class HandleError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class HandleEntry:
    obj: ob.ObjectHeader
    access: int
    inherit: bool = False


# What an open handle costs this kernel, charged to its process's quota while
# it is open, as NT charges an object's pool quota to the process that opens
# it: about 0.9 KiB with a file object (the kernel's RSS over 20 000 handles).
HANDLE_CHARGE = 1024


class HandleTable:
    """`charge(n) -> bool` charges n bytes to the owner's quota (negative: gives
    them back; the owner decides who is exempt)."""

    def __init__(self, charge, limit: int = 1 << 24):
        self.charge = charge
        self._entries: dict[int, HandleEntry] = {}
        self.lookup = self._entries.get      # handle -> its entry, or None (get() without the exception)
        self._next = 4
        self._lock = threading.Lock()
        self.limit = limit
        self.closed = False

    def __len__(self) -> int:
        return len(self._entries)

    def insert(self, obj: ob.ObjectHeader, access: int, inherit: bool = False) -> int:
        """Add a handle; takes a new reference and a handle count on `obj`."""
        with self._lock:
            if self.closed:
                raise HandleError(st.STATUS_PROCESS_IS_TERMINATING, "the process is exiting")
            if len(self._entries) >= self.limit:
                raise HandleError(st.STATUS_INSUFFICIENT_RESOURCES, f"handle quota of {self.limit} reached")
            if not self.charge(HANDLE_CHARGE):
                raise HandleError(st.STATUS_QUOTA_EXCEEDED, "the process's quota is used up")
            try:
                ob.reference(obj)
            except BaseException:
                self.charge(-HANDLE_CHARGE)
                raise
            h = self._next
            self._next += 4
            with ob._lock:
                obj.handle_count += 1
            self._entries[h] = HandleEntry(obj, access, inherit)
            return h

    def get(self, handle: int) -> HandleEntry:
        e = self._entries.get(handle)
        if e is None:
            raise HandleError(st.STATUS_INVALID_HANDLE, f"{handle:#x} is not an open handle of this process")
        return e

    def remove(self, handle: int) -> HandleEntry:
        with self._lock:
            e = self._entries.pop(handle, None)
        if e is None:
            raise HandleError(st.STATUS_INVALID_HANDLE, f"{handle:#x} is not an open handle of this process")
        self.charge(-HANDLE_CHARGE)
        return e

    def drain(self) -> list[tuple[int, HandleEntry]]:
        """Close the table to new handles and take every entry out, newest first."""
        with self._lock:
            self.closed = True
            items = sorted(self._entries.items(), reverse=True)
            self._entries.clear()
        if items:
            self.charge(-HANDLE_CHARGE * len(items))
        return items

    def items(self) -> list[tuple[int, HandleEntry]]:
        with self._lock:
            return sorted(self._entries.items())


def release_entry(entry: HandleEntry, process) -> None:
    """What closing one handle does to its object: the last handle's routine,
    the temporary name, then the handle's reference."""
    obj = entry.obj
    with ob._lock:
        obj.handle_count -= 1
        last = obj.handle_count == 0
    if last:
        try:
            obj.on_last_handle(process)
        finally:
            if not obj.permanent:
                ob.remove_name(obj)
    ob.dereference(obj)
