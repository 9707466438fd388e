"""win32event for ringzero programs: events and waits, with NT's semantics.

Events are kernel objects: a handle can be passed to a driver (which
references it with ObReferenceObjectByHandle and signals it with KeSetEvent),
and a named event is shared with other programs through \\BaseNamedObjects.
"""

from __future__ import annotations

import struct

from ringzero import client
from ringzero.nt import status as st
from ringzero.protocol import wire
from ringzero.protocol.wire import K
from ringzero.win32 import pywintypes
from ringzero.win32.win32con import (EVENT_ALL_ACCESS, EVENT_MODIFY_STATE, INFINITE, SYNCHRONIZE,  # noqa: F401
                                     WAIT_ABANDONED_0, WAIT_FAILED, WAIT_OBJECT_0, WAIT_TIMEOUT)
from ringzero.win32.winerror import ERROR_ALREADY_EXISTS

WAIT_ABANDONED = WAIT_ABANDONED_0
MAXIMUM_WAIT_OBJECTS = 64
EVENT_QUERY_STATE = 0x0001


def CreateEvent(EventAttributes, bManualReset: bool, bInitialState: bool, Name: str | None) -> pywintypes.HANDLEType:
    name = (Name or "").encode("utf-8")
    payload = wire.CREATE_EVENT.pack(bool(bManualReset), bool(bInitialState), 0, EVENT_ALL_ACCESS) + name
    status, handle, _ = client.connection().request(K.CREATE_EVENT, payload)
    if not st.NT_SUCCESS(status):
        pywintypes.raise_status(status, "CreateEvent")
    pywintypes.set_last_error(ERROR_ALREADY_EXISTS if status == st.STATUS_OBJECT_NAME_EXISTS else 0)
    return pywintypes.HANDLEType(handle)


def OpenEvent(desiredAccess: int, bInheritHandle: bool, name: str) -> pywintypes.HANDLEType:
    payload = wire.OPEN_EVENT.pack(desiredAccess & 0xFFFFFFFF, bool(bInheritHandle)) + name.encode("utf-8")
    status, handle, _ = client.connection().request(K.OPEN_EVENT, payload)
    if not st.NT_SUCCESS(status):
        pywintypes.raise_status(status, "OpenEvent")
    return pywintypes.HANDLEType(handle)


def _event_op(handle, op: int, funcname: str) -> int:
    status, prev, _ = client.connection().request(K.EVENT_OP, wire.EVENT_OP.pack(int(handle), op))
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
    hs = [int(h) for h in handles]
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
