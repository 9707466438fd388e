"""MDLs and mapping their pages into kernel and program address spaces.

A user-mode mapping is real: the pages of the pool block (a memfd section)
are mapped into the *current* process, the program that made the request,
by an upcall on its connection during the same dispatch; the address it
returns is valid in that program and nowhere else.

Invariant: a `UserView` is recorded both in the MDL and in its process's
`views` from the moment the program mapped it until MmUnmapLockedPages or the
process's rundown, whichever comes first.
"""

from __future__ import annotations

from dataclasses import dataclass

from ringzero.kernel import verifier
from ringzero.kernel.context import current
from ringzero.kernel.mm.pool import PAGE_SIZE, SectionBlock
from ringzero.kernel.mm.user import NtException
from ringzero.nt import status as st

KernelMode = 0
UserMode = 1
MDL_SOURCE_IS_NONPAGED_POOL = 0x0004
MDL_PAGES_LOCKED = 0x0002
MDL_MAPPED_TO_SYSTEM_VA = 0x0001
MDL_IO_SPACE = 0x0800


@dataclass(slots=True)
class UserView:
    process: object
    address: int
    length: int
    mdl: object
    block: object
    gone: bool = False    # the program died; its address space went with it


class MDL:
    __slots__ = ("Next", "Size", "MdlFlags", "Process", "MappedSystemVa", "StartVa", "ByteCount", "ByteOffset",
                 "block", "offset", "user_views", "driver", "__weakref__")

    def __init__(self, block, offset: int, length: int):
        self.Next = None
        self.block = block
        self.offset = offset
        self.ByteCount = length
        self.ByteOffset = offset % PAGE_SIZE
        self.StartVa = block
        self.MdlFlags = 0
        self.Process = None
        self.MappedSystemVa = None
        self.Size = 0
        self.user_views: list[UserView] = []
        self.driver = current.driver

    def system_view(self) -> memoryview:
        return memoryview(self.block).cast("B")[self.offset:self.offset + self.ByteCount]


def mdl_for_buffer(buf, length: int | None = None) -> MDL:
    """The I/O manager's MDL over a request buffer (direct I/O)."""
    n = len(buf) if length is None else length
    mdl = MDL(buf, 0, n)
    mdl.MdlFlags = MDL_PAGES_LOCKED | MDL_MAPPED_TO_SYSTEM_VA
    mdl.MappedSystemVa = mdl.system_view()
    mdl.driver = None
    return mdl


def _split(VirtualAddress):
    """(block, offset) for a pool block or a memoryview slice of one."""
    if isinstance(VirtualAddress, memoryview):
        obj = VirtualAddress.obj
        base = memoryview(obj).cast("B")
        import ctypes
        start = ctypes.addressof(ctypes.c_char.from_buffer(VirtualAddress.cast("B") if not VirtualAddress.readonly else base))
        origin = ctypes.addressof(ctypes.c_char.from_buffer(base))
        return obj, start - origin
    return VirtualAddress, 0


def IoAllocateMdl(VirtualAddress, Length: int, SecondaryBuffer: bool = False, ChargeQuota: bool = False, Irp=None):
    if VirtualAddress is None or Length <= 0:
        return None
    block, offset = _split(VirtualAddress)
    if offset + Length > len(memoryview(block).cast("B")):
        return None
    mdl = MDL(block, offset, Length)
    if Irp is not None and not SecondaryBuffer:
        Irp.MdlAddress = mdl
    _track(mdl)
    return mdl


def IoFreeMdl(Mdl: MDL) -> None:
    if any(not v.gone for v in Mdl.user_views):
        verifier.violation("DRIVER_LEFT_LOCKED_PAGES_IN_PROCESS", "IoFreeMdl while the MDL is still mapped into a program")
    Mdl.user_views.clear()
    _untrack(Mdl)


def MmBuildMdlForNonPagedPool(MemoryDescriptorList: MDL) -> None:
    MemoryDescriptorList.MdlFlags |= MDL_SOURCE_IS_NONPAGED_POOL
    MemoryDescriptorList.MappedSystemVa = MemoryDescriptorList.system_view()


def MmProbeAndLockPages(MemoryDescriptorList: MDL, AccessMode: int = KernelMode, Operation: int = 0) -> None:
    MemoryDescriptorList.MdlFlags |= MDL_PAGES_LOCKED


def MmUnlockPages(MemoryDescriptorList: MDL) -> None:
    MemoryDescriptorList.MdlFlags &= ~MDL_PAGES_LOCKED


def MmGetSystemAddressForMdlSafe(Mdl: MDL, Priority: int = 16):
    if Mdl.MappedSystemVa is None:
        Mdl.MappedSystemVa = Mdl.system_view()
        Mdl.MdlFlags |= MDL_MAPPED_TO_SYSTEM_VA
    return Mdl.MappedSystemVa


MmGetSystemAddressForMdl = MmGetSystemAddressForMdlSafe


def MmGetMdlByteCount(Mdl: MDL) -> int:
    return Mdl.ByteCount


def MmGetMdlVirtualAddress(Mdl: MDL):
    return Mdl.system_view()


def MmMapLockedPagesSpecifyCache(MemoryDescriptorList: MDL, AccessMode: int, CacheType: int = 1, RequestedAddress=None,
                                 BugCheckOnFailure: bool = False, Priority: int = 16):
    """KernelMode: a writable view.  UserMode: the address, in the current
    program, of the same pages; raises NtException on failure (as NT does,
    which is why callers wrap it in __try)."""
    mdl = MemoryDescriptorList
    if AccessMode == KernelMode:
        return MmGetSystemAddressForMdlSafe(mdl, Priority)
    process = current.process
    conn = getattr(process, "connection", None)
    if process is None or process.is_system or conn is None:
        raise NtException(st.STATUS_INVALID_PARAMETER, "a UserMode mapping needs a program's context (not a timer, DPC or system thread)")
    block = mdl.block
    if not isinstance(block, SectionBlock):
        raise NtException(st.STATUS_INVALID_PARAMETER,
                          "only pool blocks of a page or more can be mapped into a program; allocate at least PAGE_SIZE")
    first_page = mdl.offset - mdl.offset % PAGE_SIZE
    span = -(-(mdl.offset + mdl.ByteCount - first_page) // PAGE_SIZE) * PAGE_SIZE
    base = conn.map_view(block.memfd, span, first_page)  # raises NtException
    view = UserView(process, base + (mdl.offset - first_page), span, mdl, block)
    view_base = base
    with process.lock:
        process.views[view_base] = view
    mdl.user_views.append(view)
    mdl.Process = process
    return view.address


def MmMapLockedPages(MemoryDescriptorList: MDL, AccessMode: int):
    return MmMapLockedPagesSpecifyCache(MemoryDescriptorList, AccessMode)


def MmUnmapLockedPages(BaseAddress, MemoryDescriptorList: MDL) -> None:
    mdl = MemoryDescriptorList
    if not isinstance(BaseAddress, int):
        return  # a kernel-mode view: nothing to undo
    view = next((v for v in mdl.user_views if v.address == BaseAddress), None)
    if view is None:
        verifier.violation("MEMORY_MANAGEMENT", f"MmUnmapLockedPages of {BaseAddress:#x}, which this MDL did not map")
    proc = view.process
    if proc is not current.process and not proc.exiting and not view.gone:
        verifier.violation("INVALID_PROCESS_ATTACH_ATTEMPT",
                           f"unmapping a view of pid {proc.pid} from the context of pid {getattr(current.process, 'pid', 0)}")
    mdl.user_views.remove(view)
    if not view.gone:
        _unmap(view)


def _unmap(view) -> None:
    """Take `view` out of its program: from the process's views, and (unless the
    program is on its way out) from its address space."""
    proc = view.process
    base = view.address - (view.address % PAGE_SIZE)
    with proc.lock:
        proc.views.pop(base, None)
    conn = proc.connection
    if conn is not None and not proc.exiting:
        conn.unmap_view(base, view.length)


def drop_views_of(process) -> int:
    """Rundown: the program is gone and its address space with it.  The views
    stay on their MDLs, marked gone, so the driver's own unmapping at
    IRP_MJ_CLEANUP still finds them and is a no-op."""
    with process.lock:
        views = list(process.views.values())
        process.views.clear()
    for v in views:
        v.gone = True
    return len(views)


_live_mdls: dict[int, MDL] = {}


def _track(mdl: MDL) -> None:
    _live_mdls[id(mdl)] = mdl


def _untrack(mdl: MDL) -> None:
    _live_mdls.pop(id(mdl), None)


def live_mdls_of(driver) -> list[MDL]:
    return [m for m in list(_live_mdls.values()) if m.driver is driver]


def live_mdl_count() -> int:
    return len(_live_mdls)


def reclaim_driver(driver) -> int:
    """After a leak report: free the MDLs an unloaded driver left, first
    unmapping the views of them still in programs (their pages are the pool the
    unload takes back); how many MDLs."""
    mdls = live_mdls_of(driver)
    for mdl in mdls:
        for view in mdl.user_views:
            if not view.gone:
                view.gone = True
                try:
                    _unmap(view)
                except Exception:
                    pass          # (the program's own mapping; it is gone with the program at worst)
        mdl.user_views.clear()
        _untrack(mdl)
    return len(mdls)

