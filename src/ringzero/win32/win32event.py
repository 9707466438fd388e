"""win32event for ringzero programs: events, mutexes and waits, with NT's semantics.

Events are kernel objects: a handle can be passed to a driver (which
references it with ObReferenceObjectByHandle and signals it with KeSetEvent),
and a named event is shared with other programs through \\BaseNamedObjects.
Mutexes are NT's mutants: owned by the thread whose wait got one (or that
created it as its initial owner), taken again by that thread without
blocking, released only by it; when the owning thread or its program ends,
the next wait to get the mutex returns WAIT_ABANDONED.
"""

from __future__ import annotations

import struct

from ringzero import client
from ringzero.nt import status as st
from ringzero.protocol import wire
from ringzero.protocol.wire import K
from ringzero.win32 import pywintypes
from ringzero.win32.win32con import (EVENT_ALL_ACCESS, EVENT_MODIFY_STATE, INFINITE, MUTEX_ALL_ACCESS,  # noqa: F401
                                     SYNCHRONIZE, WAIT_ABANDONED_0, WAIT_FAILED, WAIT_OBJECT_0, WAIT_TIMEOUT)
from ringzero.win32.winerror import ERROR_ALREADY_EXISTS

WAIT_ABANDONED = WAIT_ABANDONED_0
MAXIMUM_WAIT_OBJECTS = 64
EVENT_QUERY_STATE = 0x0001


def _named(kind: int, payload: bytes, funcname: str, creates: bool) -> pywintypes.HANDLEType:
    """A handle to a new or named object; a create that found the name taken
    sets GetLastError() to ERROR_ALREADY_EXISTS, as Create* do."""
    status, handle, _ = client.connection().request(kind, payload)
    if not st.NT_SUCCESS(status):
        pywintypes.raise_status(status, funcname)
    if creates:
        pywintypes.set_last_error(ERROR_ALREADY_EXISTS if status == st.STATUS_OBJECT_NAME_EXISTS else 0)
    return pywintypes.HANDLEType(handle)


def CreateEvent(EventAttributes, bManualReset: bool, bInitialState: bool, Name: str | None) -> pywintypes.HANDLEType:
    payload = wire.CREATE_EVENT.pack(bool(bManualReset), bool(bInitialState), 0, EVENT_ALL_ACCESS)
    return _named(K.CREATE_EVENT, payload + pywintypes.name_bytes(Name or "", "CreateEvent"), "CreateEvent", True)


def OpenEvent(desiredAccess: int, bInheritHandle: bool, name: str) -> pywintypes.HANDLEType:
    payload = (wire.OPEN_EVENT.pack(desiredAccess & 0xFFFFFFFF, bool(bInheritHandle))
               + pywintypes.name_bytes(name, "OpenEvent"))
    return _named(K.OPEN_EVENT, payload, "OpenEvent", False)


def CreateMutex(MutexAttributes, bInitialOwner: bool, Name: str | None) -> pywintypes.HANDLEType:
    """A new mutex (owned by this thread with `bInitialOwner`), or the existing
    one of that name (GetLastError() is then ERROR_ALREADY_EXISTS, and this
    thread does not own it)."""
    payload = (wire.CREATE_MUTANT.pack(bool(bInitialOwner), MUTEX_ALL_ACCESS)
               + pywintypes.name_bytes(Name or "", "CreateMutex"))
    return _named(K.CREATE_MUTANT, payload, "CreateMutex", True)


def OpenMutex(desiredAccess: int, bInheritHandle: bool, name: str) -> pywintypes.HANDLEType:
    payload = (wire.OPEN_MUTANT.pack(desiredAccess & 0xFFFFFFFF, bool(bInheritHandle))
               + pywintypes.name_bytes(name, "OpenMutex"))
    return _named(K.OPEN_MUTANT, payload, "OpenMutex", False)


def ReleaseMutex(hMutex) -> None:
    """ERROR_NOT_OWNER unless this thread owns it."""
    status, _, _ = client.connection().request(K.RELEASE_MUTANT, wire.HANDLE.pack(pywintypes.handle_value(hMutex)))
    if not st.NT_SUCCESS(status):
        pywintypes.raise_status(status, "ReleaseMutex")


def _event_op(handle, op: int, funcname: str) -> int:
    status, prev, _ = client.connection().request(K.EVENT_OP, wire.EVENT_OP.pack(pywintypes.handle_value(handle), op))
    if not st.NT_SUCCESS(status):
        pywintypes.raise_status(status, funcname)
    return prev


def SetEvent(hEvent) -> None:
    _event_op(hEvent, wire.EVENT_SET, "SetEvent")


def ResetEvent(hEvent) -> None:
    _event_op(hEvent, wire.EVENT_RESET, "ResetEvent")


def PulseEvent(hEvent) -> None:
    _event_op(hEvent, wire.EVENT_PULSE, "PulseEvent")


def _wait(handles, wait_all: bool, milliseconds: int, funcname: str) -> int:
    hs = [pywintypes.handle_value(h) for h in handles]
    if milliseconds is not None and not -1 <= milliseconds <= 0xFFFFFFFF:
        raise OverflowError(f"{funcname}: the timeout is a DWORD of milliseconds (0 to 0xFFFFFFFF, or INFINITE), "
                            f"not {milliseconds}")
    timeout = -1 if milliseconds is None or (milliseconds & 0xFFFFFFFF) == INFINITE else milliseconds
    payload = wire.WAIT.pack(bool(wait_all), 0, len(hs), timeout) + struct.pack(f"<{len(hs)}Q", *hs)
    status, _, _ = client.connection().request(K.WAIT, payload)
    if status == st.STATUS_TIMEOUT:
        return WAIT_TIMEOUT
    if st.STATUS_WAIT_0 <= status < st.STATUS_WAIT_0 + MAXIMUM_WAIT_OBJECTS:
        return WAIT_OBJECT_0 + (status - st.STATUS_WAIT_0)
    if st.STATUS_ABANDONED_WAIT_0 <= status < st.STATUS_ABANDONED_WAIT_0 + MAXIMUM_WAIT_OBJECTS:
        return WAIT_ABANDONED_0 + (status - st.STATUS_ABANDONED_WAIT_0)
    pywintypes.raise_status(status, funcname)


def WaitForSingleObject(hHandle, milliseconds: int) -> int:
    return _wait([hHandle], False, milliseconds, "WaitForSingleObject")


def WaitForMultipleObjects(handleList, bWaitAll: bool, milliseconds: int) -> int:
    return _wait(list(handleList), bWaitAll, milliseconds, "WaitForMultipleObjects")
