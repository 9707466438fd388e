"""The kernel host: accepts programs on a Unix socket and serves their requests.

Each connected program is a process (identity from SO_PEERCRED, never from
what it says) with its own handle table.  One kernel thread at a time is the
*reader* of a connection: it takes a frame and calls into the I/O manager
right there, in the program's context, so a request that completes at once
costs no thread switch.  If a dispatch routine has to block (a wait, an
upcall to the program), the reader role passes to a fresh thread before it
parks, so the program's other requests, its cancels and its death are still
seen.  When the connection drops for any reason the process is run down as
NT does: its IRPs cancelled, its views torn down, its handles closed (each
last handle sending IRP_MJ_CLEANUP, each last reference IRP_MJ_CLOSE).
"""

from __future__ import annotations

import array
import collections
import errno
import itertools
import json
import logging
import os
import select
import socket
import stat
import struct
import threading
import time

from ringzero.kernel import dbg, ringpoll, system
from ringzero.kernel.context import current
from ringzero.kernel.io import file as iofile
from ringzero.kernel.ke import dispatcher as ke
from ringzero.kernel.mm import mdl as mm_mdl
from ringzero.kernel.mm.user import NtException, read_process, unwatch_process, watch_process
from ringzero.kernel.ob import events as obev
from ringzero.kernel.ob import object as ob
from ringzero.kernel.ob.handles import release_entry
from ringzero.kernel.ps.process import EPROCESS
from ringzero.nt import status as st
from ringzero.protocol import wire
from ringzero.protocol.wire import K, Kind

log = logging.getLogger("ringzero.kernel")

RECV_SIZE = 16 * 1024      # per connection: resident for every connected program
BIG_RECV_SIZE = 256 * 1024  # while a large frame is arriving
SEND_TIMEOUT = 10.0        # a program that takes none of its waiting replies for this long is disconnected
OUTBOX_LIMIT = 64 * 1024 * 1024   # ...and one that leaves more than this waiting
# An upcall (the kernel asking a program to map or unmap a view) holds a kernel
# thread until the program answers: a program may have this many at once, each
# answered within UPCALL_TIMEOUT, or the call fails (the driver's mapping with it).
MAX_UPCALLS = 64
UPCALL_TIMEOUT = SEND_TIMEOUT
RUNDOWN_CANCEL_WAIT = 5.0
_UPCALL_RID = itertools.count(1 << 62)
_HINT = wire.HEADER.pack(0, K.SOCKET_HINT, 0, 0, 0, 0)
_ANC_SPACE = socket.CMSG_SPACE(wire.MAX_FDS * 4)
_IRP_KINDS = frozenset((K.DEVICE_IO_CONTROL, K.READ_FILE, K.WRITE_FILE, K.CREATE_FILE))

calls: dict[str, object] = {}   # CALL method name -> fn(conn, args) -> result


def call(name: str):
    """Register a slow-path CALL method: fn(connection, args: dict, rid) -> JSON-able."""
    def register(fn):
        calls[name] = fn
        return fn
    return register


class CallError(Exception):
    def __init__(self, status: int, message: str, winerror: int | None = None):
        super().__init__(message)
        self.status = status
        self.winerror = winerror


class _Outbox:
    """Replies a program is slow to take from its socket, sent as it makes room
    for them, by one thread for all programs.  IoCompleteRequest never waits
    for the program an IRP belongs to: whoever completes it (another program's
    request, a DPC, a driver's thread) leaves the reply here and goes on."""

    def __init__(self):
        self.ep = select.epoll()
        self.lock = threading.Lock()
        self.waiting: dict[int, "ProgramConnection"] = {}   # socket fd -> its connection
        self.thread: threading.Thread | None = None

    def add(self, conn: "ProgramConnection") -> bool:
        """Watch `conn`'s socket for room; False if no thread can send for it."""
        with self.lock:
            if conn.out_fd in self.waiting:
                return True
            if self.thread is None:
                t = threading.Thread(target=self._run, name="ringzero-outbox", daemon=True)
                try:
                    t.start()
                except RuntimeError:
                    return False
                self.thread = t
            self.waiting[conn.out_fd] = conn
            self.ep.register(conn.out_fd, select.EPOLLOUT)
        return True

    def remove(self, conn: "ProgramConnection") -> None:
        with self.lock:
            if self.waiting.get(conn.out_fd) is conn:
                del self.waiting[conn.out_fd]
                try:
                    self.ep.unregister(conn.out_fd)
                except (OSError, ValueError):
                    pass

    def _run(self) -> None:
        while True:
            try:
                events = self.ep.poll(0.5)
                with self.lock:
                    ready = [self.waiting.get(fd) for fd, _ in events]
                    everyone = list(self.waiting.values())
                for conn in ready:
                    if conn is not None:
                        conn.send_waiting()
                now = time.monotonic()
                for conn in everyone:
                    if conn.out_since and now - conn.out_since > SEND_TIMEOUT:
                        with conn.send_lock:
                            conn.stopped_reading()
            except Exception as e:  # a bug of ours must not leave replies unsent for good
                dbg.fault("reply outbox", e)


_outbox = _Outbox()


class _Req(iofile.Reply):
    """One request's way back to its program."""

    __slots__ = ("conn", "rid")

    def __init__(self, conn: ProgramConnection, rid: int):
        self.conn = conn
        self.rid = rid

    def complete(self, irp, status, information, data):
        conn = self.conn
        head = wire.reply_head(self.rid, status, information, len(data))
        lock = conn.send_lock
        lock.acquire()
        try:
            if irp is not None:
                irp.reply_sent = True
            if conn.held is self:
                conn.commit_held(head, len(data))     # `data` lies where read_buffer() gave its room
            else:
                conn._send_locked(head, body=data)
        finally:
            lock.release()

    def read_buffer(self, length: int):
        """The room of this reply's data in the response ring (ProgramConnection.hold)."""
        conn = self.conn
        with conn.send_lock:
            return conn.hold(self, wire.REPLY_HEAD.size, length)

    def release_buffer(self) -> None:
        conn = self.conn
        with conn.send_lock:
            if conn.held is self:
                conn.let_go()

    def pending(self, irp):
        if not irp.overlapped:
            return       # a synchronous caller just waits for the reply
        conn = self.conn
        with conn.send_lock:
            if not irp.reply_sent:
                conn._send_locked(wire.encode(wire.Frame(K.PENDING, self.rid)))


def _fds_of(anc) -> list[int]:
    fds: list[int] = []
    for level, typ, data in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(data[:len(data) - len(data) % a.itemsize])
            fds.extend(a)
    return fds


def _peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


def _proc_facts(pid: int) -> tuple[str, int | None, frozenset, bool]:
    """(image, start time, groups, whether it lives in our pid namespace: its
    NSpid line lists one id then, one per namespace level otherwise; a Linux
    without NSpid has no nested pid namespaces to tell of)."""
    image, start, groups, same_ns = "", None, frozenset(), True
    try:
        image = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        start = int(data[data.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups = frozenset(int(g) for g in line.split()[1:])
                elif line.startswith("NSpid:"):
                    same_ns = len(line.split()) == 2
    except OSError:
        same_ns = False
    return image, start, groups, same_ns


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


class ProgramConnection:
    """Invariant: exactly one thread holds `reader_token` and reads `sock`;
    `send_lock` serialises every frame sent; `dispatching` lists the kernel
    threads currently working for this program (alerted at rundown)."""

    def __init__(self, host: KernelHost, sock: socket.socket):
        self.host = host
        self.sock = sock
        self.proto = wire.Connection(wire.Role.KERNEL, host.max_payload)
        self.send_lock = threading.Lock()
        self.process: EPROCESS | None = None
        self.reader_token = None
        self.dispatching: set[int] = set()
        self.upcalls: dict[int, list] = {}
        self.subscriptions: list = []
        self.closed = False
        self.channel: ringpoll.Channel | None = None   # shared-memory rings, once attached
        self.held = None             # the reply being built in place in the response ring (hold())
        self.held_back: list = []    # frames sent meanwhile, sent once it is done
        self.user_memory = False     # OFFER_MEMORY succeeded: FLAG_USER_BUFFER requests are allowed
        self.waits: dict = {}        # request id -> the program's wait in progress (an asynchronous wait block)
        self.rundown_done = threading.Event()
        self._rundown_lock = threading.Lock()
        self.outq: collections.deque = collections.deque()   # replies waiting for room in the socket (_Outbox)
        self.out_bytes = 0
        self.out_since = 0.0         # when the waiting replies last moved (0: none wait)
        self.out_fd = sock.fileno()
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(SEND_TIMEOUT), 0))

    # -- sending ---------------------------------------------------------------

    def hold(self, reply, k: int, n: int):
        """Reserve room in the response ring for `reply`'s frame, a `k`-byte
        head and up to `n` bytes of data, the data to be written there in
        place: the data's room, or None (no ring, no room, one held already).
        Frames sent meanwhile are held back, in order, until commit_held() or
        let_go().  `send_lock` held."""
        ch = self.channel
        if ch is None or self.closed or self.held is not None:
            return None
        try:
            room = ch.resp.reserve(k, n)
        except wire.ProtocolError:
            return None          # (the next frame sent finds the ring unusable and says so)
        if room is not None:
            self.held = reply
        return room

    def commit_held(self, head: bytes, used: int) -> None:
        """The held reply is done: its head, before the `used` bytes of data
        written in its room; then what was held back.  `send_lock` held."""
        self.held = None
        ch = self.channel
        if not self.closed and ch is not None:
            ch.resp.commit(head, used)
            try:
                ch.ring_doorbell()
            except (OSError, ValueError):
                self.abort()
        self._send_held_back()

    def let_go(self) -> None:
        """Drop the held reply's room unanswered; send what was held back.  `send_lock` held."""
        self.held = None
        self._send_held_back()

    def _send_held_back(self) -> None:
        backlog, self.held_back = self.held_back, []
        for data, fds, body in backlog:
            self._send_locked(data, fds, body)

    def _send_locked(self, data: bytes, fds=(), body=b"") -> None:
        """Send the frame `data` + `body` (a reply's data, copied once)."""
        if self.closed:
            return
        if self.held is not None:
            self.held_back.append((bytes(data), fds, bytes(body)))    # (copied: their buffers may be reused)
            return
        ch = self.channel
        if ch is not None:
            try:
                if not fds and ch.resp.put(data, body):
                    ch.ring_doorbell()
                    return
            except (wire.ProtocolError, OSError, ValueError) as e:
                dbg.emit(f"pid {self.process.pid}: response ring unusable ({e}); disconnected", level="fault",
                         source="kernel")
                self.abort()
                return
        if body:
            data = b"".join((data, body))    # one copy of the reply's data
        try:
            if fds:
                if self.outq:
                    self._before_block()
                    self._send_waiting_now()       # (a frame with descriptors, an upcall's, goes after them)
                self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            elif self.outq:
                if not self._leave(memoryview(data)):
                    return
            else:
                try:
                    n = self.sock.send(data, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    n = 0
                if n < len(data) and not self._leave(memoryview(data)[n:]):
                    return
        except OSError as e:
            # the program stopped reading (a blocking send timed out), or is gone:
            # end the connection; the reader runs it down
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.stopped_reading()
            else:
                self.abort()
            return
        if ch is not None:
            try:
                if ch.resp.put(_HINT):
                    ch.ring_doorbell()
            except (wire.ProtocolError, OSError, ValueError):
                self.abort()

    # -- replies that wait for the program to take them (_Outbox) ----------------------

    @staticmethod
    def _before_block() -> None:
        """Before this thread blocks on a slow program: hand its role (the ring
        poller's, a reader's) on, so only that program waits."""
        hook = getattr(ke._hooks, "before_block", None)
        if hook is not None:
            hook()

    def _leave(self, rest: memoryview) -> bool:
        """Leave `rest` of a frame for the outbox to send; False if the program
        has left too much waiting already (it is disconnected).  `send_lock` held."""
        if self.out_bytes + len(rest) > OUTBOX_LIMIT:
            self.stopped_reading()
            return False
        if not isinstance(rest.obj, bytes):
            rest = memoryview(bytes(rest))     # (what waits must outlive a buffer its sender may reuse)
        if not self.outq:
            self.out_since = time.monotonic()
        self.outq.append(rest)
        self.out_bytes += len(rest)
        if not _outbox.add(self):
            self._before_block()
            self._send_waiting_now()       # no thread to send them: this one does, waiting
        return True

    def send_waiting(self) -> None:
        """The socket has room: send what waits, as much as goes (the outbox's thread)."""
        with self.send_lock:
            q = self.outq
            try:
                while q:
                    head = q[0]
                    try:
                        n = self.sock.send(head, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    self.out_bytes -= n
                    self.out_since = time.monotonic()
                    if n < len(head):
                        q[0] = head[n:]
                        break
                    q.popleft()
            except OSError:
                self.abort()             # gone: its reader runs it down
                self._forget_waiting()
                return
            if not q:
                self._forget_waiting()

    def _send_waiting_now(self) -> None:
        """Send what waits, blocking (SO_SNDTIMEO bounds each send).  `send_lock` held; raises OSError."""
        q = self.outq
        while q:
            self.sock.sendall(q.popleft())
        self._forget_waiting()

    def _forget_waiting(self) -> None:
        self.outq.clear()
        self.out_bytes = 0
        self.out_since = 0.0
        _outbox.remove(self)

    def stopped_reading(self) -> None:
        """The program takes none of its replies: disconnect it.  `send_lock` held."""
        if not self.closed:
            dbg.emit(f"pid {self.process.pid if self.process else '?'} stopped reading its replies; disconnected",
                     level="fault", source="kernel")
        self._forget_waiting()
        self.abort()

    def abort(self) -> None:
        """End the connection from our side; the reader sees it and runs the process down."""
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def send(self, data: bytes, fds=()) -> None:
        with self.send_lock:
            self._send_locked(data, fds)

    # -- upcalls into the program (run on a dispatch thread) -------------------------

    def _upcall(self, kind: int, payload: bytes, fds=()) -> tuple[int, int]:
        """(status, value) of the program's answer; STATUS_INSUFFICIENT_RESOURCES
        if it has MAX_UPCALLS unanswered already, STATUS_IO_TIMEOUT if it does
        not answer within UPCALL_TIMEOUT (a late answer is dropped)."""
        if len(self.upcalls) >= MAX_UPCALLS:
            dbg.emit(f"pid {self.process.pid}: {len(self.upcalls)} upcalls unanswered; "
                     f"a {Kind(kind).name} is refused", level="warning", source="kernel")
            return st.STATUS_INSUFFICIENT_RESOURCES, 0
        rid = next(_UPCALL_RID)
        slot = [ke.KEVENT(ke.NotificationEvent, False), st.STATUS_PROCESS_IS_TERMINATING, 0]
        self.upcalls[rid] = slot
        try:
            self.send(wire.encode(wire.Frame(kind, rid, payload, fds=list(fds))), fds)
            if not self.closed and ke.wait([slot[0]], False, UPCALL_TIMEOUT) == st.STATUS_TIMEOUT:
                dbg.emit(f"pid {self.process.pid} did not answer a {Kind(kind).name} in {UPCALL_TIMEOUT:g} s",
                         level="warning", source="kernel")
                return st.STATUS_IO_TIMEOUT, 0
        finally:
            self.upcalls.pop(rid, None)
        return slot[1], slot[2]

    def map_view(self, fd: int, length: int, offset: int) -> int:
        status, address = self._upcall(K.MAP_VIEW, wire.MAP_VIEW.pack(length, offset, 3), [fd])
        if not st.NT_SUCCESS(status):
            raise NtException(status, f"the program could not map the view ({st.status_name(status)})")
        return address

    def unmap_view(self, address: int, length: int) -> None:
        self._upcall(K.UNMAP_VIEW, wire.UNMAP_VIEW.pack(address, length))

    # -- the reader ---------------------------------------------------------------

    def start_reader(self) -> bool:
        """Give the reader role to a new thread; False if the system will not
        start one (its limit on threads), the role then nobody's."""
        token = object()
        self.reader_token = token
        try:
            threading.Thread(target=self._read_loop, args=(token,), name="ringzero-reader", daemon=True).start()
        except RuntimeError as e:
            self.reader_token = None
            dbg.emit(f"cannot start a reader thread ({e})", level="fault", source="kernel")
            return False
        return True

    def _on_block(self) -> None:
        """ke's hook: this thread is about to park; pass the reader role on (or,
        with no thread to be had, keep it: the socket is read again once this
        dispatch returns)."""
        conn = current.connection
        mine = getattr(current, "reader_token", None)
        if conn is not None and conn.reader_token is mine:
            current.connection = None
            if not conn.closed and not conn.start_reader():
                conn.reader_token = mine
                current.connection = conn

    def _read_loop(self, token) -> None:
        current.reader_token = token
        current.connection = self
        current.process = self.process
        ke.set_block_hook(self._on_block)
        me = threading.get_ident()
        buf = bytearray(RECV_SIZE)
        view = memoryview(buf)
        proto = self.proto
        try:
            while self.reader_token is token:
                frame = proto.next_frame()
                if frame is None:
                    want = proto.partial_frame_size()
                    if want > len(buf) and len(buf) < BIG_RECV_SIZE:
                        buf = bytearray(BIG_RECV_SIZE)
                        view = memoryview(buf)
                    elif want <= RECV_SIZE and len(buf) > RECV_SIZE:
                        buf = bytearray(RECV_SIZE)
                        view = memoryview(buf)
                    try:
                        n, anc, flags, _addr = self.sock.recvmsg_into([view], _ANC_SPACE)
                    except OSError:
                        n, anc, flags = 0, (), 0
                    fds = _fds_of(anc)
                    if flags & socket.MSG_CTRUNC:
                        proto.fds_lost = True    # (this process is out of descriptors)
                    if n == 0:
                        for fd in fds:
                            os.close(fd)
                        break
                    proto.receive_data(view[:n], fds)
                    continue
                if frame.fds and frame.kind != K.ATTACH_RING:
                    for fd in frame.fds:
                        os.close(fd)
                    raise wire.RemoteProtocolError(f"{Kind(frame.kind).name} may not carry descriptors")
                self.dispatching.add(me)
                try:
                    self.serve(frame)
                finally:
                    self.dispatching.discard(me)
                if self.reader_token is not token:
                    return  # a dispatch blocked and another thread reads now
                current.connection = self
        except wire.ProtocolError as e:
            system.get().counters["protocol_errors"] += 1
            pid = self.process.pid if self.process else "?"
            dbg.emit(f"protocol error from pid {pid}: {e}; connection closed", level="fault", source="kernel")
        except BaseException as e:  # a bug of ours must not take the kernel down
            dbg.fault("connection reader", e)
        if self.reader_token is token:
            self.rundown()

    # -- dispatch ---------------------------------------------------------------------

    def serve(self, f: wire.Frame) -> None:
        """Dispatch one request.  A payload too short for its kind is the
        program's protocol error (raised); an exception that is a bug of the
        kernel's own is logged with its traceback and the request fails with
        STATUS_INTERNAL_ERROR, so the program gets an answer, not a hang."""
        try:
            self._dispatch(f)
        except BaseException as e:
            self._failed(f.kind, f.rid, e)

    def serve_read(self, rid: int, tid: int, flags: int, h: int, length: int, offset: int, addr: int,
                   event: int) -> None:
        """A READ_FILE the ring poller took apart itself, served as serve() would."""
        try:
            proc = self._admit(K.READ_FILE, rid, tid)
            if proc is not None:
                iofile.read_file(proc, h, length, offset, addr, event, _Req(self, rid), rid, tid,
                                 bool(flags & wire.FLAG_OVERLAPPED), self._user_buffer(flags))
        except BaseException as e:
            self._failed(K.READ_FILE, rid, e)

    def write_in_place(self, rid: int, tid: int, h: int, offset: int, data) -> bool:
        """A synchronous WRITE_FILE with no event whose data still lies in the
        request ring (`data`): answered by the driver's fast I/O from there
        (iofile.write_in_place), True; or False, having done nothing, and the
        poller copies the data out and calls serve_write."""
        proc = self.process
        if self._over_pending_limit(proc):
            return False          # (serve_write refuses it)
        current.program_thread = tid
        try:
            if not iofile.write_in_place(proc, h, data, offset, _Req(self, rid)):
                return False
        except BaseException as e:
            self._failed(K.WRITE_FILE, rid, e)
        proc.counters["requests"] += 1
        return True

    def serve_write(self, rid: int, tid: int, flags: int, h: int, offset: int, addr: int, event: int,
                    data: bytearray) -> None:
        """A WRITE_FILE the ring poller took apart itself, its data already
        copied out of the ring into a buffer of its own (which becomes the
        system buffer as it is), served as serve() would."""
        try:
            proc = self._admit(K.WRITE_FILE, rid, tid)
            if proc is not None:
                iofile.write_file(proc, h, data, offset, addr, event, _Req(self, rid), rid, tid,
                                  bool(flags & wire.FLAG_OVERLAPPED), len(data), captured=True)
        except BaseException as e:
            self._failed(K.WRITE_FILE, rid, e)

    def _failed(self, kind: int, rid: int, e: Exception) -> None:
        if isinstance(e, struct.error):
            raise wire.RemoteProtocolError(f"truncated {Kind(kind).name} payload ({e})") from None
        if isinstance(e, wire.ProtocolError):
            raise e
        dbg.fault(f"{Kind(kind).name} request of pid {self.process.pid if self.process else '?'}", e)
        if kind not in (K.HELLO, K.UPCALL_REPLY):
            self._reply(rid, st.STATUS_INTERNAL_ERROR)

    def _admit(self, kind: int, rid: int, tid: int):
        """The requesting process, counted; None if the request was refused
        here (too many outstanding already)."""
        proc = self.process
        current.program_thread = tid
        proc.counters["requests"] += 1
        if kind in _IRP_KINDS and self._over_pending_limit(proc):
            self._reply(rid, st.STATUS_INSUFFICIENT_RESOURCES)
            return None
        return proc

    def _over_pending_limit(self, proc) -> bool:
        limit = self.host.pending_limit
        return bool(limit) and len(proc.pending) >= limit

    def _dispatch(self, f: wire.Frame) -> None:
        kind = f.kind
        if kind == K.HELLO:
            self._hello()
            return
        p = f.payload
        rid = f.rid
        proc = self._admit(kind, rid, f.tid)
        if proc is None:
            return
        if kind == K.DEVICE_IO_CONTROL:
            h, code, in_len, out_len, in_addr, out_addr, event = wire.IOCTL.unpack_from(p)
            data = p[wire.IOCTL.size:]
            in_data = data[:in_len]
            out_data = data[in_len:] if len(data) > in_len else None
            iofile.device_io_control(proc, h, code, in_data, out_len, in_addr, out_addr, event, _Req(self, rid),
                                     rid, f.tid, bool(f.flags & wire.FLAG_OVERLAPPED), out_data)
        elif kind == K.READ_FILE:
            h, length, offset, addr, event = wire.READ.unpack_from(p)
            iofile.read_file(proc, h, length, offset, addr, event, _Req(self, rid), rid, f.tid,
                             bool(f.flags & wire.FLAG_OVERLAPPED), self._user_buffer(f.flags))
        elif kind == K.WRITE_FILE:
            h, offset, addr, event = wire.WRITE.unpack_from(p)
            if self._user_buffer(f.flags):
                (length,) = wire.WRITE_LENGTH.unpack_from(p, wire.WRITE.size)
                data = None
            else:
                data = p[wire.WRITE.size:]
                length = len(data)
            iofile.write_file(proc, h, data, offset, addr, event, _Req(self, rid), rid, f.tid,
                              bool(f.flags & wire.FLAG_OVERLAPPED), length)
        elif kind == K.CREATE_FILE:
            access, share, disp, flags, nlen = wire.CREATE_FILE.unpack_from(p)
            name = bytes(p[wire.CREATE_FILE.size:wire.CREATE_FILE.size + nlen]).decode("utf-8", "replace")
            iofile.open_file(proc, name, access, share, disp, flags, _Req(self, rid), rid, f.tid)
        elif kind == K.CLOSE_HANDLE:
            (h,) = wire.HANDLE.unpack_from(p)
            self._reply(rid, iofile.close_handle(proc, h))
        elif kind == K.WAIT:
            wait_all, _alertable, count, timeout = wire.WAIT.unpack_from(p)
            handles = list(struct.unpack_from(f"<{count}Q", p, wire.WAIT.size))
            self._wait(rid, handles, bool(wait_all), timeout)
        elif kind == K.EVENT_OP:
            h, op = wire.EVENT_OP.unpack_from(p)
            status, prev = obev.event_op(proc, h, op)
            self._reply(rid, status, prev)
        elif kind == K.CREATE_EVENT:
            manual, initial, _, access = wire.CREATE_EVENT.unpack_from(p)
            name = bytes(p[wire.CREATE_EVENT.size:]).decode("utf-8", "replace") or None
            status, h = obev.create_event(proc, bool(manual), bool(initial), name, access)
            self._reply(rid, status, h)
        elif kind == K.OPEN_EVENT or kind == K.OPEN_MUTANT:     # (one layout)
            access, _inherit = wire.OPEN_EVENT.unpack_from(p)
            open_named = obev.open_event if kind == K.OPEN_EVENT else obev.open_mutant
            status, h = open_named(proc, bytes(p[wire.OPEN_EVENT.size:]).decode("utf-8", "replace"), access)
            self._reply(rid, status, h)
        elif kind == K.CREATE_MUTANT:
            initial_owner, access = wire.CREATE_MUTANT.unpack_from(p)
            name = bytes(p[wire.CREATE_MUTANT.size:]).decode("utf-8", "replace") or None
            status, h = obev.create_mutant(proc, bool(initial_owner), name, access)
            self._reply(rid, status, h)
        elif kind == K.RELEASE_MUTANT:
            (h,) = wire.HANDLE.unpack_from(p)
            status, previous = obev.release_mutant(proc, h)
            self._reply(rid, status, previous & 0xFFFFFFFF)
        elif kind == K.CANCEL_IO:
            h, target = wire.CANCEL.unpack_from(p)
            any_thread = bool(f.flags & wire.FLAG_OVERLAPPED)
            self._reply(rid, iofile.cancel_io(proc, h, f.tid, target, any_thread))
        elif kind == K.DUPLICATE_HANDLE:
            h, access = wire.DUPLICATE.unpack_from(p)
            status, nh = obev.duplicate_handle(proc, h, access, bool(f.flags & wire.FLAG_SAME_ACCESS))
            self._reply(rid, status, nh)
        elif kind == K.UPCALL_REPLY:
            slot = self.upcalls.get(rid)
            if slot is not None:
                slot[1], slot[2] = wire.UPCALL_REPLY.unpack_from(p)
                ke.KeSetEvent(slot[0])
        elif kind == K.CALL:
            self._call(rid, p)
        elif kind == K.ATTACH_RING:
            self._attach_ring(rid, f.fds)
        elif kind == K.OFFER_MEMORY:
            self._reply(rid, self._offer_memory(p))
        else:
            raise wire.RemoteProtocolError(f"{Kind(kind).name} is not a request")

    def _attach_ring(self, rid: int, fds: list[int]) -> None:
        if self.proto.short and self.channel is None:
            # its descriptors did not arrive: the kernel had no room for them
            for fd in fds:
                os.close(fd)
            dbg.emit(f"pid {self.process.pid}: no descriptors left for its rings; it talks over its socket",
                     level="warning", source="kernel")
            self._reply(rid, st.STATUS_INSUFFICIENT_RESOURCES)
            return
        if len(fds) != 3 or self.channel is not None or not all(_is_eventfd(fd) for fd in fds[1:]):
            for fd in fds:
                os.close(fd)
            raise wire.RemoteProtocolError("ATTACH_RING takes a region and two eventfds, once")
        ch = ringpoll.attach(self, *fds)
        # the answer goes by the socket; from here on, responses use the ring
        with self.send_lock:
            self._send_locked(wire.reply(rid, st.STATUS_SUCCESS, ch.req.size))
            self.channel = ch
        ringpoll.get_poller().register(ch)

    def _user_buffer(self, flags: int) -> bool:
        if not flags & wire.FLAG_USER_BUFFER:
            return False
        if not self.user_memory:
            raise wire.RemoteProtocolError("FLAG_USER_BUFFER before the kernel could reach the program's memory")
        return True

    def _offer_memory(self, payload) -> int:
        """The program says where 8 bytes of its memory are and what they hold;
        if we read the same, its reads and writes may leave their data in its
        own buffers (FLAG_USER_BUFFER), as NT's I/O manager copies to and from
        a program's buffers in its address space."""
        address, value = wire.OFFER_MEMORY.unpack_from(payload)
        try:
            seen = read_process(self.process.pid, address, 8)
        except NtException:
            return st.STATUS_ACCESS_DENIED      # not root, and not the program's user
        if seen != struct.pack("<Q", value):
            return st.STATUS_INVALID_PARAMETER
        self.user_memory = True
        return st.STATUS_SUCCESS

    def _wait(self, rid: int, handles: list[int], wait_all: bool, timeout_ms: int) -> None:
        """A program's WaitFor*Object(s): no kernel thread waits for it; the
        reply goes out from whichever thread satisfies the wait (or times it out)."""
        def done(status, rid=rid):
            self.waits.pop(rid, None)
            self._reply(rid, status)

        wb = obev.wait_for_handles(self.process, handles, wait_all, timeout_ms, done)
        if wb is not None and not wb.done:
            self.waits[rid] = wb
            if wb.done:          # satisfied between the two lines above
                self.waits.pop(rid, None)

    def _reply(self, rid: int, status: int, information: int = 0, data: bytes = b"") -> None:
        self.send(wire.reply(rid, status, information, data))

    def _hello(self) -> None:
        pid, uid, gid = _peer_credentials(self.sock)
        image, start, groups, same_ns = _proc_facts(pid)
        sysm = system.get()
        proc = EPROCESS(pid, uid, gid, image, start_time=start, groups=groups,
                        handle_limit=self.host.handle_limit)
        proc.connection = self
        proc.tids_here = same_ns
        ob.reference(proc)   # the process table's reference, dropped at rundown (drivers may look it up)
        watch_process(pid)
        self.process = proc
        current.process = proc
        with sysm.lock:
            # one connection per program instance; a second one from the same
            # process gets a process object of its own, keyed apart
            key = pid
            while key in sysm.processes:
                key += 1 << 32
            proc.key = key
            sysm.processes[key] = proc
            sysm.counters["connections"] += 1
        self.send(self.proto.send(wire.welcome(os.getpid(), pid, self.host.max_payload)))

    def _call(self, rid: int, payload) -> None:
        try:
            req = json.loads(bytes(payload) or b"{}")
            fn = calls.get(req.get("method", ""))
            if fn is None:
                raise CallError(st.STATUS_NOT_IMPLEMENTED, f"unknown call {req.get('method')!r}")
            result = fn(self, req.get("args") or {}, rid)
            status = st.STATUS_SUCCESS
            body = {"result": result}
        except CallError as e:
            status, body = e.status, {"message": str(e), "winerror": e.winerror}
        except NtException as e:
            status, body = e.status, {"message": str(e)}
        except (ValueError, TypeError, KeyError) as e:
            status, body = st.STATUS_INVALID_PARAMETER, {"message": f"bad call: {e}"}
        except Exception as e:
            dbg.fault("kernel call", e)
            status, body = st.STATUS_INTERNAL_ERROR, {"message": f"internal error: {e!r}"}
        self._reply(rid, status, 0, json.dumps(body).encode())

    # -- rundown ---------------------------------------------------------------------

    def rundown(self) -> None:
        """The program is gone: cancel, unmap, close, forget (once)."""
        with self._rundown_lock:
            if self.rundown_done.is_set():
                return
            self.closed = True
            proc = self.process
            with self.send_lock:
                self._forget_waiting()       # (before its descriptor number can be another's)
            try:
                self.sock.close()
            except OSError:
                pass
            for fd in self.proto.unclaimed_fds():
                try:
                    os.close(fd)
                except OSError:
                    pass
            for sub in self.subscriptions:
                dbg.unsubscribe(sub)
            ch, self.channel = self.channel, None
            if ch is not None:
                ringpoll.get_poller().unregister(ch)
            for slot in list(self.upcalls.values()):
                ke.KeSetEvent(slot[0])
            if proc is not None:
                current.process = proc
                current.connection = None
                proc.exiting = True
                for ident in list(self.dispatching):
                    ke.alert_thread(ident)
                for wb in list(self.waits.values()):
                    ke.cancel_async(wb, st.STATUS_ALERTED)
                try:
                    self._rundown_process(proc)
                except Exception as e:
                    dbg.fault(f"rundown of pid {proc.pid}", e)
                with system.get().lock:
                    system.get().processes.pop(getattr(proc, "key", proc.pid), None)
                ob.dereference(proc)
                unwatch_process(proc.pid)
                for cb in list(self.host.exit_callbacks):
                    try:
                        cb(proc)
                    except Exception as e:
                        dbg.fault("process exit callback", e)
            if ch is not None:
                ch.close()
            self.host.connections.discard(self)
            self.rundown_done.set()

    def _rundown_process(self, proc: EPROCESS) -> None:
        obev.abandon_mutants(lambda owner: owner[0] == proc.pid)
        if iofile.cancel_all(proc):
            deadline = time.monotonic() + RUNDOWN_CANCEL_WAIT
            while proc.pending and time.monotonic() < deadline:
                time.sleep(0.005)
            for irp in list(proc.pending):
                dbg.emit(f"IRP {irp.rid} of pid {proc.pid} did not complete after cancel; abandoned",
                         level="fault", source=getattr(irp.driver, "name", "kernel"))
        mm_mdl.drop_views_of(proc)
        for handle, entry in proc.handles.drain():
            try:
                release_entry(entry, proc)
            except Exception as e:
                dbg.fault(f"closing handle {handle:#x} of pid {proc.pid}", e)


def _check_socket_directory(directory: str) -> None:
    """Programs trust whatever listens at the socket's path, so nobody else may
    be able to replace it: the directory must be ours (or root's) and writable
    by no one else, unless it is sticky (/tmp), where only a file's owner may
    unlink or rename it."""
    st_ = os.stat(directory)
    if st_.st_uid not in (os.getuid(), 0):
        raise RuntimeError(f"{directory} belongs to uid {st_.st_uid}; refusing to listen in it")
    if st_.st_mode & 0o022 and not st_.st_mode & stat.S_ISVTX:
        raise RuntimeError(f"{directory} is writable by other users (mode {stat.S_IMODE(st_.st_mode):o}); "
                           "refusing to listen in it")


class KernelHost:
    def __init__(self, socket_path: str, max_payload: int = wire.DEFAULT_MAX_PAYLOAD, handle_limit: int = 1 << 20,
                 pending_limit: int = 0):
        self.socket_path = socket_path
        self.max_payload = max_payload
        self.handle_limit = handle_limit
        self.pending_limit = pending_limit   # per program: IRPs outstanding at once (0: no limit)
        self.listener: socket.socket | None = None
        self.connections: set[ProgramConnection] = set()
        self.exit_callbacks: list = []
        self._stop = threading.Event()
        self._accept_thread: threading.Thread | None = None

    def bind(self) -> None:
        path = self.socket_path
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        _check_socket_directory(directory)
        if os.path.exists(path):
            st_ = os.lstat(path)
            if not stat.S_ISSOCK(st_.st_mode):
                raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)  # stale: nobody listens
            else:
                raise RuntimeError(f"another ringzero kernel is already listening on {path}")
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o111)  # connect needs write permission: rw for everyone; access is checked per object
        try:
            s.bind(path)
        finally:
            os.umask(old)
        s.listen(512)
        self.listener = s

    def serve_forever(self) -> None:
        assert self.listener is not None
        lst = self.listener
        short = False
        while not self._stop.is_set():
            try:
                sock, _ = lst.accept()
            except OSError as e:
                if self._stop.is_set():
                    break
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # the program waits in the backlog; trying again at once would
                    # only spin this thread until a descriptor is free
                    if not short:
                        dbg.emit(f"cannot accept a program: {e.strerror}; it waits until descriptors are free",
                                 level="warning", source="kernel")
                    short = True
                    self._stop.wait(0.05)
                continue
            short = False
            conn = ProgramConnection(self, sock)
            self.connections.add(conn)
            if not conn.start_reader():
                # no thread to serve it: the program sees the connection closed
                self.connections.discard(conn)
                sock.close()

    def start_background(self) -> None:
        self._accept_thread = threading.Thread(target=self.serve_forever, name="ringzero-accept", daemon=True)
        self._accept_thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
        for conn in list(self.connections):
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for conn in list(self.connections):
            conn.rundown_done.wait(timeout=RUNDOWN_CANCEL_WAIT + 5)
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass
