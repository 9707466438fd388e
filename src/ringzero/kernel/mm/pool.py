"""Pool allocations with tags, tracked per tag and per driver.

A block is a writable buffer (slicing, struct.pack_into, memoryview) that also
takes attributes, so a driver can treat it as the structure it allocated:

    ctx = ExAllocatePoolWithTag(NonPagedPool, sizeof(EXAMPLE_LIST), EXAMPLE_POOL_TAG)
    ctx.uiRefCount = 1

Blocks of a page or more live in their own memfd section, page aligned, so an
MDL over them can be mapped into a program (MmMapLockedPagesSpecifyCache with
UserMode); smaller blocks are plain memory.  Every live block is recorded until
it is freed: a block a driver forgets is a leak poolmon and the unload report
show, as on NT.
"""

from __future__ import annotations

import itertools
import mmap
import os
import resource
import threading
from dataclasses import dataclass

from ringzero.kernel import verifier
from ringzero.kernel.context import current
from ringzero.nt import irp as irpc

PAGE_SIZE = mmap.PAGESIZE


class PoolBlock(bytearray):
    """A small pool block."""

    memfd = -1

    def __hash__(self) -> int:  # blocks are identities, not values
        return id(self)

    def __eq__(self, other) -> bool:
        return self is other


class SectionBlock(mmap.mmap):
    """A page-aligned pool block backed by a memfd that can be mapped into programs."""

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other) -> bool:
        return self is other


@dataclass(slots=True)
class Allocation:
    seq: int
    tag: int
    size: int
    pool_type: int
    driver: object


_lock = threading.Lock()
_live: dict[int, tuple[object, Allocation]] = {}
_seq = itertools.count(1)
_totals: dict[tuple[int, int], list[int]] = {}   # (tag, paged) -> [allocs, frees, bytes in use]


def default_limit() -> int:
    """A quarter of this machine's memory: like NT's maximum pool sizes, a
    bound the drivers of a kernel that programs feed can never push past."""
    return os.sysconf("SC_PHYS_PAGES") * PAGE_SIZE // 4


limit = default_limit()    # bytes of pool (paged and nonpaged together) live at once
in_use = 0                 # bytes of pool live now
_refused_at = -1           # `in_use` when an allocation was last refused (to log once per crossing)

# A section costs the kernel two descriptors (its memfd, and the mmap's own
# copy), and descriptors run out long before memory does: a program opening one
# Example name after another (a context and its ring, a page) would otherwise
# take them all, and then no new program could even connect.  Sections may hold
# this share of the kernel's descriptors; past it, an allocation of a page or
# more fails (NULL) as at the pool limit, and the rest stay for connections.
SECTION_FD_SHARE = 0.75
FDS_PER_SECTION = 2
sections = 0               # sections live now
_sections_refused = False  # (to log once per crossing)


def section_limit() -> int:
    """How many sections may be live at once, under this process's descriptor limit now."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, int(soft * SECTION_FD_SHARE) // FDS_PER_SECTION)


def tag_text(tag: int) -> str:
    return "".join(chr(b) if 32 <= b < 127 else "." for b in tag.to_bytes(4, "little"))


def make_tag(text: str) -> int:
    """'Exmp' -> the ULONG a C compiler makes of the multi-char literal 'pmxE'."""
    return int.from_bytes(text.encode("latin-1")[:4].ljust(4, b" "), "little")


def _new_block(size: int):
    if size >= PAGE_SIZE:
        fd = os.memfd_create("ringzero-pool", os.MFD_CLOEXEC)
        length = -(-size // PAGE_SIZE) * PAGE_SIZE
        os.ftruncate(fd, length)
        block = SectionBlock(fd, length)
        block.memfd = fd
        block.requested = size
        return block
    block = PoolBlock(size)
    return block


def ExAllocatePoolWithTag(PoolType: int, NumberOfBytes: int, Tag: int | str):
    if isinstance(Tag, str):
        Tag = make_tag(Tag)
    global in_use, _refused_at, sections, _sections_refused
    if NumberOfBytes < 0 or NumberOfBytes > (1 << 31):
        return None
    section = NumberOfBytes >= PAGE_SIZE
    why = None
    with _lock:
        if in_use + NumberOfBytes > limit:
            # pool exhausted: NULL, which every driver must check for, as on NT
            if _refused_at != in_use:
                why = f"pool limit reached: {in_use} of {limit} bytes in use"
            _refused_at = in_use
            refused = True
        elif section and sections >= section_limit():
            if not _sections_refused:
                why = (f"section limit reached: {sections} blocks of a page or more live, each holding "
                       f"{FDS_PER_SECTION} of the kernel's descriptors")
            _sections_refused = refused = True
        else:
            in_use += NumberOfBytes
            sections += section
            refused = False
    if refused:
        if why:
            from ringzero.kernel import dbg
            dbg.emit(f"{why}; an allocation of {NumberOfBytes} bytes (tag {tag_text(Tag)!r}) fails",
                     level="warning")
        return None
    try:
        block = _new_block(max(1, NumberOfBytes))
    except OSError:
        with _lock:
            in_use -= NumberOfBytes
            sections -= section
        return None
    alloc = Allocation(next(_seq), Tag, NumberOfBytes, PoolType, current.driver)
    paged = 1 if PoolType & 1 else 0
    with _lock:
        _live[id(block)] = (block, alloc)
        t = _totals.setdefault((Tag, paged), [0, 0, 0])
        t[0] += 1
        t[2] += NumberOfBytes
    return block


def ExAllocatePool(PoolType: int, NumberOfBytes: int):
    return ExAllocatePoolWithTag(PoolType, NumberOfBytes, make_tag("None"))


def ExAllocatePool2(Flags: int, NumberOfBytes: int, Tag):
    return ExAllocatePoolWithTag(irpc.NonPagedPool, NumberOfBytes, Tag)


def ExFreePoolWithTag(P, Tag: int | str = 0) -> None:
    global in_use
    if isinstance(Tag, str):
        Tag = make_tag(Tag)
    with _lock:
        entry = _live.pop(id(P), None)
        if entry is None or entry[0] is not P:
            if entry is not None:
                _live[id(P)] = entry
            verifier.violation("BAD_POOL_CALLER", "freeing a block that is not allocated (double free?)")
        block, alloc = entry
        if Tag and Tag != alloc.tag:
            _live[id(P)] = entry
            verifier.violation("BAD_POOL_CALLER", f"freed with tag {tag_text(Tag)!r}, allocated with {tag_text(alloc.tag)!r}")
        t = _totals[(alloc.tag, 1 if alloc.pool_type & 1 else 0)]
        t[1] += 1
        t[2] -= alloc.size
        in_use -= alloc.size
    if isinstance(block, SectionBlock):
        _release_section(block)


def _release_section(block: SectionBlock) -> None:
    global sections, _sections_refused
    with _lock:
        sections -= 1
        _sections_refused = False
    try:
        block.close()
    except BufferError:
        pass  # a memoryview a driver still holds keeps the pages; the fd goes now
    try:
        os.close(block.memfd)
    except OSError:
        pass


def ExFreePool(P) -> None:
    ExFreePoolWithTag(P, 0)


def live_blocks_of(driver) -> list[Allocation]:
    with _lock:
        return [a for _, a in _live.values() if a.driver is driver]


def stats() -> list[dict]:
    """One row per (tag, pool): allocations, frees, bytes in use, and drivers."""
    with _lock:
        drivers: dict[tuple[int, int], set] = {}
        for _, a in _live.values():
            drivers.setdefault((a.tag, 1 if a.pool_type & 1 else 0), set()).add(getattr(a.driver, "name", "kernel"))
        return [{"tag": tag_text(tag), "type": "Paged" if paged else "Nonp", "allocs": t[0], "frees": t[1],
                 "diff": t[0] - t[1], "bytes": t[2], "drivers": sorted(drivers.get((tag, paged), ()))}
                for (tag, paged), t in sorted(_totals.items())]


def reclaim_driver(driver) -> None:
    """After a leak report: free what an unloaded driver left (its module is gone)."""
    global in_use
    with _lock:
        mine = [(k, b, a) for k, (b, a) in _live.items() if a.driver is driver]
        for k, _, a in mine:
            del _live[k]
            t = _totals[(a.tag, 1 if a.pool_type & 1 else 0)]
            t[1] += 1
            t[2] -= a.size
            in_use -= a.size
    for _, b, _ in mine:
        if isinstance(b, SectionBlock):
            _release_section(b)
