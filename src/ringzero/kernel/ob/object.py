"""Object headers: names, reference counts and the delete routine.

Invariant: an object stays alive while `pointer_count > 0`; every handle holds
one pointer reference (and one `handle_count`).  When `handle_count` falls to
zero the type's `on_last_handle` runs (IRP_MJ_CLEANUP for a file object) and a
temporary named object leaves the namespace; when `pointer_count` falls to zero
`on_delete` runs (IRP_MJ_CLOSE for a file object) exactly once.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_acquire, _release = _lock.acquire, _lock.release   # (cheaper than `with` on every request's path)


class ObjectHeader:
    """Mixed into every object the object manager names, references or hands out."""

    type_name = "Object"
    # set by the subclass or creator
    name: str = ""
    parent = None          # the Directory holding the name, if named
    permanent = False
    security = None        # a SecurityDescriptor, checked at open
    pointer_count = 0
    handle_count = 0
    _deleted = False

    def object_name(self) -> str:
        parts = []
        obj = self
        while obj is not None and obj.parent is not None:
            parts.append(obj.name)
            obj = obj.parent
        return "\\" + "\\".join(reversed(parts)) if parts else ("\\" if self.type_name == "Directory" else "")

    def on_last_handle(self, process) -> None:
        """Runs in the context of the process that closed the last handle."""

    def on_delete(self) -> None:
        """Runs once, when the last reference goes."""


def reference(obj: ObjectHeader) -> ObjectHeader:
    _acquire()
    try:
        if obj._deleted:
            raise RuntimeError(f"reference to deleted {obj.type_name} object")
        obj.pointer_count += 1
    finally:
        _release()
    return obj


class ReferenceCountError(RuntimeError):
    """Dereferencing an object with no references left (NT bugchecks:
    REFERENCE_BY_POINTER / OBJECT dereference underflow)."""


def dereference(obj: ObjectHeader) -> None:
    _acquire()
    try:
        if obj.pointer_count <= 0:
            raise ReferenceCountError(f"ObDereferenceObject on {obj.type_name} {obj.object_name() or hex(id(obj))} with no reference left")
        obj.pointer_count -= 1
        if obj.pointer_count or obj._deleted:
            return
        obj._deleted = True
    finally:
        _release()
    obj.on_delete()


def make_temporary(obj: ObjectHeader) -> None:
    """ObMakeTemporaryObject: the name goes away with the last handle."""
    obj.permanent = False
    if obj.handle_count == 0:
        remove_name(obj)


def remove_name(obj: ObjectHeader) -> None:
    parent = obj.parent
    if parent is not None:
        parent.remove(obj)
