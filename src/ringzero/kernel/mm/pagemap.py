"""Virtual to physical address translation for a process, from /proc/<pid>/pagemap.

This is the memory manager's MmGetPhysicalAddress.  /proc/<pid>/pagemap holds
one native-endian 64-bit entry per virtual page
(Documentation/admin-guide/mm/pagemap.rst): bit 63 "present", bit 62
"swapped", bits 0-54 the page frame number when present.

Needs: reading another process's pagemap needs ptrace access to it (root, or
the same user without Yama restrictions); the frame numbers themselves are
reported as zero unless the reader holds CAP_SYS_ADMIN in the initial user
namespace, which in practice means the kernel host must run as root.  When
that is missing, translation raises ``PhysicalAddressUnavailable`` rather than
returning wrong addresses.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from collections.abc import Iterable

__all__ = [
    "PhysicalAddressUnavailable",
    "pfns_visible",
    "physical_address",
    "physical_addresses",
]

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
USER_ADDRESS_LIMIT = 1 << 47

_ENTRY = struct.Struct("=Q")
_PRESENT = 1 << 63
_SWAPPED = 1 << 62
_PFN_MASK = (1 << 55) - 1

_HIDDEN_MESSAGE = (
    "frame numbers are hidden: the kernel must run as root (CAP_SYS_ADMIN) "
    "to translate virtual to physical addresses"
)
_NO_ADDRESS_SPACE = (
    "process {pid} has no user address space (it has exited, or is a kernel thread)"
)


class PhysicalAddressUnavailable(PermissionError):
    """This process may not learn physical addresses (PFNs hidden or pagemap refused)."""

    def __init__(self, message: str = _HIDDEN_MESSAGE) -> None:
        super().__init__(message)


def _open_pagemap(pid: int) -> int:
    path = f"/proc/{pid}/pagemap"
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ProcessLookupError(errno.ESRCH, f"no process {pid}") from None
    except ProcessLookupError:
        raise ProcessLookupError(errno.ESRCH, _NO_ADDRESS_SPACE.format(pid=pid)) from None
    except PermissionError as exc:
        raise PhysicalAddressUnavailable(
            f"cannot open {path}: {exc.strerror}; reading another process's page "
            "map needs ptrace access to it, and its frame numbers need root "
            "(CAP_SYS_ADMIN)") from exc


def _read_entry(fd: int, pid: int, vaddr: int) -> int | None:
    """The pagemap entry for vaddr, or None past the end of the address space."""
    try:
        data = os.pread(fd, _ENTRY.size, (vaddr // PAGE_SIZE) * _ENTRY.size)
    except ProcessLookupError:
        raise ProcessLookupError(errno.ESRCH, f"no process {pid}") from None
    if len(data) == _ENTRY.size:
        return _ENTRY.unpack(data)[0]
    if len(os.pread(fd, _ENTRY.size, 0)) != _ENTRY.size:
        raise ProcessLookupError(errno.ESRCH, _NO_ADDRESS_SPACE.format(pid=pid))
    return None


def _translate(fd: int, pid: int, vaddr: int) -> int:
    if vaddr < 0 or vaddr >= USER_ADDRESS_LIMIT:
        return 0
    entry = _read_entry(fd, pid, vaddr)
    if entry is None or not entry & _PRESENT or entry & _SWAPPED:
        return 0
    pfn = entry & _PFN_MASK
    if pfn == 0:
        raise PhysicalAddressUnavailable()
    return pfn * PAGE_SIZE + vaddr % PAGE_SIZE


def physical_address(pid: int, vaddr: int) -> int:
    """The physical address backing ``vaddr`` in process ``pid``.

    0 when the page is not resident (never touched, swapped out, unmapped, or
    outside the user range), as MmGetPhysicalAddress returns for an invalid
    address.  Raises ProcessLookupError if the process is gone and
    PhysicalAddressUnavailable if frame numbers are hidden from this process.
    """
    fd = _open_pagemap(pid)
    try:
        return _translate(fd, pid, vaddr)
    finally:
        os.close(fd)


def physical_addresses(pid: int, vaddrs: Iterable[int]) -> list[int]:
    """``physical_address`` for each of ``vaddrs``, opening the page map once."""
    fd = _open_pagemap(pid)
    try:
        return [_translate(fd, pid, vaddr) for vaddr in vaddrs]
    finally:
        os.close(fd)


def pfns_visible() -> bool:
    """Whether this process can read real frame numbers (tried on a page of its own)."""
    page = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        page[0] = 1
        anchor = ctypes.c_char.from_buffer(page)
        try:
            address = ctypes.addressof(anchor)
        finally:
            del anchor
        try:
            return physical_address(os.getpid(), address) != 0
        except PhysicalAddressUnavailable:
            return False
    finally:
        page.close()
