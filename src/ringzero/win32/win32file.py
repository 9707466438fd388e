"""win32file for ringzero programs: device I/O with pywin32's names,
arguments, return values and errors.

    h = CreateFile(r"\\\\.\\slVirtToPhys", GENERIC_READ | GENERIC_WRITE, 0, None, OPEN_EXISTING, 0, None)
    out = DeviceIoControl(h, IOCTL_X, b"input", 64)      # bytes, as long as the driver said
    hr, data = ReadFile(h, 4096)
    hr, n = WriteFile(h, b"hello")
    CloseHandle(h)
"""

from __future__ import annotations

import ctypes

from ringzero import client
from ringzero.nt import status as st
from ringzero.nt.irp import (CREATE_ALWAYS, CREATE_NEW, FILE_ATTRIBUTE_NORMAL, FILE_ATTRIBUTE_SYSTEM,
                             FILE_FLAG_OVERLAPPED, FILE_SHARE_DELETE, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_ALWAYS,
                             OPEN_EXISTING, TRUNCATE_EXISTING)
from ringzero.protocol import wire
from ringzero.protocol.wire import K
from ringzero.win32 import pywintypes
from ringzero.win32.win32api import CloseHandle  # noqa: F401  (pywin32 has it here too)
from ringzero.win32.win32con import GENERIC_ALL, GENERIC_EXECUTE, GENERIC_READ, GENERIC_WRITE  # noqa: F401
from ringzero.win32.winerror import ERROR_IO_INCOMPLETE, ERROR_IO_PENDING, ERROR_MORE_DATA

INVALID_HANDLE_VALUE = -1
METHOD_NEITHER = 3
METHOD_IN_DIRECT = 1


_h = pywintypes.handle_value


def _fail(status: int, funcname: str):
    pywintypes.raise_status(status, funcname)


def CreateFile(fileName: str, desiredAccess: int, shareMode: int, attributes, CreationDisposition: int,
               flagsAndAttributes: int, hTemplateFile) -> pywintypes.HANDLEType:
    name = pywintypes.name_bytes(fileName, "CreateFile")
    payload = wire.CREATE_FILE.pack(desiredAccess & 0xFFFFFFFF, shareMode, CreationDisposition,
                                    flagsAndAttributes & 0xFFFFFFFF, len(name)) + name
    status, handle, _ = client.connection().request(K.CREATE_FILE, payload)
    if not st.NT_SUCCESS(status):
        _fail(status, "CreateFile")
    pywintypes.set_last_error(0)
    return pywintypes.HANDLEType(handle)


CreateFileW = CreateFile


def AllocateReadBuffer(bufSize: int) -> bytearray:
    return bytearray(bufSize)


def _address_of(buf) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf)) if len(buf) else 0


def _writable(buf) -> bool:
    if type(buf) is bytearray:
        return True           # (AllocateReadBuffer's: no view to make)
    try:
        return not memoryview(buf).readonly
    except TypeError:
        return False


def _bytes_data_offset() -> int:
    probe = b"probe"
    return ctypes.cast(ctypes.c_char_p(probe), ctypes.c_void_p).value - id(probe)


# where a bytes object's data lies from its start (its header's size), measured once
_BYTES_DATA = _bytes_data_offset()


def _data_address(data) -> tuple[int, object]:
    """(address, owner) of the bytes of `data` in this process, copying them
    only if they are in no buffer ctypes can point at."""
    if type(data) is bytes:
        return id(data) + _BYTES_DATA, data    # the bytes object's own storage, alive while `data` is
    if type(data) is bytearray:
        mv = data                               # (AllocateReadBuffer's: no view to make first)
    else:
        mv = memoryview(data).cast("B")
        if mv.readonly:
            return _data_address(bytes(mv))
    owner = ctypes.c_char.from_buffer(mv)
    return ctypes.addressof(owner), owner


def _start(conn, kind: int, payload: bytes, overlapped, funcname: str, sink=None, keep=None, flags: int = 0,
           body=b"", pin=None):
    """Send an overlapped request; returns once it completed or went pending."""
    rid, slot = conn.start(kind, payload, wire.FLAG_OVERLAPPED | flags, sink=sink, body=body, keep=pin)
    overlapped._slot = slot
    overlapped._conn = conn
    overlapped._rid = rid
    overlapped._keep = keep
    overlapped.Internal = st.STATUS_PENDING
    conn.wait(slot, until_pending=True)
    if slot.done:
        overlapped.Internal, overlapped.InternalHigh = slot.status, slot.info
        if st.NT_ERROR(slot.status):
            _fail(slot.status, funcname)
        return False
    pywintypes.set_last_error(ERROR_IO_PENDING)
    return True


def DeviceIoControl(Device, IoControlCode: int, InBuffer, OutBuffer, Overlapped=None):
    """The output: bytes of the length the driver returned (OutBuffer an int),
    or a memoryview of that much of OutBuffer (a writable buffer).  With an
    OVERLAPPED that went pending, OutBuffer itself; GetOverlappedResult says
    how much of it was filled."""
    conn = client.connection()
    code = IoControlCode & 0xFFFFFFFF
    in_data = b"" if InBuffer is None else (InBuffer.encode() if isinstance(InBuffer, str) else bytes(InBuffer))
    if OutBuffer is None:
        out_len, out_buf = 0, None
    elif isinstance(OutBuffer, int):
        out_len, out_buf = OutBuffer, None
    else:
        out_len, out_buf = len(memoryview(OutBuffer).cast("B")), OutBuffer
    in_addr = out_addr = 0
    keep = None
    extra = b""
    method = code & 3
    if method == METHOD_NEITHER:
        in_c = ctypes.create_string_buffer(in_data, len(in_data)) if in_data else None
        if out_buf is None or not _writable(out_buf):
            out_buf = bytearray(out_len)
        in_addr = ctypes.addressof(in_c) if in_c is not None else 0
        out_addr = _address_of(out_buf)
        keep = (in_c, out_buf)
    elif method == METHOD_IN_DIRECT and out_buf is not None:
        extra = bytes(memoryview(out_buf).cast("B"))
    event = _h(Overlapped.hEvent) if Overlapped is not None else 0
    payload = wire.IOCTL.pack(_h(Device), code, len(in_data), out_len, in_addr, out_addr, event) + in_data + extra
    if Overlapped is not None:
        if out_buf is None:
            out_buf = bytearray(out_len)
        sink = out_buf if method != METHOD_NEITHER else None
        Overlapped._buffer = out_buf
        if _start(conn, K.DEVICE_IO_CONTROL, payload, Overlapped, "DeviceIoControl", sink, keep):
            return out_buf
        return memoryview(out_buf)[:Overlapped.InternalHigh]
    status, info, data = conn.request(K.DEVICE_IO_CONTROL, payload)
    if st.NT_ERROR(status) or (not st.NT_SUCCESS(status) and (status & 0xFFFFFFFF) != st.STATUS_BUFFER_OVERFLOW):
        _fail(status, "DeviceIoControl")
    pywintypes.set_last_error(ERROR_MORE_DATA if status == st.STATUS_BUFFER_OVERFLOW else 0)
    if method == METHOD_NEITHER:
        n = min(info, out_len)
        if isinstance(OutBuffer, int) or OutBuffer is None:
            return bytes(out_buf[:n])
        return memoryview(out_buf)[:n]
    if out_buf is not None:
        memoryview(out_buf).cast("B")[:len(data)] = data
        return memoryview(out_buf)[:len(data)]
    return bytes(data)


def ReadFile(hFile, buffer, overlapped=None):
    """(0, data) — or (ERROR_IO_PENDING, buffer) when an overlapped read pends."""
    conn = client.connection()
    if isinstance(buffer, int):
        size, target, as_bytes = buffer, bytearray(buffer), True
    else:
        size, target, as_bytes = len(buffer), buffer, False
        if not _writable(target):
            raise TypeError("ReadFile needs a writable buffer (use AllocateReadBuffer)")
    offset = -1
    event = 0
    if overlapped is not None:
        offset = overlapped.offset
        event = _h(overlapped.hEvent)
    address, pin = _data_address(target) if size else (0, None)
    payload = wire.READ.pack(_h(hFile), size, offset, address, event)
    # a read too large for the ring: the kernel copies the data straight into
    # `target`, which stays pinned (it cannot be resized or freed) until the reply
    if conn.user_buffers and size > conn.max_ring_body:
        flags = wire.FLAG_USER_BUFFER
    else:
        flags, pin = 0, None
    if overlapped is not None:
        overlapped._buffer = target
        if _start(conn, K.READ_FILE, payload, overlapped, "ReadFile", sink=target, keep=target, flags=flags,
                  pin=pin):
            return ERROR_IO_PENDING, target
        n = overlapped.InternalHigh
        return 0, (bytes(memoryview(target)[:n]) if as_bytes else memoryview(target)[:n])
    status, info, _ = conn.request(K.READ_FILE, payload, flags, sink=target, keep=pin)
    del pin
    if st.NT_ERROR(status):
        _fail(status, "ReadFile")
    n = min(info, size)
    hr = ERROR_MORE_DATA if status == st.STATUS_BUFFER_OVERFLOW else 0
    return hr, (bytes(memoryview(target)[:n]) if as_bytes else memoryview(target)[:n])


def WriteFile(hFile, data, overlapped=None):
    """(0, bytes written) — or (ERROR_IO_PENDING, 0) when an overlapped write pends."""
    conn = client.connection()
    if isinstance(data, str):
        data = data.encode()
    offset = -1
    event = 0
    if overlapped is not None:
        offset = overlapped.offset
        event = _h(overlapped.hEvent)
    body = data if isinstance(data, bytes) else bytes(memoryview(data).cast("B"))
    n = len(body)
    addr, keep = _data_address(body) if n else (0, None)   # the user buffer's address (METHOD_NEITHER devices)
    if conn.user_buffers and n > conn.max_ring_body:
        # too large for the ring: the kernel copies the data from our buffer itself
        payload = wire.WRITE.pack(_h(hFile), offset, addr, event) + wire.WRITE_LENGTH.pack(n)
        flags, body = wire.FLAG_USER_BUFFER, b""
    else:
        payload = wire.WRITE.pack(_h(hFile), offset, addr, event)
        flags = 0
    if overlapped is not None:
        # `keep` lives until the reply: a driver may read the buffer while the write is pending
        if _start(conn, K.WRITE_FILE, payload, overlapped, "WriteFile", keep=keep, flags=flags, body=body,
                  pin=keep):
            return ERROR_IO_PENDING, 0
        return 0, overlapped.InternalHigh
    status, info, _ = conn.request(K.WRITE_FILE, payload, flags, body=body, keep=keep)
    del keep
    if st.NT_ERROR(status):
        _fail(status, "WriteFile")
    return 0, info


def GetOverlappedResult(hFile, overlapped, bWait: bool) -> int:
    slot = overlapped._slot
    if slot is None:
        raise pywintypes.error(87, "GetOverlappedResult", "The parameter is incorrect.")
    if not slot.done:
        if not bWait:
            pywintypes.raise_for(ERROR_IO_INCOMPLETE, "GetOverlappedResult")
        overlapped._conn.wait(slot)
    overlapped.Internal, overlapped.InternalHigh = slot.status, slot.info
    if not st.NT_SUCCESS(slot.status):
        _fail(slot.status, "GetOverlappedResult")
    return slot.info


def CancelIo(handle) -> None:
    status, _, _ = client.connection().request(K.CANCEL_IO, wire.CANCEL.pack(_h(handle), 0))
    if st.NT_ERROR(status):
        _fail(status, "CancelIo")


def CancelIoEx(handle, overlapped=None) -> None:
    rid = overlapped._rid if overlapped is not None else 0
    status, _, _ = client.connection().request(K.CANCEL_IO, wire.CANCEL.pack(_h(handle), rid),
                                               wire.FLAG_OVERLAPPED)
    if st.NT_ERROR(status):
        _fail(status, "CancelIoEx")
