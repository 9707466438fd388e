"""Reaching a program's own memory: METHOD_NEITHER buffers and probes.

The kernel reads and writes the program's address space with
process_vm_readv / process_vm_writev (the program allows it with
PR_SET_PTRACER when Yama is on).  A bad address is an access violation the
driver can catch, as it catches one inside __try on NT.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import threading

from ringzero.nt import status as st

USER_ADDRESS_LIMIT = 0x0000_7FFF_FFFF_F000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(_iovec), ctypes.c_ulong,
                                   ctypes.POINTER(_iovec), ctypes.c_ulong, ctypes.c_ulong]
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_writev.argtypes = _libc.process_vm_readv.argtypes
_libc.process_vm_writev.restype = ctypes.c_ssize_t


class NtException(Exception):
    """An exception with an NTSTATUS, raised where NT raises one (ExRaiseStatus,
    a bad user address, a failed user-mode mapping).  `except NtException` is a
    driver's __except block."""

    def __init__(self, status: int, message: str = ""):
        super().__init__(message or f"exception {status:#010x}")
        self.status = status


class AccessViolation(NtException):
    def __init__(self, address: int, length: int, what: str = "access"):
        super().__init__(st.STATUS_ACCESS_VIOLATION,
                         f"access violation: {what} of {length} bytes at {address:#x}")
        self.address = address


def ExRaiseStatus(Status: int):
    raise NtException(Status)


def _check_range(address: int, length: int, what: str) -> None:
    if length < 0 or address < 0 or address + length > USER_ADDRESS_LIMIT or address + length < address:
        raise AccessViolation(address, length, what)


# pid -> [pidfd, connections]: the programs connected now.  A copy to or from
# one of them first checks, through the pidfd, that the process the pid named
# when it connected is still alive, so a pid reused after a program died (and
# before its rundown) is never read or written in its place.
_watched: dict[int, list[int]] = {}
_watch_lock = threading.Lock()


def watch_process(pid: int) -> None:
    """A program with this pid connected (the host calls it; see _watched)."""
    with _watch_lock:
        entry = _watched.get(pid)
        if entry is not None:
            entry[1] += 1
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = -1        # gone already, or no pidfds here: copies fail or go unchecked
        _watched[pid] = [fd, 1]


def unwatch_process(pid: int) -> None:
    with _watch_lock:
        entry = _watched.get(pid)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _watched[pid]
            if entry[0] >= 0:
                os.close(entry[0])


def _same_process(pid: int) -> bool:
    with _watch_lock:
        entry = _watched.get(pid)
        if entry is None or entry[0] < 0:
            return True
        try:
            signal.pidfd_send_signal(entry[0], 0)
        except ProcessLookupError:
            return False
        except OSError:
            pass           # not ours to signal: still alive
        return True


def read_process(pid: int, address: int, length: int) -> bytes:
    if length == 0:
        return b""
    _check_range(address, length, "read")
    buf = ctypes.create_string_buffer(length)
    _vm_copy(_libc.process_vm_readv, "read", pid, address, ctypes.addressof(buf), length)
    return buf.raw


def write_process(pid: int, address: int, data) -> None:
    data = bytes(data)
    if not data:
        return
    _check_range(address, len(data), "write")
    buf = ctypes.create_string_buffer(data, len(data))
    _vm_copy(_libc.process_vm_writev, "write", pid, address, ctypes.addressof(buf), len(data))


def _buffer_address(buf) -> tuple[int, object]:
    """(address, owner) of a writable buffer's bytes, without copying them;
    keep `owner` alive while the address is used."""
    owner = ctypes.c_char.from_buffer(buf)
    return ctypes.addressof(owner), owner


def _vm_copy(call, what: str, pid: int, address: int, local_addr: int, length: int) -> None:
    if not _same_process(pid):
        raise AccessViolation(address, length, what + " (the program has exited)")
    local = _iovec(local_addr, length)
    remote = _iovec(address, length)
    if call(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) != length:
        raise AccessViolation(address, length, what)


def read_into(pid: int, address: int, dest) -> None:
    """Copy len(dest) bytes of the program's memory at `address` into the
    writable buffer `dest` (a system buffer), in one step."""
    length = len(dest)
    if length == 0:
        return
    _check_range(address, length, "read")
    local_addr, owner = _buffer_address(dest)
    _vm_copy(_libc.process_vm_readv, "read", pid, address, local_addr, length)
    del owner


def write_from(pid: int, address: int, src) -> None:
    """Copy the buffer `src` (a slice of a system buffer) into the program's
    memory at `address`, in one step."""
    length = len(src)
    if length == 0:
        return
    _check_range(address, length, "write")
    try:
        local_addr, owner = _buffer_address(src)
    except TypeError:          # a read-only buffer: copy it once
        owner = ctypes.create_string_buffer(bytes(src), length)
        local_addr = ctypes.addressof(owner)
    _vm_copy(_libc.process_vm_writev, "write", pid, address, local_addr, length)
    del owner


class UserAddress(int):
    """A pointer into a program's address space (Type3InputBuffer, UserBuffer).

    It is the program's raw address; the driver may only reach the memory
    behind it through `read`/`write` (or RtlCopyMemory), each of which raises
    AccessViolation for an address the program does not have."""

    pid: int
    length: int

    def __new__(cls, address: int, pid: int, length: int = 0):
        self = super().__new__(cls, address)
        self.pid = pid
        self.length = length
        return self

    def read(self, length: int | None = None, offset: int = 0) -> bytes:
        return read_process(self.pid, int(self) + offset, self.length - offset if length is None else length)

    def write(self, data, offset: int = 0) -> None:
        write_process(self.pid, int(self) + offset, data)

    def __add__(self, n: int) -> UserAddress:
        return UserAddress(int(self) + n, self.pid, max(0, self.length - n))

    def __repr__(self) -> str:
        return f"UserAddress({int(self):#x}, pid={self.pid}, length={self.length})"


def ProbeForRead(Address, Length: int, Alignment: int = 1) -> None:
    if Length == 0:
        return
    addr = int(Address)
    if Alignment > 1 and addr % Alignment:
        raise NtException(st.STATUS_DATATYPE_MISALIGNMENT, f"{addr:#x} is not aligned to {Alignment}")
    _check_range(addr, Length, "probe for read")


def ProbeForWrite(Address, Length: int, Alignment: int = 1) -> None:
    ProbeForRead(Address, Length, Alignment)
    if isinstance(Address, UserAddress):
        # touch the first and last byte as NT does, so an unmapped range faults now
        first = read_process(Address.pid, int(Address), 1)
        write_process(Address.pid, int(Address), first)
        last = read_process(Address.pid, int(Address) + Length - 1, 1)
        write_process(Address.pid, int(Address) + Length - 1, last)


def RtlCopyMemory(Destination, Source, Length: int) -> None:
    """memcpy between kernel buffers and program addresses (UserAddress)."""
    if Length <= 0:
        return
    if isinstance(Source, UserAddress):
        data = Source.read(Length)
    else:
        data = bytes(memoryview(Source).cast("B")[:Length])
        if len(data) < Length:
            raise AccessViolation(0, Length, "read past the end of a kernel buffer")
    if isinstance(Destination, UserAddress):
        Destination.write(data)
    else:
        mv = memoryview(Destination).cast("B")
        if len(mv) < Length:
            raise AccessViolation(0, Length, "write past the end of a kernel buffer")
        mv[:Length] = data


RtlMoveMemory = RtlCopyMemory


def RtlZeroMemory(Destination, Length: int) -> None:
    if isinstance(Destination, UserAddress):
        Destination.write(bytes(Length))
    else:
        memoryview(Destination).cast("B")[:Length] = bytes(Length)


def RtlFillMemory(Destination, Length: int, Fill: int) -> None:
    memoryview(Destination).cast("B")[:Length] = bytes([Fill & 0xFF]) * Length


def RtlCompareMemory(Source1, Source2, Length: int) -> int:
    a = bytes(memoryview(Source1).cast("B")[:Length])
    b = bytes(memoryview(Source2).cast("B")[:Length])
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def set_ptracer(pid: int) -> None:
    """Allow `pid` (the kernel) to use process_vm_* on us under Yama ptrace_scope 1."""
    PR_SET_PTRACER = 0x59616D61
    try:
        _libc.prctl(PR_SET_PTRACER, ctypes.c_ulong(pid), 0, 0, 0)
    except Exception:
        pass


def page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")
