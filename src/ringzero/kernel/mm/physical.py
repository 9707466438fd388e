"""MmGetPhysicalAddress: a virtual address of the current process context to
the physical address behind it, from that process's /proc/<pid>/pagemap.

The current process is the requesting program while a top-level driver
dispatches its IRP (the seed's VirtToPhys relies on that), the kernel host
itself in DriverEntry, timer routines and DPCs.  An address whose page is not
present gives 0, as NT returns for an invalid address.  When frame numbers
are hidden from the kernel (it does not run as root) there is no answer to
give: the routine raises PhysicalAddressUnavailable, which a driver turns
into STATUS_PRIVILEGE_NOT_HELD.  No number is ever made up.
"""

from __future__ import annotations

import os

from ringzero.kernel.context import current
from ringzero.kernel.ke.clock import LARGE_INTEGER
from ringzero.kernel.mm import pagemap
from ringzero.kernel.mm.pagemap import PhysicalAddressUnavailable

__all__ = ["MmGetPhysicalAddress", "PhysicalAddressUnavailable"]


def _context_pid() -> int:
    proc = current.process
    if proc is None or proc.is_system:
        return os.getpid()
    return proc.pid


def MmGetPhysicalAddress(BaseAddress) -> LARGE_INTEGER:
    """PHYSICAL_ADDRESS (QuadPart / LowPart / HighPart) of `BaseAddress`."""
    address = getattr(BaseAddress, "value", BaseAddress)
    address = int(address or 0)
    try:
        return LARGE_INTEGER(pagemap.physical_address(_context_pid(), address))
    except ProcessLookupError:
        return LARGE_INTEGER(0)   # the process has gone, and its address space with it
