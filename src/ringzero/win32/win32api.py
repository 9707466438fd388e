"""The few win32api calls programs use with devices: CloseHandle, GetLastError,
FormatMessage, GetCurrentProcessId, GetCurrentThreadId, DuplicateHandle, and
Sleep and GetTickCount."""

from __future__ import annotations

import os
import time

from ringzero import client
from ringzero.protocol import wire
from ringzero.protocol.wire import K
from ringzero.win32 import pywintypes
from ringzero.win32.winerror import format_message


def CloseHandle(handle) -> None:
    status, _, _ = client.connection().request(K.CLOSE_HANDLE, wire.HANDLE.pack(int(handle)))
    if status:
        pywintypes.raise_status(status, "CloseHandle")


def GetLastError() -> int:
    return pywintypes.get_last_error()


def SetLastError(code: int) -> None:
    pywintypes.set_last_error(code)


def FormatMessage(*args) -> str:
    code = args[-1] if len(args) != 1 else args[0]
    return format_message(int(code)) + "\r\n"


def GetCurrentProcessId() -> int:
    return os.getpid()


def GetCurrentThreadId() -> int:
    """This thread's id, the one a driver serving its requests gets from PsGetCurrentThreadId."""
    return client._thread_id()


def Sleep(milliseconds: int, alertable: bool = False) -> int:
    """Sleep(ms[, bAlterable]) as pywin32's: 0 once the time has passed (no APC
    is ever queued to a program here, so an alertable sleep is not cut short)."""
    time.sleep(max(0, int(milliseconds)) / 1000)
    return 0


def GetTickCount() -> int:
    """Milliseconds since the system started, wrapping at 2**32 as GetTickCount's do."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * 1000) & 0xFFFFFFFF


def DuplicateHandle(hSourceProcess, hSource, hTargetProcess, desiredAccess: int, bInheritHandle: bool, options: int):
    """Within this process only (the source and target process are ours)."""
    DUPLICATE_SAME_ACCESS = 2
    access = 0 if options & DUPLICATE_SAME_ACCESS else desiredAccess
    status, h, _ = client.connection().request(K.DUPLICATE_HANDLE, wire.DUPLICATE.pack(int(hSource), access))
    if status & 0xC0000000 == 0xC0000000:
        pywintypes.raise_status(status, "DuplicateHandle")
    return pywintypes.HANDLEType(h)
