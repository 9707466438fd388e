"""The few win32api calls programs use with devices: CloseHandle, GetLastError,
FormatMessage, GetCurrentProcess, GetCurrentProcessId, GetCurrentThreadId,
DuplicateHandle, and Sleep and GetTickCount."""

from __future__ import annotations

import os
import time

from ringzero import client
from ringzero.protocol import wire
from ringzero.protocol.wire import K
from ringzero.win32 import pywintypes
from ringzero.win32.winerror import ERROR_INVALID_HANDLE, format_message


def CloseHandle(handle) -> None:
    status, _, _ = client.connection().request(K.CLOSE_HANDLE, wire.HANDLE.pack(pywintypes.handle_value(handle)))
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


DUPLICATE_CLOSE_SOURCE = 0x00000001
DUPLICATE_SAME_ACCESS = 0x00000002
_CURRENT_PROCESS = -1


def GetCurrentProcess() -> int:
    """The pseudo-handle -1, which stands for this process where a call takes
    a process handle (DuplicateHandle's); it need not be closed."""
    return _CURRENT_PROCESS


def DuplicateHandle(hSourceProcess, hSource, hTargetProcess, desiredAccess: int, bInheritHandle: bool, options: int):
    """Within this process only: both process handles must be
    GetCurrentProcess()'s (ERROR_INVALID_HANDLE otherwise, there being no
    handles to other processes here).  A generic desiredAccess is mapped
    through the object's type, as NT's is; DUPLICATE_CLOSE_SOURCE closes
    hSource, whether or not the duplicate could be made."""
    current = pywintypes.handle_value(_CURRENT_PROCESS)
    if pywintypes.handle_value(hSourceProcess) != current or pywintypes.handle_value(hTargetProcess) != current:
        pywintypes.raise_for(ERROR_INVALID_HANDLE, "DuplicateHandle")
    same = options & DUPLICATE_SAME_ACCESS
    source = pywintypes.handle_value(hSource)
    status, h, _ = client.connection().request(K.DUPLICATE_HANDLE,
                                               wire.DUPLICATE.pack(source, 0 if same else desiredAccess & 0xFFFFFFFF),
                                               wire.FLAG_SAME_ACCESS if same else 0)
    if options & DUPLICATE_CLOSE_SOURCE:
        client.connection().request(K.CLOSE_HANDLE, wire.HANDLE.pack(source))
    if status & 0xC0000000 == 0xC0000000:
        pywintypes.raise_status(status, "DuplicateHandle")
    return pywintypes.HANDLEType(h)
