"""A program's connection to the kernel: one per process, shared by its threads.

Requests carry ids, so any number of threads (and overlapped operations) can
have requests in flight.  There is no receiver thread: whichever waiting
thread holds the receive role reads frames and hands each to its owner, so a
single-threaded call costs one send and one receive.  Kernel upcalls (map a
section's view into this process, unmap it) are answered by whoever is
reading at the time, during the driver's dispatch.
"""

from __future__ import annotations

import array
import atexit
import ctypes
import ctypes.util
import itertools
import json
import mmap
import os
import select
import socket
import subprocess
import sys
import threading
import time

from ringzero import paths
from ringzero.nt import status as st
from ringzero.nt.strings import upcase
from ringzero.protocol import ring as rings
from ringzero.protocol import wire
from ringzero.protocol.wire import K

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_FAILED = ctypes.c_void_p(-1).value

STATUS_SUCCESS = 0
STATUS_PENDING = 0x103
STATUS_NO_MEMORY = 0xC0000017
STATUS_INVALID_PARAMETER = 0xC000000D
# A waiting program spins this long on its response ring before it sleeps,
# giving its CPU to anything else runnable there between two looks (waking a
# sleeping process from another CPU costs the waker several microseconds and
# the sleeper tens on a virtual machine, longer than most answers take).
# After a few waits in a row that the spin did not cover (the requests pend,
# or the kernel is busy), it sleeps at once until an answer again comes
# within the spin time, so a program that waits for long costs nothing.
SPIN_SECONDS = 500e-6
SPIN_MISSES_TO_STOP = 2
# A program about to spin on the CPU the kernel's ring thread is on would only
# take that CPU from it: it moves itself to another of its CPUs instead, at most
# this often (its affinity mask is changed and at once set back as it was, so
# the scheduler may put it anywhere later).  RINGZERO_MOVE=0 turns this off.
MOVE_SECONDS = 0.05
MOVE_OFF_KERNEL_CPU = os.environ.get("RINGZERO_MOVE", "1") != "0"
ENV_RING = "RINGZERO_RING"   # "0" keeps a program on the socket path
# Read and write data larger than a ring frame takes (or, with no ring, than
# this) stays in the program's buffer for the kernel to copy, when it can.
SOCKET_INLINE_LIMIT = 64 * 1024
RING_FIXED_PART = 64        # room for any request's or reply's fixed fields
ENV_USER_BUFFERS = "RINGZERO_USER_BUFFERS"   # "0": read and write data always travel in the frames


_PROGRAM = wire.Role.PROGRAM
_REPLY = K.REPLY
_REPLY_HEAD = wire.REPLY_HEAD                # a REPLY's header and fixed part
_REPLY_FIXED = _REPLY_HEAD.size
_tls = threading.local()


def _thread_id() -> int:
    """This thread's Linux tid (a request says which thread issued it), asked once per thread."""
    try:
        return _tls.tid
    except AttributeError:
        _tls.tid = tid = threading.get_native_id()
        return tid


class KernelNotRunning(ConnectionError):
    pass


class KernelGone(ConnectionError):
    """The kernel closed the connection (it stopped, or found us misbehaving)."""


class _Slot:
    __slots__ = ("done", "pending", "status", "info", "data", "sink", "push", "event", "keep")

    def __init__(self):
        self.done = False
        self.pending = False
        self.status = 0
        self.info = 0
        self.data = b""
        self.sink = None     # a writable buffer the reply's data is copied into (overlapped reads)
        self.push = None     # a list collecting PUSH payloads (subscriptions)
        self.keep = None     # holds a buffer the kernel writes into until the reply says it is done


class Connection:
    """Invariant: `_slots` has an entry for every request sent and not yet
    answered; only the holder of `_recv_lock` reads the socket; every change
    to a slot, and every release of `_recv_lock`, is announced on `_cv` when
    `_sleepers` (the threads in `_cv.wait`) is not 0.  A sleeper counts itself
    and then looks at what it waits for, both under `_cv`'s lock; the one who
    changes it does so and then reads the count, so one of them sees the other."""

    def __init__(self, path: str | None = None):
        self.path = path or paths.default_socket_path()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            s.close()
            raise KernelNotRunning(
                f"no ringzero kernel is running at {self.path} ({e.strerror}); start one with "
                f"`ringzero kernel`, or set {paths.ENV_SOCKET} to where one listens") from None
        self.sock = s
        self.pid = os.getpid()
        self.proto = wire.Connection(wire.Role.PROGRAM)
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._cv = threading.Condition(threading.Lock())
        self._sleepers = 0
        self._slots: dict[int, _Slot] = {}
        self._rid = itertools.count(1)
        self._buf = bytearray(256 * 1024)
        self._views: dict[int, int] = {}
        self.closed = False
        self.requests_sent = 0
        self._socket_frames = self._hints = 0
        self._spin_misses = 0
        self._moved_at = -MOVE_SECONDS
        self._send(self.proto.send(wire.hello()))
        while self.proto.state is not wire.State.READY:
            self._read_socket()
        f = self._welcome
        _, _, _, self.kernel_pid, self.program_pid, self.max_payload = wire.WELCOME.unpack_from(f.payload)
        from ringzero.kernel.mm.user import set_ptracer
        set_ptracer(self.kernel_pid)
        self.req_ring = self.resp_ring = None
        self._poll = select.poll()
        self._poll.register(self.sock, select.POLLIN)
        self.user_buffers = False
        self.max_ring_body = SOCKET_INLINE_LIMIT
        if os.environ.get(ENV_USER_BUFFERS, "1") != "0":
            self._offer_memory()
        if rings.supported() and os.environ.get(ENV_RING, "1") != "0":
            self._attach_ring()

    def _offer_memory(self) -> None:
        """Show the kernel 8 bytes of ours; if it can read them, large reads and
        writes leave their data in our buffers for it to copy (FLAG_USER_BUFFER)."""
        probe = bytearray(os.urandom(8))
        owner = ctypes.c_char.from_buffer(probe)
        payload = wire.OFFER_MEMORY.pack(ctypes.addressof(owner), int.from_bytes(probe, "little"))
        status, _, _ = self.request(K.OFFER_MEMORY, payload)
        del owner
        self.user_buffers = status == STATUS_SUCCESS

    def _attach_ring(self, size: int = rings.DEFAULT_SIZE) -> None:
        """Offer the kernel a shared-memory region of two rings and two doorbells."""
        fd = os.memfd_create("ringzero-ring", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, rings.region_size(size))
            self._region = mmap.mmap(fd, rings.region_size(size))
            mv = memoryview(self._region)
            rings.init_region(mv, size)
            self._req_efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._resp_efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            rid = next(self._rid)
            slot = _Slot()
            self._slots[rid] = slot
            frame = wire.Frame(K.ATTACH_RING, rid, b"", fds=[fd, self._req_efd, self._resp_efd])
            self._send(wire.encode(frame), frame.fds)
        finally:
            os.close(fd)
        while not slot.done:
            self._pump_socket()
        if slot.status != STATUS_SUCCESS:
            return
        self.req_ring, self.resp_ring = rings.program_side(mv, size)
        # the largest read or write data that still fits a frame in either ring
        self.max_ring_body = self.req_ring.max_frame - wire.HEADER_SIZE - RING_FIXED_PART
        self._poll.register(self._resp_efd, select.POLLIN)
        self._socket_frames = self._hints = 0   # from here on the kernel hints each socket frame

    # -- sending -------------------------------------------------------------

    def _send(self, data: bytes, fds=()) -> None:
        try:
            with self._send_lock:
                if fds:
                    self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                else:
                    self.sock.sendall(data)
        except OSError as e:
            self._broken()
            raise KernelGone(f"the ringzero kernel connection is broken: {e}") from None

    def start(self, kind: int, payload: bytes, flags: int = 0, sink=None, push=None,
              body=b"", keep=None) -> tuple[int, _Slot]:
        """Send one request, `payload` followed by `body` (a large body is copied
        once, into the ring or the socket); its slot fills when the reply comes.
        With `sink`, a writable buffer, the reply's data is copied into it (and
        not kept in the slot)."""
        if self.closed:
            raise KernelGone("the ringzero kernel connection is closed")
        rid = next(self._rid)
        slot = _Slot()
        if len(payload) + len(body) > self.max_payload:
            # More than one frame may carry (an IOCTL's input travels in its
            # frame): refused here, as the I/O manager refuses a system buffer
            # it cannot allocate; sent, it would be the kernel's protocol error
            # and cost this program its connection.
            slot.done = True
            slot.status = st.STATUS_INSUFFICIENT_RESOURCES
            return rid, slot
        slot.sink = sink
        slot.push = push
        slot.keep = keep
        self._slots[rid] = slot
        self.requests_sent += 1
        data = wire.HEADER.pack(len(payload) + len(body), kind, flags, 0, _thread_id(), rid) + payload
        ring = self.req_ring
        if ring is not None:
            lock = self._send_lock
            lock.acquire()
            try:
                if ring.put(data, body):
                    rings.fence()
                    if not ring.flag():       # the kernel is not polling our ring: ring its doorbell
                        os.eventfd_write(self._req_efd, 1)
                    return rid, slot
            except wire.ProtocolError as e:
                # (another process has used these rings: a fork that ran no Python fork hooks)
                self._slots.pop(rid, None)
                self._broken()
                raise KernelGone(f"the request ring is corrupt: {e}") from None
            finally:
                lock.release()
        self._send(data + body if body else data)
        return rid, slot

    def request(self, kind: int, payload: bytes, flags: int = 0, sink=None, body=b"",
                keep=None) -> tuple[int, int, bytes]:
        """Send one request and wait for its final reply: (status, information, data)."""
        rid, slot = self.start(kind, payload, flags, sink, None, body, keep)
        self.wait(slot)
        return slot.status, slot.info, slot.data

    def call(self, method: str, **args):
        status, _, data = self.request(K.CALL, json.dumps({"method": method, "args": args}).encode())
        body = json.loads(data or b"{}")
        if status & 0xC0000000 == 0xC0000000:
            raise CallFailed(status, body.get("message", ""), body.get("winerror"))
        return body.get("result")

    # -- receiving --------------------------------------------------------------

    def wait(self, slot: _Slot, until_pending: bool = False, timeout: float | None = None) -> bool:
        """Until `slot` is answered (or, with `until_pending`, went pending)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (slot.done or (until_pending and slot.pending)):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if self._recv_lock.acquire(False):
                try:
                    if slot.done or (until_pending and slot.pending):
                        break
                    self._pump(None if deadline is None else max(0.0, deadline - time.monotonic()))
                finally:
                    self._recv_lock.release()
                    if self._sleepers:
                        self._announce()
            else:
                with self._cv:
                    self._sleepers += 1
                    try:
                        if not (slot.done or (until_pending and slot.pending)) and self._recv_lock.locked():
                            self._cv.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                    finally:
                        self._sleepers -= 1
        return True

    def _announce(self) -> None:
        if self._sleepers:
            with self._cv:
                self._cv.notify_all()

    def _pump(self, timeout: float | None = None) -> None:
        """Deliver what has arrived, waiting up to `timeout` for something.
        Holder of _recv_lock only."""
        if self.closed:
            raise KernelGone("the ringzero kernel connection is closed")
        ring = self.resp_ring
        if ring is not None:
            start = time.perf_counter()
            if self._spin_misses < SPIN_MISSES_TO_STOP:
                if MOVE_OFF_KERNEL_CPU:
                    kernel_cpu = ring.kernel_cpu()
                    if kernel_cpu and kernel_cpu == rings.current_cpu() + 1:
                        self._move_off(kernel_cpu - 1, start)
                spin_until = start + SPIN_SECONDS
                yield_cpu = os.sched_yield
                pending = ring.pending
                clock = time.perf_counter
                while True:
                    if pending() and self._drain_ring():
                        self._spin_misses = 0
                        return
                    if clock() > spin_until:
                        break
                    yield_cpu()
                self._spin_misses += 1
            # about to sleep: ask for the doorbell, then look once more (ring.py)
            ring.set_flag(1)
            rings.fence()
            try:
                os.eventfd_read(self._resp_efd)
            except BlockingIOError:
                pass
            if self._drain_ring():
                ring.set_flag(0)
                if time.perf_counter() - start < SPIN_SECONDS:
                    self._spin_misses = 0     # it came as soon as a spin would have caught it
                return
        try:
            ready = self._poll.poll(None if timeout is None else int(timeout * 1000))
        finally:
            if ring is not None:
                ring.set_flag(0)
        for fd, _ in ready:
            if fd == self.sock.fileno():
                self._pump_socket()
        if ring is not None and self._drain_ring() and time.perf_counter() - start < SPIN_SECONDS:
            self._spin_misses = 0     # that answer came soon enough for a spin to have caught it

    def _move_off(self, cpu: int, now: float) -> None:
        """About to spin on the CPU the kernel's ring thread runs on: move this
        thread to another CPU it may run on, once in a while (ring.py)."""
        if now - self._moved_at < MOVE_SECONDS:
            return
        self._moved_at = now
        try:
            mask = os.sched_getaffinity(0)
            if len(mask) < 2 or cpu not in mask:
                return
            os.sched_setaffinity(0, mask - {cpu})    # the scheduler moves this thread off `cpu` at once
            os.sched_setaffinity(0, mask)            # and its mask is its own again
        except OSError:
            pass

    def _drain_ring(self) -> bool:
        ring = self.resp_ring
        got = False
        while True:
            try:
                view = ring.peek()
                if view is None:
                    return got
                if len(view) >= _REPLY_FIXED and view[4] == _REPLY and not view[5] and not view[7]:
                    # the common case, a reply, delivered where it lies with no Frame made
                    length, _, _, _, _, rid, status, info = _REPLY_HEAD.unpack_from(view)
                    if length != len(view) - wire.HEADER_SIZE:
                        raise wire.RemoteProtocolError("ring frame length does not match")
                    got = True
                    try:
                        self._deliver_reply(rid, status, info, view, _REPLY_FIXED)
                    finally:
                        ring.advance()
                    if not ring.pending():
                        return True
                    continue
                # delivered where it lies: _deliver copies what it keeps
                f = wire.decode_ring_frame(view, _PROGRAM)
            except wire.ProtocolError as e:
                self._broken()
                raise KernelGone(f"the response ring is corrupt: {e}") from None
            got = True
            try:
                if f.kind == K.SOCKET_HINT:
                    # a frame the kernel sent by the socket; it may have been read already
                    self._hints += 1
                    while self._socket_frames < self._hints:
                        self._read_socket()
                else:
                    self._deliver(f)
            finally:
                f.payload = b""
                ring.advance()

    def _pump_socket(self) -> None:
        self._read_socket()

    def _read_socket(self) -> bool:
        try:
            n, anc, _flags, _ = self.sock.recvmsg_into([self._buf], socket.CMSG_SPACE(wire.MAX_FDS * 4 * 4))
        except socket.timeout:
            raise
        except OSError as e:
            self._broken()
            raise KernelGone(f"the ringzero kernel connection is broken: {e}") from None
        fds = []
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(cdata[:len(cdata) - len(cdata) % a.itemsize])
                fds.extend(a)
        if n == 0:
            self._broken()
            raise KernelGone("the ringzero kernel closed the connection")
        self.proto.receive_data(memoryview(self._buf)[:n], fds)
        got = False
        while True:
            f = self.proto.next_frame()
            if f is None:
                return got
            got = True
            self._socket_frames += 1
            self._deliver(f)

    def _deliver_reply(self, rid: int, status: int, info: int, frame, data_off: int) -> None:
        """A REPLY: its data is frame[data_off:]."""
        slot = self._slots.pop(rid, None)
        if slot is None:
            return
        slot.status, slot.info = status, info
        slot.keep = None
        n = len(frame) - data_off
        if n:
            if slot.sink is not None:
                memoryview(slot.sink).cast("B")[:n] = frame[data_off:]
            else:
                slot.data = bytes(frame[data_off:])
        slot.done = True
        if self._sleepers:
            self._announce()

    def _deliver(self, f: wire.Frame) -> None:
        kind = f.kind
        if kind == K.REPLY:
            status, info = wire.REPLY.unpack_from(f.payload)
            self._deliver_reply(f.rid, status, info, f.payload, wire.REPLY.size)
        elif kind == K.PENDING:
            slot = self._slots.get(f.rid)
            if slot is not None:
                slot.pending = True
                self._announce()
        elif kind == K.PUSH:
            slot = self._slots.get(f.rid)
            if slot is not None and slot.push is not None:
                slot.push.append(bytes(f.payload))
                self._announce()
        elif kind == K.MAP_VIEW:
            self._map_view(f)
        elif kind == K.UNMAP_VIEW:
            addr, length = wire.UNMAP_VIEW.unpack_from(f.payload)
            status = STATUS_INVALID_PARAMETER
            if self._views.get(addr) == length:
                del self._views[addr]
                status = STATUS_SUCCESS if _libc.munmap(addr, length) == 0 else STATUS_INVALID_PARAMETER
            self._send(wire.HEADER.pack(wire.UPCALL_REPLY.size, K.UPCALL_REPLY, 0, 0, 0, f.rid)
                       + wire.UPCALL_REPLY.pack(status, 0))
        elif kind == K.WELCOME:
            self._welcome = f

    def _map_view(self, f: wire.Frame) -> None:
        length, offset, _prot = wire.MAP_VIEW.unpack_from(f.payload)
        status, addr = STATUS_INVALID_PARAMETER, 0
        if len(f.fds) == 1:
            a = _libc.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, f.fds[0], offset)
            if a not in (None, MAP_FAILED):
                status, addr = STATUS_SUCCESS, a
                self._views[a] = length
            else:
                status = STATUS_NO_MEMORY
        for fd in f.fds:
            os.close(fd)
        self._send(wire.HEADER.pack(wire.UPCALL_REPLY.size, K.UPCALL_REPLY, 0, 0, 0, f.rid)
                   + wire.UPCALL_REPLY.pack(status, addr))

    def _broken(self) -> None:
        self.closed = True
        with self._cv:
            for slot in self._slots.values():
                slot.status = 0xC00000B0  # STATUS_PIPE_DISCONNECTED
                slot.done = True
            self._slots.clear()
            self._cv.notify_all()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass


class CallFailed(Exception):
    def __init__(self, status: int, message: str, winerror: int | None = None):
        super().__init__(message or f"status {status:#010x}")
        self.status = status
        self.winerror = winerror


# -- the process-wide connection ------------------------------------------------

_conn: Connection | None = None
_conn_lock = threading.Lock()


def connection() -> Connection:
    """This process's connection, made on first use (and anew after fork:
    _after_fork drops the parent's in the child)."""
    global _conn
    c = _conn
    if c is not None and not c.closed:
        return c
    with _conn_lock:
        c = _conn
        if c is None or c.pid != os.getpid() or c.closed:
            _conn = c = Connection()
        return c


def disconnect() -> None:
    """Close this process's connection: the kernel runs it down (handles closed)."""
    global _conn
    with _conn_lock:
        if _conn is not None and _conn.pid == os.getpid():
            _conn.close()
        _conn = None


def _after_fork() -> None:
    global _conn, _conn_lock, _tls
    _conn_lock = threading.Lock()
    _tls = threading.local()         # the child's thread has a tid of its own
    c, _conn = _conn, None
    if c is not None:
        try:
            c.sock.close()  # the parent's connection is the parent's
        except OSError:
            pass


os.register_at_fork(after_in_child=_after_fork)


# -- the embedded kernel ------------------------------------------------------------

_embedded: subprocess.Popen | None = None
_embedded_dir: str | None = None     # its socket's and state's directory, its own


def kernel_running(path: str | None = None) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path or paths.default_socket_path())
        return True
    except OSError:
        return False
    finally:
        s.close()


def start_embedded_kernel(quiet: bool = True, timeout: float = 15.0, verbose: bool = False) -> str:
    """Start a kernel as a child on a private socket for this program (and the
    programs it starts, through RINGZERO_SOCKET); it stops when we exit.  With
    `verbose`, its debug log (DbgPrint, faults) goes to our stderr."""
    global _embedded, _embedded_dir
    import tempfile
    d = tempfile.mkdtemp(prefix="ringzero-embedded-")
    path = os.path.join(d, "kernel.sock")
    state = os.path.join(d, "state")
    PR_SET_PDEATHSIG = 1

    def die_with_parent():
        _libc.prctl(PR_SET_PDEATHSIG, 15, 0, 0, 0)

    cmd = [sys.executable, "-m", "ringzero.kernel", "--socket", path, "--state", state, "--scratch", d, "--quiet",
           *(("--verbose",) if verbose else ())]
    _embedded_dir = d
    _embedded = subprocess.Popen(cmd, preexec_fn=die_with_parent, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL,
                                 stderr=None if verbose or not quiet else subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not kernel_running(path):
        if _embedded.poll() is not None:
            raise RuntimeError(f"the embedded ringzero kernel exited at start (code {_embedded.returncode})")
        if time.monotonic() > deadline:
            stop_embedded_kernel()
            raise RuntimeError("the embedded ringzero kernel did not start listening in time")
        time.sleep(0.02)
    os.environ[paths.ENV_SOCKET] = path
    os.environ[paths.ENV_STATE] = state
    atexit.register(stop_embedded_kernel)
    return path


def embedded_kernel_pid() -> int | None:
    """The pid of the kernel start_embedded_kernel started, while it runs."""
    return _embedded.pid if _embedded is not None and _embedded.poll() is None else None


def stop_embedded_kernel() -> None:
    """Stop the embedded kernel; its directory (socket, state) goes with it,
    removed by the kernel as it stops or here if it could not."""
    global _embedded, _embedded_dir
    disconnect()
    p, _embedded = _embedded, None
    d, _embedded_dir = _embedded_dir, None
    if p is not None and p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if d is not None:
        import shutil
        shutil.rmtree(d, ignore_errors=True)


def ensure_kernel(quiet: bool = True, verbose: bool = False) -> tuple[str, bool]:
    """(socket path, started here): the running kernel, or an embedded one."""
    path = paths.default_socket_path()
    if kernel_running(path):
        return path, False
    return start_embedded_kernel(quiet, verbose=verbose), True


def ensure_driver(service: str, image: str) -> bool:
    """Load `image` as `service` unless a driver of that name is loaded (service
    names compare without regard to case, as the SCM's do); True if loaded here."""
    c = connection()
    if upcase(service) in (upcase(d) for d in c.call("kernel.info")["drivers"]):
        return False
    c.call("driver.load", image=image, service=service)
    return True
