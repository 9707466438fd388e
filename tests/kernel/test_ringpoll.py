"""The ring poller, driven in-process with rings of our own and stand-in
connections: one thread serves every program's ring, fairly."""

import mmap
import os
import struct
import threading
from types import SimpleNamespace

from conftest import wait_until
from ringzero.kernel import ringpoll
from ringzero.protocol import ring as rings
from ringzero.protocol import wire

SIZE = rings.MIN_SIZE
FRAME = wire.HEADER.pack(8, wire.Kind.CLOSE_HANDLE, 0, 0, 0, 1) + struct.pack("<Q", 4)


class StandIn:
    """What the poller needs of a program connection; records each request."""

    def __init__(self):
        self.process = None
        self.dispatching = set()
        self.host = SimpleNamespace(max_payload=wire.DEFAULT_MAX_PAYLOAD)
        self.served = 0
        self.first = threading.Event()
        self.after_each = None

    def serve(self, frame):
        self.served += 1
        self.first.set()
        if self.after_each is not None:
            self.after_each()

    def abort(self):
        pass


def stop(poller) -> None:
    poller.stop()
    for ch in list(poller.channels.values()):
        ch.close()


def channel(conn, size=SIZE):
    region = mmap.mmap(-1, rings.region_size(size))
    rings.init_region(memoryview(region), size)
    producer, _ = rings.program_side(memoryview(region), size)
    ch = ringpoll.Channel(conn, region, size, os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK))
    return ch, producer


def test_a_ring_that_is_never_empty_does_not_starve_one_that_rings_later():
    poller = ringpoll.Poller()
    busy, busy_ring = StandIn(), None
    try:
        busy_ch, busy_ring = channel(busy)
        busy.after_each = lambda: busy_ring.put(FRAME)     # every request served brings another
        assert busy_ring.put(FRAME)
        poller.register(busy_ch)
        assert busy.first.wait(10)
        # the poller now spins on the busy ring and never finds it empty
        late = StandIn()
        late_ch, late_ring = channel(late)
        assert late_ring.put(FRAME)
        poller.register(late_ch)          # rings its doorbell
        assert late.first.wait(10), "the late ring was never served"
        assert late.served == 1
        served = busy.served
        assert wait_until(lambda: busy.served > served)     # and the flood goes on
    finally:
        busy.after_each = None
        stop(poller)


def test_a_kernel_bug_in_a_request_is_an_answer_not_a_hang(monkeypatch):
    """ProgramConnection.serve: an exception out of the kernel's own dispatch is
    logged with its traceback and the request is answered STATUS_INTERNAL_ERROR;
    a payload too short for its kind stays the program's protocol error."""
    import socket

    import pytest

    from ringzero.kernel import dbg
    from ringzero.kernel.host import ProgramConnection
    from ringzero.nt import status as st

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn = ProgramConnection(SimpleNamespace(max_payload=wire.DEFAULT_MAX_PAYLOAD), ours)

        def broken(frame):
            raise KeyError("a bug of ours")

        monkeypatch.setattr(conn, "_dispatch", broken)
        conn.serve(wire.Frame(wire.Kind.DEVICE_IO_CONTROL, rid=77))
        theirs.settimeout(10)
        reply = theirs.recv(1 << 16)
        length, kind, _, _, _, rid = wire.HEADER.unpack_from(reply)
        assert (kind, rid) == (wire.Kind.REPLY, 77)
        assert wire.REPLY.unpack_from(reply, wire.HEADER_SIZE)[0] == st.STATUS_INTERNAL_ERROR
        assert any("a bug of ours" in r.text and r.level == "fault" for r in dbg.recent(64))

        monkeypatch.setattr(conn, "_dispatch", lambda f: struct.unpack_from("<Q", b"1"))
        with pytest.raises(wire.RemoteProtocolError, match="truncated"):
            conn.serve(wire.Frame(wire.Kind.CLOSE_HANDLE, rid=78))
    finally:
        ours.close()
        theirs.close()


def _readable(fd) -> bool:
    try:
        os.eventfd_read(fd)
        return True
    except BlockingIOError:
        return False


def test_a_program_rings_only_a_ring_the_poller_is_not_polling():
    """The request ring's polled flag is the kernel's: set while the poller
    spins on the ring, cleared before it sleeps; a frame put while it sleeps
    is served once the doorbell rings."""
    poller = ringpoll.Poller()
    conn = StandIn()
    ch, producer = channel(conn)
    feeding = threading.Event()
    feeding.set()
    seen_polled = []

    def feed():
        seen_polled.append(producer.flag())
        if feeding.is_set():
            producer.put(FRAME)        # no doorbell: the poller polls this ring

    conn.after_each = feed
    try:
        assert producer.put(FRAME)
        poller.register(ch)            # rings the doorbell once
        assert wait_until(lambda: conn.served >= 50)
        feeding.clear()
        assert all(seen_polled), "the poller served a ring it had not flagged as polled"
        assert wait_until(lambda: producer.flag() == 0), "the poller never went to sleep"
        served = conn.served
        assert producer.put(FRAME)     # asleep: without its doorbell the frame waits
        rings.fence()
        assert producer.flag() == 0
        os.eventfd_write(ch.req_efd, 1)
        assert wait_until(lambda: conn.served == served + 1)
    finally:
        conn.after_each = None
        poller.stop()
        ch.close()


def test_the_kernel_rings_a_program_only_when_it_sleeps():
    """The response ring's waiting flag is the program's: a reply put while it
    is clear rings nothing; while set, the doorbell rings."""
    conn = StandIn()
    region = mmap.mmap(-1, rings.region_size(SIZE))
    rings.init_region(memoryview(region), SIZE)
    _, program_resp = rings.program_side(memoryview(region), SIZE)
    ch = ringpoll.Channel(conn, region, SIZE, os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK))
    try:
        assert ch.resp.put(FRAME)
        ch.ring_doorbell()
        assert not _readable(ch.resp_efd)
        program_resp.set_flag(1)       # the program is about to sleep in poll
        assert ch.resp.put(FRAME)
        ch.ring_doorbell()
        assert _readable(ch.resp_efd)
        assert program_resp.get() is not None and program_resp.get() is not None
    finally:
        ch.close()


class Recorder(StandIn):
    """Records how the poller handed each request over."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.aborted = False

    def serve(self, frame):
        self.calls.append(("serve", frame.kind, bytes(frame.payload)))
        super().serve(frame)

    def serve_read(self, *fields):
        self.calls.append(("read", *fields))
        super().serve(None)

    def write_in_place(self, rid, tid, h, offset, data):
        self.calls.append(("in place", rid, tid, h, offset, type(data), bytes(data)))
        return False           # not taken there: the poller copies the data out and calls serve_write

    def serve_write(self, rid, tid, flags, h, offset, addr, event, data):
        self.calls.append(("write", rid, tid, flags, h, offset, addr, event, type(data), bytes(data)))
        super().serve(None)

    def abort(self):
        self.aborted = True


def test_reads_and_writes_are_taken_apart_in_one_step_and_anything_else_decoded(monkeypatch):
    from ringzero.kernel import system
    counters = {"protocol_errors": 0}
    monkeypatch.setattr(system, "get", lambda: SimpleNamespace(counters=counters))
    conn = Recorder()
    ch, producer = channel(conn, rings.DEFAULT_SIZE)
    poller = ringpoll.Poller()
    try:
        big = bytes(range(256)) * 20                     # past the size a write is taken apart at
        read = wire.READ_FRAME.pack(wire.READ.size, wire.Kind.READ_FILE, 1, 0, 77, 5, 4, 100, -1, 0x1000, 0)
        write = wire.WRITE_HEAD.pack(wire.WRITE.size + len(big), wire.Kind.WRITE_FILE, 0, 0, 77, 6, 4, -1, 0, 0)
        small = wire.WRITE_HEAD.pack(wire.WRITE.size + 3, wire.Kind.WRITE_FILE, 0, 0, 77, 7, 4, -1, 0, 0)
        assert len(write) + len(big) > ringpoll._SPLIT_MIN
        assert producer.put(read) and producer.put(write, big) and producer.put(small, b"abc")
        poller.register(ch)
        assert wait_until(lambda: conn.served == 3)
        assert conn.calls[0] == ("read", 5, 77, 1, 4, 100, -1, 0x1000, 0)
        # a large synchronous write is offered where it lies first, then copied out
        assert conn.calls[1] == ("in place", 6, 77, 4, -1, memoryview, big)
        assert conn.calls[2] == ("write", 6, 77, 0, 4, -1, 0, 0, bytearray, big)
        assert conn.calls[3][:2] == ("serve", wire.Kind.WRITE_FILE) and conn.calls[3][2].endswith(b"abc")
        # a read that claims to carry descriptors is the program's protocol error
        bad = wire.READ_FRAME.pack(wire.READ.size, wire.Kind.READ_FILE, 0, 1, 77, 8, 4, 100, -1, 0, 0)
        assert producer.put(bad)
        os.eventfd_write(ch.req_efd, 1)
        assert wait_until(lambda: conn.aborted)
        assert conn.served == 3 and counters["protocol_errors"] == 1
    finally:
        poller.stop()
        ch.close()


def test_the_poller_says_which_cpu_it_is_on_while_it_polls_and_nothing_once_it_sleeps():
    # its threads start on this thread's one CPU and stay there: a migration between
    # two of its CPU_SECONDS refreshes cannot make what it says stale meanwhile
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(mask)})
    poller = ringpoll.Poller()
    conn = StandIn()
    seen = []
    try:
        ch, ring = channel(conn)
        conn.after_each = lambda: seen.append((rings.current_cpu(), ring.kernel_cpu()))
        for _ in range(50):
            assert ring.put(FRAME)
        poller.register(ch)
        assert wait_until(lambda: conn.served >= 50)
        # while it serves the ring it says where it runs (refreshed every CPU_SECONDS)
        assert all(0 < k <= os.cpu_count() for _, k in seen[1:])
        assert any(k == cpu + 1 for cpu, k in seen)
        # idle past its spin, it sleeps, and says it no longer knows
        assert wait_until(lambda: ring.kernel_cpu() == 0 and not ring.flag())
    finally:
        conn.after_each = None
        stop(poller)
        os.sched_setaffinity(0, mask)


def test_a_dispatch_that_blocks_when_no_thread_can_be_started_keeps_the_role(monkeypatch):
    """A dispatch that blocks hands the poller role to another thread; when the
    system will not start one, the blocked thread keeps the role, so every ring
    is served again once its dispatch returns (rather than by nobody)."""
    from ringzero.kernel import dbg
    from ringzero.kernel.ke import dispatcher as ke
    from ringzero.kernel.ke.clock import LARGE_INTEGER

    poller = ringpoll.Poller()
    slow, other = StandIn(), StandIn()
    blocked = threading.Event()

    def block_once():
        if not blocked.is_set():
            blocked.set()
            # a wait that blocks for 0.2 s: the block hook runs, and cannot start a thread
            ke.KeWaitForSingleObject(ke.KEVENT(), 0, 0, False, LARGE_INTEGER(-2_000_000))

    slow.after_each = block_once
    try:
        slow_ch, slow_ring = channel(slow)
        other_ch, other_ring = channel(other)
        poller.register(other_ch)
        assert slow_ring.put(FRAME)

        def refuse(self):
            raise RuntimeError("can't start new thread")
        monkeypatch.setattr(threading.Thread, "start", refuse)
        poller.register(slow_ch)
        assert blocked.wait(10)
        assert other_ring.put(FRAME)
        rings.fence()
        if not other_ring.flag():          # as a program does: the poller had gone to sleep before
            os.eventfd_write(other_ch.req_efd, 1)
        assert wait_until(lambda: other.served == 1)      # after the blocked dispatch returned
        assert slow.served == 1
        assert any("cannot start a ring poller thread" in r.text for r in dbg.recent(64))
    finally:
        monkeypatch.undo()
        stop(poller)


def test_a_connection_whose_reader_cannot_start_is_closed_and_a_blocked_reader_keeps_its_role(monkeypatch, tmp_path):
    """The same for a connection's socket reader: with no thread to be had, a
    new connection is closed (the kernel goes on accepting), and a reader whose
    dispatch blocks keeps reading once it returns."""
    import socket

    from ringzero.kernel.context import current
    from ringzero.kernel.host import KernelHost, ProgramConnection

    host = KernelHost(str(tmp_path / "k.sock"))
    host.bind()
    host.start_background()
    try:
        def refuse(self):
            raise RuntimeError("can't start new thread")
        monkeypatch.setattr(threading.Thread, "start", refuse)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(tmp_path / "k.sock"))
        s.settimeout(10)
        assert s.recv(16) == b""                            # closed at once, not left unserved
        s.close()
        assert wait_until(lambda: not host.connections)

        ours, theirs = socket.socketpair()
        conn = ProgramConnection(host, ours)
        token = object()
        conn.reader_token = current.reader_token = token
        current.connection = conn
        conn._on_block()                                    # about to park, and no thread to hand over to
        assert conn.reader_token is token and current.connection is conn
        ours.close()
        theirs.close()
    finally:
        monkeypatch.undo()
        current.connection = current.reader_token = None
        host.stop()


class InPlace(StandIn):
    """Takes every large write where it lies in the ring; the first one blocks
    meanwhile, as a driver's fast I/O routine that ignores Wait FALSE might."""

    def __init__(self):
        super().__init__()
        self.blocking = threading.Event()
        self.release = threading.Event()
        self.seen = []

    def write_in_place(self, rid, tid, h, offset, data):
        from ringzero.kernel.ke import dispatcher as ke
        self.seen.append((rid, bytes(data)))
        if len(self.seen) == 1:
            self.blocking.set()
            ev = ke.KEVENT()
            threading.Thread(target=lambda: (self.release.wait(10), ke.KeSetEvent(ev))).start()
            ke.KeWaitForSingleObject(ev)         # blocks: the poller role passes to another thread
        self.served += 1
        return True

    def serve_write(self, *fields):
        raise AssertionError("a write taken in place was served again")


def test_a_write_served_where_it_lies_is_served_once_even_if_its_driver_blocks():
    """While a write is served in place its frame stays in the ring (the room is
    the program's again only after), so if the dispatch blocks and another
    thread takes over the poller role, that one leaves the ring alone until the
    blocked dispatch returns, then serves what follows, each frame once."""
    poller = ringpoll.Poller()
    conn, other = InPlace(), StandIn()
    try:
        ch, producer = channel(conn, rings.DEFAULT_SIZE)
        other_ch, other_ring = channel(other)
        poller.register(other_ch)
        body = [bytes([i]) * 5000 for i in range(3)]
        for rid, data in enumerate(body, 1):
            head = wire.WRITE_HEAD.pack(wire.WRITE.size + len(data), wire.Kind.WRITE_FILE, 0, 0, 77, rid, 4, -1, 0, 0)
            assert producer.put(head, data)
        poller.register(ch)
        assert conn.blocking.wait(10)
        assert other_ring.put(FRAME)
        os.eventfd_write(other_ch.req_efd, 1)
        assert wait_until(lambda: other.served == 1)      # the other program is served meanwhile
        assert conn.seen == [(1, body[0])]               # and this ring left alone
        conn.release.set()
        assert wait_until(lambda: conn.served == 3)
        assert conn.seen == list(enumerate(body, 1))
        assert wait_until(lambda: producer.ctl[producer.tail_i] == producer.pos)   # all the room given back
    finally:
        conn.release.set()
        stop(poller)


def test_a_reply_built_in_the_response_ring_holds_back_what_is_sent_meanwhile():
    """A fast read's data is written straight into its reply's room in the
    response ring (ProgramConnection.hold); frames sent to the program
    meanwhile wait behind it, in order, and go once it is committed, or once
    its room is let go unanswered."""
    import socket

    from ringzero.kernel.host import ProgramConnection, _Req

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    region = mmap.mmap(-1, rings.region_size(SIZE))
    rings.init_region(memoryview(region), SIZE)
    _, program_resp = rings.program_side(memoryview(region), SIZE)
    conn = ProgramConnection(SimpleNamespace(max_payload=wire.DEFAULT_MAX_PAYLOAD), ours)
    conn.channel = ringpoll.Channel(conn, region, SIZE, os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK))

    def replies():
        out = []
        while (f := program_resp.get()) is not None:
            _, kind, _, _, _, rid, status, info = wire.REPLY_HEAD.unpack_from(f)
            out.append((rid, info, f[wire.REPLY_HEAD.size:]))
        return out

    try:
        first = _Req(conn, 1)
        room = first.read_buffer(100)
        assert room is not None and len(room) == 100
        assert _Req(conn, 9).read_buffer(10) is None        # one at a time
        _Req(conn, 2).complete(None, 0, 7, b"second")
        assert replies() == []                              # nothing yet: the first comes first
        room[:5] = b"first"
        first.complete(None, 0, 5, room[:5])
        assert replies() == [(1, 5, b"first"), (2, 7, b"second")]
        dropped = _Req(conn, 3)
        assert dropped.read_buffer(100) is not None
        _Req(conn, 4).complete(None, 0, 0, b"fourth")
        dropped.release_buffer()
        dropped.release_buffer()                            # (twice is once)
        assert replies() == [(4, 0, b"fourth")]
        assert conn.held is None and conn.held_back == []
    finally:
        conn.channel.close()
        ours.close()
        theirs.close()
