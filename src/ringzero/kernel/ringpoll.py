"""The kernel's side of the shared-memory rings: one poller for all programs.

CPython runs one thread at a time, so one thread serving every program's
request ring is as fast as many and never fights itself for the interpreter.
It dispatches each request right where it finds it, in the requesting
program's context; it spins on the rings that were busy a moment ago (their
programs see the ring's polled flag and ring no doorbell), giving its CPU to
anything else runnable there between two looks, and sleeps in epoll on the
programs' doorbells otherwise.  If a dispatch blocks,
the poller role passes to a fresh thread before it parks (as a connection's
reader role does), so one slow driver call never stalls the other programs.
"""

from __future__ import annotations

import mmap
import os
import select
import sys
import threading
import time

from ringzero.kernel import dbg, system
from ringzero.kernel.context import current
from ringzero.kernel.ke import dispatcher as ke
from ringzero.protocol import ring as rings
from ringzero.protocol import wire

_KERNEL = wire.Role.KERNEL
_READ_FILE = wire.K.READ_FILE            # < 256: a kind's low byte is the kind, its high byte 0
_WRITE_FILE = wire.K.WRITE_FILE
_USER_BUFFER = wire.FLAG_USER_BUFFER
_OVERLAPPED = wire.FLAG_OVERLAPPED
_READ_FRAME = wire.READ_FRAME
_WRITE_HEAD = wire.WRITE_HEAD
_WRITE_FIXED = wire.WRITE_HEAD.size
_SPLIT_MIN = 4096                        # smaller writes are copied whole, as any other frame
SPIN_SECONDS = 200e-6
# While it spins, the poller gives its CPU away (sched_yield) after every few
# empty looks, not after each: a look costs a fraction of a microsecond, a
# yield a system call, and on its own CPU, as it usually is, a yield there
# only slows the next request down (yielding after each look cost the Example
# stream a third of its rate on 2026-12-02: medians 0.74 against 1.12 GB/s,
# eight looks a yield faster in 10 of 11 interleaved rounds).
LOOKS_PER_YIELD = 8
SCAN_SECONDS = 500e-6     # while busy, how often to look for other programs' doorbells
CPU_SECONDS = 200e-6      # how often to tell the hot rings' programs which CPU this thread is on (ring.py)
KEEP_OFF_PER_CPU = 2      # busy programs per other CPU up to which they are asked to keep off this thread's
_CPUS = len(os.sched_getaffinity(0))
MAX_BATCH = 64
SWITCH_INTERVAL = 50e-6   # let a spinning thread hand over the interpreter quickly
MAX_SPARE = 16            # parked threads kept for the next handoff
# A driver routine that blocks without a Ke wait (time.sleep, a lock of its
# own, a long computation) would hold every program's rings with it: one whose
# dispatch has run this long has its poller role handed on, as a Ke wait does.
# (The watch looks twice that often; looking every 25 ms cost the Example
# stream about a tenth of its rate in interleaved runs, every 250 ms nothing
# measurable.)
STUCK_SECONDS = 0.5


class _Spare:
    __slots__ = ("wake", "token")

    def __init__(self):
        self.wake = threading.Lock()
        self.wake.acquire()
        self.token = None


class Channel:
    """One program's rings as the kernel holds them.

    Invariant: while registered, `req_efd` is in the poller's epoll set and
    `conn.ring_resp` is this channel's response ring."""

    def __init__(self, conn, region: mmap.mmap, ring_size: int, req_efd: int, resp_efd: int):
        self.conn = conn
        self.region = region
        mv = memoryview(region)
        self.mv = mv
        self.req, self.resp = rings.kernel_side(mv, ring_size)
        self.req_efd = req_efd
        self.resp_efd = resp_efd
        self.closed = False
        self.in_place = False    # a write is being served where it lies in the request ring

    def ring_doorbell(self) -> None:
        """After a response is put: wake the program if it said it sleeps (ring.py)."""
        rings.fence()
        if self.resp.flag():
            os.eventfd_write(self.resp_efd, 1)

    def close(self) -> None:
        """Close the doorbells; the mapping goes when the last reference to it
        does (the poller may still hold one for a moment)."""
        if self.closed:
            return
        self.closed = True
        for fd in (self.req_efd, self.resp_efd):
            try:
                os.close(fd)
            except OSError:
                pass


def _drain(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except (BlockingIOError, OSError):
        pass


class Poller:
    def __init__(self):
        self.ep = select.epoll()
        self.channels: dict[int, Channel] = {}
        self.hot: list[Channel] = []
        self.lock = threading.RLock()
        self.token = None
        self.spare: list[_Spare] = []
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.ep.register(self.wake_fd, select.EPOLLIN)
        self.stopped = False
        self.cpu = 0              # the CPU the polling thread last ran on, plus one
        self.serving = None       # the token of the poller now in _service (None: none is)
        self.services = 0         # _service calls so far (the watch tells one long call from many)
        self.watch: threading.Thread | None = None

    def register(self, ch: Channel) -> None:
        with self.lock:
            self.channels[ch.req_efd] = ch
            self.ep.register(ch.req_efd, select.EPOLLIN)
            if self.token is None:
                if sys.getswitchinterval() > SWITCH_INTERVAL:
                    sys.setswitchinterval(SWITCH_INTERVAL)
                self._start()
            if self.watch is None:
                w = threading.Thread(target=self._watch, name="ringzero-poller-watch", daemon=True)
                try:
                    w.start()
                    self.watch = w
                except RuntimeError:
                    pass          # (then only Ke waits hand the role on)
        os.eventfd_write(ch.req_efd, 1)  # look at it once now

    def unregister(self, ch: Channel) -> None:
        with self.lock:
            if self.channels.pop(ch.req_efd, None) is not None:
                try:
                    self.ep.unregister(ch.req_efd)
                except (OSError, ValueError):
                    pass
        os.eventfd_write(self.wake_fd, 1)

    def stop(self) -> None:
        self.stopped = True
        self.token = None
        os.eventfd_write(self.wake_fd, 1)
        with self.lock:
            spare, self.spare = self.spare, []
        for w in spare:
            w.wake.release()

    def _start(self) -> bool:
        """Give the poller role to a parked thread, or a new one; False if there
        is none to be had (the system's limit on threads), the role then nobody's."""
        token = object()
        self.token = token
        with self.lock:
            w = self.spare.pop() if self.spare else None
        if w is not None:
            w.token = token
            w.wake.release()
            return True
        try:
            threading.Thread(target=self._thread, args=(token,), name="ringzero-poller", daemon=True).start()
        except RuntimeError as e:
            self.token = None
            dbg.emit(f"cannot start a ring poller thread ({e}); the rings wait for the one that blocked",
                     level="fault", source="kernel")
            return False
        return True

    def _thread(self, token) -> None:
        """Poll while this thread holds the role; after a handoff, park for the next one."""
        while token is not None and not self.stopped:
            self._run(token)
            w = _Spare()
            with self.lock:
                if len(self.spare) >= MAX_SPARE or self.stopped:
                    return
                self.spare.append(w)
            w.wake.acquire()
            token = w.token

    def _watch(self) -> None:
        """Hand the poller role on from a dispatch stuck outside any Ke wait:
        one in _service at two looks STUCK_SECONDS/2 apart, with no other
        _service call between them."""
        seen = None
        while not self.stopped:
            time.sleep(STUCK_SECONDS / 2)
            token = self.serving
            now = (token, self.services)
            if token is None or token is not self.token or now != seen:
                seen = now
                continue
            seen = None
            with self.lock:
                if self.serving is token and token is self.token and not self.stopped and not self._start():
                    self.token = token    # nobody to hand it to: the stuck thread keeps the role

    def _on_block(self) -> None:
        mine = current.poller_token
        if mine is not None and mine is self.token and not self.stopped:
            current.poller_token = None
            if not self._start():
                # nobody to hand the role to: this thread keeps it, and the rings
                # are served again once its dispatch returns
                self.token = current.poller_token = mine

    def _run(self, token) -> None:
        current.poller_token = token
        current.connection = None
        ke.set_block_hook(self._on_block)
        while self.token is token:
            try:
                self._loop(token)
            except BaseException as e:  # a bug of ours must not stop every program's fast path
                dbg.fault("ring poller", e)

    def _loop(self, token) -> None:
        hot = self.hot
        yield_cpu = os.sched_yield
        fence = rings.fence
        last_work = last_scan = next_cpu = time.perf_counter()
        idle = 0
        while self.token is token:
            did = False
            if last_work - last_scan > SCAN_SECONDS:
                # busy with the hot rings: look for programs that rang since, so
                # a stream of requests from one never starves the others
                last_scan = last_work
                self._scan(hot)
            for ch in list(hot):
                if ch.closed:
                    hot.remove(ch)
                    continue
                if ch.req.pending() and not ch.in_place:
                    did = True
                    self._service(ch)
                    if self.token is not token:
                        return   # a dispatch blocked; another thread polls now
            now = time.perf_counter()
            if now >= next_cpu:
                next_cpu = now + CPU_SECONDS
                self._tell_cpu(hot)
            if did:
                last_work = now
                continue
            if now - last_work < SPIN_SECONDS:
                idle += 1
                if not idle % LOOKS_PER_YIELD:
                    yield_cpu()
                continue
            # about to sleep: the programs must ring again, then one more look (ring.py)
            for ch in hot:
                ch.req.set_flag(0)
                ch.req.set_kernel_cpu(0)
            fence()
            for ch in hot:
                if not ch.closed:
                    _drain(ch.req_efd)
                    if ch.req.pending() and not ch.in_place:
                        did = True
            if did:
                for ch in hot:
                    ch.req.set_flag(1)
                self._tell_cpu(hot)
                continue
            hot.clear()
            if not self._scan(hot, None):
                return
            last_work = last_scan = time.perf_counter()

    def _tell_cpu(self, hot: list) -> None:
        """Say in each hot ring which CPU this thread is on now, while so few
        programs are busy that the other CPUs hold them all (ring.py); else
        nothing, and they stay where the scheduler put them."""
        cpu = rings.current_cpu() + 1 if len(hot) <= KEEP_OFF_PER_CPU * (_CPUS - 1) else 0
        self.cpu = cpu
        for ch in hot:
            ch.req.set_kernel_cpu(cpu)

    def _scan(self, hot: list, timeout: float | None = 0) -> bool:
        """Add the channels whose doorbell rang to `hot`, waiting up to
        `timeout` for one; False if the poller role moved on meanwhile."""
        token = self.token
        try:
            events = self.ep.poll(timeout)
        except InterruptedError:
            return True
        if self.token is not token:
            return False
        for fd, _ in events:
            if fd == self.wake_fd:
                _drain(fd)
                continue
            ch = self.channels.get(fd)
            if ch is not None and not ch.closed and ch not in hot:
                _drain(fd)         # (a hot ring's doorbell is drained before the poller sleeps)
                ch.req.set_flag(1)
                ch.req.set_kernel_cpu(self.cpu)
                hot.append(ch)
        return True

    def _in_place(self, ch: Channel, conn, rid: int, tid: int, h: int, offset: int, data) -> bool:
        """conn.write_in_place, the frame still in the ring meanwhile: should
        the driver block all the same, the poller role passes on and the new
        poller leaves this ring alone (Channel.in_place) until it is done."""
        token = self.token
        ch.in_place = True
        try:
            return conn.write_in_place(rid, tid, h, offset, data)
        finally:
            ch.in_place = False
            if self.token is not token and not ch.closed:
                try:
                    os.eventfd_write(ch.req_efd, 1)     # the poller now: look at this ring again
                except OSError:
                    pass

    def _service(self, ch: Channel) -> None:
        token = self.token        # a dispatch that blocks hands the role on: a new token (_start)
        self.serving = token
        self.services += 1
        conn = ch.conn
        proc = conn.process
        current.process = proc
        me = threading.get_ident()
        dispatching = conn.dispatching
        dispatching.add(me)      # rundown alerts this thread while it works for the program
        try:
            req = ch.req
            max_payload = conn.host.max_payload
            for _ in range(MAX_BATCH):
                view = req.peek()
                if view is None:
                    return
                # Every byte of the frame is read once, here, before the program may
                # reuse its room; what was read is checked after, as the program could
                # have changed it meanwhile.  The two requests a stream is made of are
                # taken apart at once (no Frame, no generic dispatch): a read's fields,
                # and a write's fields and data, the data straight into what becomes
                # its system buffer (the I/O manager's capture).  Anything else is
                # copied whole and decoded.
                n = len(view)
                kind = view[4] if not view[5] else 0
                if kind == _READ_FILE and n == _READ_FRAME.size:
                    length, _, flags, nfds, tid, rid, h, size, offset, addr, event = _READ_FRAME.unpack(view)
                    req.advance()
                    if length != n - wire.HEADER_SIZE or nfds:
                        raise wire.RemoteProtocolError("malformed READ_FILE frame")
                    conn.serve_read(rid, tid, flags, h, size, offset, addr, event)
                elif kind == _WRITE_FILE and n > _SPLIT_MIN and not view[6] & _USER_BUFFER:
                    length, _, flags, nfds, tid, rid, h, offset, addr, event = _WRITE_HEAD.unpack_from(view)
                    if length != n - wire.HEADER_SIZE or length > max_payload or nfds or flags & _USER_BUFFER:
                        raise wire.RemoteProtocolError("malformed WRITE_FILE frame")
                    data = view[_WRITE_FIXED:]
                    if not (event or flags & _OVERLAPPED) and self._in_place(ch, conn, rid, tid, h, offset, data):
                        req.advance()
                    else:
                        data = bytearray(data)
                        req.advance()
                        conn.serve_write(rid, tid, flags, h, offset, addr, event, data)
                else:
                    data = bytes(view)
                    req.advance()
                    conn.serve(wire.decode_ring_frame(data, _KERNEL, max_payload))
                current.process = proc     # whatever a driver left attached
                if self.token is not token:
                    return
        except wire.ProtocolError as e:
            system.get().counters["protocol_errors"] += 1
            dbg.emit(f"protocol error in the ring of pid {proc.pid if proc else '?'}: {e}; connection closed",
                     level="fault", source="kernel")
            self.unregister(ch)
            ch.closed = True
            conn.abort()
        except BaseException as e:  # a bug of ours must not take the poller down
            if not ch.closed:    # (a ring closed under us by rundown is not one)
                dbg.fault("ring poller", e)
        finally:
            dispatching.discard(me)
            if self.serving is token:
                self.serving = None


poller: Poller | None = None


def get_poller() -> Poller:
    global poller
    if poller is None:
        poller = Poller()
    return poller


def attach(conn, region_fd: int, req_efd: int, resp_efd: int) -> Channel:
    """Map a program's ring region and start serving it; raises ProtocolError."""
    try:
        size = os.fstat(region_fd).st_size
        if size < rings.HEADER_BYTES or size > rings.region_size(rings.MAX_SIZE):
            raise wire.RemoteProtocolError(f"ring region of {size} bytes is out of bounds")
        region = mmap.mmap(region_fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as e:
        raise wire.RemoteProtocolError(f"cannot map the ring region: {e}") from None
    finally:
        os.close(region_fd)
    try:
        ring_size = rings.check_region(memoryview(region))
        os.set_blocking(req_efd, False)
    except Exception:
        region.close()
        raise
    return Channel(conn, region, ring_size, req_efd, resp_efd)
