"""pywintypes for ringzero programs: error, HANDLE, OVERLAPPED."""

from __future__ import annotations

import threading

from ringzero.nt.errors import RtlNtStatusToDosError
from ringzero.win32.winerror import ERROR_INVALID_NAME, format_message


class error(Exception):
    """pywintypes.error(winerror, funcname, strerror), as pywin32 raises it."""

    def __init__(self, *args):
        super().__init__(*args)
        self.winerror = args[0] if len(args) > 0 else None
        self.funcname = args[1] if len(args) > 1 else None
        self.strerror = args[2] if len(args) > 2 else None


com_error = error

_last = threading.local()


def set_last_error(code: int) -> None:
    _last.code = code


def get_last_error() -> int:
    return getattr(_last, "code", 0)


def raise_for(code: int, funcname: str):
    set_last_error(code)
    raise error(code, funcname, format_message(code))


def raise_status(status: int, funcname: str):
    raise_for(RtlNtStatusToDosError(status), funcname)


def name_bytes(name: str, funcname: str) -> bytes:
    """An object or file name as the wire carries it (UTF-8); one that is no
    text (a lone surrogate) is ERROR_INVALID_NAME, as a name the object
    manager cannot parse is."""
    try:
        return name.encode("utf-8")
    except UnicodeEncodeError:
        raise_for(ERROR_INVALID_NAME, funcname)


_NO_HANDLE = (1 << 64) - 1      # a value no handle table hands out (INVALID_HANDLE_VALUE's bits)


def handle_value(handle) -> int:
    """A handle as the wire carries it, an unsigned 64-bit value: None is 0, a
    negative one (INVALID_HANDLE_VALUE, a pseudo-handle) its two's complement,
    and one no HANDLE can hold a value that is no handle, so that the kernel
    answers ERROR_INVALID_HANDLE for it as for any other bad handle."""
    if handle is None:
        return 0
    h = int(handle)
    if 0 <= h < 1 << 64:
        return h
    if -(1 << 63) <= h < 0:
        return h + (1 << 64)
    return _NO_HANDLE


class HANDLEType:
    """A kernel handle of this process (pywin32's PyHANDLE): int(), Close(),
    Detach(), and a context manager that closes it."""

    __slots__ = ("handle", "__weakref__")

    def __init__(self, handle: int = 0):
        self.handle = int(handle)

    def __int__(self) -> int:
        return self.handle

    __index__ = __int__

    def __bool__(self) -> bool:
        return self.handle != 0

    def __eq__(self, other) -> bool:
        try:
            return self.handle == int(other)
        except (TypeError, ValueError):
            return NotImplemented

    def __hash__(self) -> int:
        return hash(self.handle)

    def __repr__(self) -> str:
        return f"<PyHANDLE:{self.handle}>"

    def Close(self) -> None:
        if self.handle:
            from ringzero.win32.win32api import CloseHandle
            h, self.handle = self.handle, 0
            CloseHandle(h)

    close = Close

    def Detach(self) -> int:
        h, self.handle = self.handle, 0
        return h

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        self.Close()
        return False


PyHANDLE = HANDLEType


def HANDLE(h: int = 0) -> HANDLEType:
    return HANDLEType(h)


class OVERLAPPED:
    """pywintypes.OVERLAPPED: Offset, OffsetHigh, hEvent, Internal (the final
    NTSTATUS), InternalHigh (bytes transferred), object."""

    def __init__(self):
        self.Offset = 0
        self.OffsetHigh = 0
        self.hEvent = None
        self.Internal = 0x103   # STATUS_PENDING until it completes
        self.InternalHigh = 0
        self.object = None
        self.dword = 0
        self._slot = None
        self._conn = None
        self._handle = 0
        self._rid = 0
        self._kind = None
        self._buffer = None

    @property
    def offset(self) -> int:
        return (self.OffsetHigh << 32) | self.Offset
