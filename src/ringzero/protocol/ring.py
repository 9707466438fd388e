"""Shared-memory frame rings: the fast path between a program and the kernel.

A program that can share memory with the kernel creates one region holding two
single-producer, single-consumer byte rings of wire frames (the same bytes the
socket carries): requests (program -> kernel) and responses (kernel -> program).
Each side spins briefly on the ring it consumes and then sleeps on an eventfd
that the producer writes after every frame, so an idle program costs nothing
and a busy one never enters the kernel to wait.  A frame may take up to half a
ring; larger frames, and frames that carry descriptors, go through the socket
(reads and writes that large usually leave their data in the program's buffer
instead: see wire.FLAG_USER_BUFFER).

Layout (native-endian u64 counters, each on its own cache line):

    0      magic, ring size
    64     request head   (written by the program)
    128    request tail   (written by the kernel)
    192    response head  (written by the kernel)
    256    response tail  (written by the program)
    320    request ring polled   (written by the kernel: 1 while it polls this ring)
    384    response ring waiting (written by the program: 1 while it sleeps on its doorbell)
    448    kernel CPU            (written by the kernel: the CPU its ring thread runs on, plus one; 0 when not known)
    4096   request ring data   (size bytes)
    4096 + size  response ring data (size bytes)

Heads and tails count bytes since the start and only grow; a frame starts on
an 8-byte boundary; a frame that would cross the end of the ring is preceded
by padding to the end (a header of kind 0, or nothing when fewer than a header's
bytes remain).  The consumer of a ring treats everything in it as untrusted:
a count out of range or a malformed header is a protocol error.

Doorbells are rung only for a consumer that needs them (waking a process on
another CPU is the costliest step of a round trip, and a write to an eventfd
nobody sleeps on is a syscall for nothing).  The kernel says, per program,
that it is polling the request ring; a program rings its request doorbell only
when it is not.  A program says that it is about to sleep on its response
doorbell; the kernel rings it only then.  Each flag is the consumer's word, so
a program that lies about its own flags only delays its own requests and
replies.  The handshake is Dekker's: the consumer stores its flag, fences, and
looks at the head once more before it sleeps; the producer stores the head,
fences, and reads the flag.  With a full fence on both sides one of them sees
the other's store, so no wakeup is lost.  `fence()` is a lock's acquire and
release, a locked read-modify-write instruction on x86-64 (CPython's locks
are built on atomic compare-and-exchange), and the plain loads and stores
rely on x86-64's ordering of stores otherwise; `supported()` says whether
this machine has it, and elsewhere the socket path is used.

Spinning only pays while the side spun on runs on another CPU.  A program
that spins on the CPU of the kernel's ring thread takes that CPU from the
very thread it waits for, so while few programs are busy (the other CPUs can
hold them all) the kernel says in each ring which CPU its ring thread is on,
and a program about to spin there moves to another of its CPUs first
(client.py).
"""

from __future__ import annotations

import ctypes
import platform
import struct
import threading

from ringzero.protocol.wire import HEADER, HEADER_SIZE, RemoteProtocolError

RING_MAGIC = 0x474E495231525A52  # "RZR1RING": the layout with doorbell flags
HEADER_BYTES = 4096
DEFAULT_SIZE = 256 * 1024
MIN_SIZE = 4096
MAX_SIZE = 1 << 20
OFF_MAGIC, OFF_SIZE = 0, 8
OFF_REQ_HEAD, OFF_REQ_TAIL, OFF_RESP_HEAD, OFF_RESP_TAIL = 64, 128, 192, 256
OFF_REQ_POLLED, OFF_RESP_WAITING = 320, 384
OFF_KERNEL_CPU = 448
PAD_KIND = 0

_U64 = struct.Struct("@Q")
_LENGTH_KIND = struct.Struct("<IH")      # the start of a frame's header


_KERNEL_CPU_I = OFF_KERNEL_CPU // 8
_fence_lock = threading.Lock()


def fence() -> None:
    """A full memory barrier (see the module's docstring): a store before it is
    seen by the other side before a load after it is made."""
    _fence_lock.acquire()
    _fence_lock.release()


def _cpu_getter():
    try:
        return ctypes.CDLL(None).sched_getcpu        # glibc's: the vDSO, no system call
    except (OSError, AttributeError):
        return lambda: -1


current_cpu = _cpu_getter()
"""The CPU this thread runs on now (-1 if not known)."""


def _counters(mv: memoryview) -> memoryview:
    """The header page as native u64 items.  Reading or assigning one item of a
    'Q' memoryview is a single 8-byte memcpy (one aligned load or store on
    x86-64).  struct.pack_into is not usable here: it zero-fills its target
    before writing, so a reader on the other side could see a counter of 0,
    and the little-endian formats go byte by byte."""
    return mv[:HEADER_BYTES].cast("Q")


def supported() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def region_size(ring_size: int) -> int:
    return HEADER_BYTES + 2 * ring_size


def init_region(mv: memoryview, ring_size: int) -> None:
    _U64.pack_into(mv, OFF_MAGIC, RING_MAGIC)
    _U64.pack_into(mv, OFF_SIZE, ring_size)


def check_region(mv: memoryview) -> int:
    """The ring size of a region a program handed us, validated."""
    if len(mv) < HEADER_BYTES:
        raise RemoteProtocolError("ring region too small")
    magic, size = _U64.unpack_from(mv, OFF_MAGIC)[0], _U64.unpack_from(mv, OFF_SIZE)[0]
    if magic != RING_MAGIC:
        raise RemoteProtocolError("ring region has a bad magic")
    if size < MIN_SIZE or size > MAX_SIZE or size & (size - 1) or len(mv) < region_size(size):
        raise RemoteProtocolError(f"ring size {size} is not a power of two in [{MIN_SIZE}, {MAX_SIZE}] that fits")
    return size


class Ring:
    """One direction.  The producer side uses `put`, the consumer side `get`;
    each side keeps its own position locally and trusts only that.  `flag_i`
    is this ring's doorbell flag (see the module's docstring for whose it is)."""

    __slots__ = ("ctl", "size", "mask", "data", "head_i", "tail_i", "flag_i", "pos", "max_frame", "_next", "_held")

    def __init__(self, mv: memoryview, ring_size: int, data_off: int, head_off: int, tail_off: int, producer: bool,
                 flag_off: int = 0):
        self.ctl = _counters(mv)
        self.flag_i = flag_off // 8
        self.size = ring_size
        self.mask = ring_size - 1
        self.data = mv[data_off:data_off + ring_size]
        self.head_i = head_off // 8
        self.tail_i = tail_off // 8
        self.pos = self.ctl[self.head_i if producer else self.tail_i]
        self.max_frame = ring_size // 2
        self._next = self.pos
        self._held = None        # a reserved frame's (position, offset, head size), until committed

    def release(self) -> None:
        self.data.release()
        self.ctl.release()

    # -- the doorbell flag ----------------------------------------------------------

    def flag(self) -> int:
        return self.ctl[self.flag_i]

    def set_flag(self, value: int) -> None:
        self.ctl[self.flag_i] = value

    def kernel_cpu(self) -> int:
        """The CPU the kernel's ring thread said it runs on, plus one; 0 if not known."""
        return self.ctl[_KERNEL_CPU_I]

    def set_kernel_cpu(self, cpu_plus_one: int) -> None:
        self.ctl[_KERNEL_CPU_I] = cpu_plus_one

    # -- producer ---------------------------------------------------------------

    def put(self, frame, body=b"") -> bool:
        """Append one whole frame, `frame` followed by `body` (so a large payload
        is copied once, straight into the ring); False if it is too large or
        does not fit now."""
        k = len(frame)
        n = k + len(body)
        total = (n + 7) & ~7
        place = self._place(total)
        if place is None:
            return False
        head, off = place
        if head != self.pos:
            self._pad()
        data = self.data
        data[off:off + k] = frame
        if body:
            data[off + k:off + n] = body
        head += total
        self.pos = head
        self.ctl[self.head_i] = head
        return True

    def _place(self, total: int) -> tuple[int, int] | None:
        """Where a frame of `total` bytes goes now: (its position, its offset);
        a position past this one means the frame starts at the ring's front,
        the rest of the ring padded out first (_pad).  None if it does not fit."""
        if total > self.max_frame:
            return None
        size = self.size
        head = self.pos
        used = head - self.ctl[self.tail_i]
        if used < 0 or used > size:
            raise RemoteProtocolError("the consumer moved the ring's tail out of range")
        off = head & self.mask
        room = size - off
        if room < total:
            if size - used < room + total:
                return None
            return head + room, 0
        if size - used < total:
            return None
        return head, off

    def _pad(self) -> None:
        """Mark the rest of the ring from here unused (the next frame is at its front)."""
        off = self.pos & self.mask
        room = self.size - off
        if room >= HEADER_SIZE:
            HEADER.pack_into(self.data, off, room - HEADER_SIZE, PAD_KIND, 0, 0, 0, 0)

    def reserve(self, k: int, n: int) -> memoryview | None:
        """Room for one frame of a `k`-byte head and up to `n` bytes of body,
        the body's room returned to be written in place; None if it does not
        fit now.  Nothing is given to the consumer until `commit`, and nothing
        may be put meanwhile (the producer's caller holds other frames back);
        a reservation that is not committed is simply dropped."""
        place = self._place((k + n + 7) & ~7)
        if place is None:
            return None
        head, off = place
        self._held = (head, off, k)       # (the padding, if any, is written at commit)
        return self.data[off + k:off + k + n]

    def commit(self, frame: bytes, used: int) -> None:
        """Publish the reserved frame: its head `frame` (the `k` bytes
        reserved) before the `used` bytes of body written in its room."""
        head, off, k = self._held
        self._held = None
        if head != self.pos:
            self._pad()
        self.data[off:off + k] = frame
        head += (k + used + 7) & ~7
        self.pos = head
        self.ctl[self.head_i] = head

    # -- consumer ---------------------------------------------------------------

    def pending(self) -> bool:
        return self.ctl[self.head_i] != self.pos

    def peek(self) -> memoryview | None:
        """The next frame where it lies in the ring, or None when the ring is
        empty.  The producer may not reuse its bytes until `advance()`; the
        view is only as trustworthy as the producer (check before use)."""
        while True:
            tail = self.pos
            head = self.ctl[self.head_i]
            if head == tail:
                return None
            avail = head - tail
            size = self.size
            if avail < 0 or avail > size:
                raise RemoteProtocolError(f"the producer moved the ring's head out of range (head {head}, tail {tail})")
            off = tail & self.mask
            room = size - off
            if room < HEADER_SIZE:
                self._advance(tail + room)
                continue
            data = self.data
            length, kind = _LENGTH_KIND.unpack_from(data, off)
            if kind == PAD_KIND:
                if length != room - HEADER_SIZE:
                    raise RemoteProtocolError("malformed ring padding")
                self._advance(tail + room)
                continue
            n = HEADER_SIZE + length
            total = (n + 7) & ~7
            if n > room or total > avail:
                raise RemoteProtocolError(f"ring frame of {length} bytes overruns the ring")
            self._next = tail + total
            return data[off:off + n]

    def advance(self) -> None:
        """Done with the frame `peek` returned: its room goes back to the producer."""
        self._advance(self._next)

    def get(self) -> bytes | None:
        """The next frame's bytes (a private copy), or None when the ring is empty."""
        view = self.peek()
        if view is None:
            return None
        frame = bytes(view)
        if struct.unpack_from("<I", frame)[0] != len(frame) - HEADER_SIZE:
            raise RemoteProtocolError("ring frame changed while it was read")
        self.advance()
        return frame

    def _advance(self, pos: int) -> None:
        self.pos = pos
        self.ctl[self.tail_i] = pos


def program_side(mv: memoryview, ring_size: int) -> tuple[Ring, Ring]:
    """(requests to produce, responses to consume)."""
    req = Ring(mv, ring_size, HEADER_BYTES, OFF_REQ_HEAD, OFF_REQ_TAIL, producer=True, flag_off=OFF_REQ_POLLED)
    resp = Ring(mv, ring_size, HEADER_BYTES + ring_size, OFF_RESP_HEAD, OFF_RESP_TAIL, producer=False,
                flag_off=OFF_RESP_WAITING)
    return req, resp


def kernel_side(mv: memoryview, ring_size: int) -> tuple[Ring, Ring]:
    """(requests to consume, responses to produce)."""
    req = Ring(mv, ring_size, HEADER_BYTES, OFF_REQ_HEAD, OFF_REQ_TAIL, producer=False, flag_off=OFF_REQ_POLLED)
    resp = Ring(mv, ring_size, HEADER_BYTES + ring_size, OFF_RESP_HEAD, OFF_RESP_TAIL, producer=True,
                flag_off=OFF_RESP_WAITING)
    return req, resp
