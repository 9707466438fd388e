"""Hostile and broken programs, speaking raw frames on the kernel's socket:
each is disconnected or gets a clear error, the kernel's memory for it stays
bounded, and another program (this test process) carries on after each."""

import ctypes
import os
import socket
import struct
import sys

import pytest

from conftest import TEST_DRIVERS, start_kernel, wait_until
from ringzero import client
from ringzero.nt import status as st
from ringzero.protocol import wire
from ringzero.protocol.wire import Kind
from ringzero.win32 import pywintypes, win32con, win32event, win32file, winerror

sys.path.insert(0, TEST_DRIVERS)
import recorder as R  # noqa: E402

RECORDER = os.path.join(TEST_DRIVERS, "recorder.py")
ECHO_IOCTL = None


class Raw:
    """A program that writes frames by hand."""

    def __init__(self, path, hello=True):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.s.settimeout(10)
        self.buf = b""
        if hello:
            self.send(wire.encode(wire.hello()))
            kind, _, payload = self.frame()
            assert kind == Kind.WELCOME

    def send(self, data: bytes):
        self.s.sendall(data)

    def request(self, kind, payload=b"", rid=7, flags=0):
        self.send(wire.HEADER.pack(len(payload), kind, flags, 0, 0, rid) + payload)
        return self.frame()

    def frame(self):
        while len(self.buf) < wire.HEADER_SIZE:
            self._more()
        length, kind, _flags, _nfds, _tid, rid = wire.HEADER.unpack_from(self.buf)
        while len(self.buf) < wire.HEADER_SIZE + length:
            self._more()
        payload = self.buf[wire.HEADER_SIZE:wire.HEADER_SIZE + length]
        self.buf = self.buf[wire.HEADER_SIZE + length:]
        return kind, rid, payload

    def status(self, kind, payload=b""):
        k, _, p = self.request(kind, payload)
        assert k == Kind.REPLY
        return wire.REPLY.unpack_from(p)[0]

    def _more(self):
        data = self.s.recv(65536)
        if not data:
            raise ConnectionResetError("the kernel closed the connection")
        self.buf += data

    def disconnected(self) -> bool:
        """True once the kernel has closed its end (replies already queued are read past)."""
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def processes():
    return client.connection().call("kernel.info")["processes"]


def others_carry_on(kernel):
    """Another program opens, talks to a driver and closes; the kernel's tables are as before."""
    h = win32file.CreateFile(r"\\.\Recorder", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
    assert len(win32file.DeviceIoControl(h, R.IOCTL_WHOAMI, None, 16)) == 16
    h.Close()
    assert kernel.proc.poll() is None


@pytest.fixture
def hk(kernel):
    kernel.load(RECORDER, "Recorder")
    client.connection().call("kernel.info")
    return kernel


def protocol_errors():
    return [r["text"] for r in client.connection().call("dbg.recent", count=4096)
            if r["level"] == "fault" and "protocol error" in r["text"]]


BAD_STREAMS = {
    "bad magic": wire.HEADER.pack(wire.HELLO.size, Kind.HELLO, 0, 0, 0, 1) + wire.HELLO.pack(0xDEADBEEF, 1, 0),
    "bad version": wire.HEADER.pack(wire.HELLO.size, Kind.HELLO, 0, 0, 0, 1) + wire.HELLO.pack(wire.MAGIC, 99, 0),
    "truncated hello": wire.HEADER.pack(2, Kind.HELLO, 0, 0, 0, 1) + b"RR",
    "request before hello": wire.HEADER.pack(8, Kind.CLOSE_HANDLE, 0, 0, 0, 1) + struct.pack("<Q", 4),
    "unknown kind": wire.HEADER.pack(0, 0x7777, 0, 0, 0, 1),
}


@pytest.mark.parametrize("name", list(BAD_STREAMS))
def test_a_bad_handshake_is_disconnected(hk, name):
    before = processes()
    r = Raw(hk.socket, hello=False)
    r.send(BAD_STREAMS[name])
    assert r.disconnected()
    r.close()
    assert wait_until(lambda: processes() == before)
    assert protocol_errors()
    others_carry_on(hk)


AFTER_HELLO = {
    "oversized length": wire.HEADER.pack(wire.DEFAULT_MAX_PAYLOAD + 1, Kind.WRITE_FILE, 0, 0, 0, 1),
    "huge length": wire.HEADER.pack(0xFFFFFFFF, Kind.DEVICE_IO_CONTROL, 0, 0, 0, 1),
    "unknown kind": wire.HEADER.pack(0, 0x7777, 0, 0, 0, 1),
    "a kernel's frame": wire.HEADER.pack(wire.REPLY.size, Kind.REPLY, 0, 0, 0, 1) + wire.REPLY.pack(0, 0),
    "hello again": wire.encode(wire.hello()),
    "truncated ioctl": wire.HEADER.pack(3, Kind.DEVICE_IO_CONTROL, 0, 0, 0, 1) + b"abc",
    "truncated wait": wire.HEADER.pack(wire.WAIT.size, Kind.WAIT, 0, 0, 0, 1) + wire.WAIT.pack(0, 0, 60, 0),
    "descriptors announced, none sent": wire.HEADER.pack(8, Kind.CLOSE_HANDLE, 0, 3, 0, 1) + struct.pack("<Q", 4),
}


@pytest.mark.parametrize("name", list(AFTER_HELLO))
def test_a_malformed_frame_ends_that_program_only(hk, name):
    before = processes()
    r = Raw(hk.socket)
    assert processes() == before + 1
    r.send(AFTER_HELLO[name])
    assert r.disconnected()
    r.close()
    assert wait_until(lambda: processes() == before)
    others_carry_on(hk)


def test_bogus_closed_and_foreign_handles_are_invalid_handle(hk):
    mine = win32file.CreateFile(r"\\.\Recorder", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
    r = Raw(hk.socket)
    ioctl = lambda h: wire.IOCTL.pack(h, R.IOCTL_WHOAMI, 0, 16, 0, 0, 0)  # noqa: E731
    for h in (0, 0xDEAD, 1 << 63, int(mine)):   # the last is this process's handle, not the raw program's
        assert r.status(Kind.DEVICE_IO_CONTROL, ioctl(h)) == st.STATUS_INVALID_HANDLE
        assert r.status(Kind.CLOSE_HANDLE, struct.pack("<Q", h)) == st.STATUS_INVALID_HANDLE
    # its own handle works until it closes it
    name = rb"\\.\Recorder"
    k, _, p = r.request(Kind.CREATE_FILE, wire.CREATE_FILE.pack(win32con.GENERIC_READ, 0, 3, 0, len(name)) + name)
    status, h = wire.REPLY.unpack_from(p)
    assert status == 0 and h
    assert r.status(Kind.DEVICE_IO_CONTROL, ioctl(h)) == 0
    assert r.status(Kind.CLOSE_HANDLE, struct.pack("<Q", h)) == 0
    assert r.status(Kind.DEVICE_IO_CONTROL, ioctl(h)) == st.STATUS_INVALID_HANDLE
    # the foreign handle is untouched
    assert len(win32file.DeviceIoControl(mine, R.IOCTL_WHOAMI, None, 16)) == 16
    r.close()
    mine.Close()
    others_carry_on(hk)


def test_user_buffers_need_proof_first_and_a_bad_address_is_an_access_violation(hk):
    hk.load("ringzero.drivers.example", "Example")
    r = Raw(hk.socket)
    name = rb"\\.\Example\RAW"
    _, _, p = r.request(Kind.CREATE_FILE, wire.CREATE_FILE.pack(win32con.GENERIC_READ | win32con.GENERIC_WRITE, 0,
                                                                3, 0, len(name)) + name)
    status, h = wire.REPLY.unpack_from(p)
    assert status == 0
    # the raw program is this process: the kernel reads its memory to check the proof
    probe = ctypes.create_string_buffer(b"8 bytes!", 8)
    value = struct.unpack("<Q", probe.raw)[0]
    offer = lambda v: r.status(Kind.OFFER_MEMORY, wire.OFFER_MEMORY.pack(ctypes.addressof(probe), v))  # noqa: E731
    assert offer(value + 1) == st.STATUS_INVALID_PARAMETER
    assert offer(value) == st.STATUS_SUCCESS

    def write(address, length):
        payload = wire.WRITE.pack(h, -1, address, 0) + wire.WRITE_LENGTH.pack(length)
        _, _, p = r.request(Kind.WRITE_FILE, payload, flags=wire.FLAG_USER_BUFFER)
        return wire.REPLY.unpack_from(p)

    assert write(0x10, 100) == (st.STATUS_ACCESS_VIOLATION, 0)        # nothing mapped there
    assert write(1 << 62, 100) == (st.STATUS_ACCESS_VIOLATION, 0)     # not a user address at all
    data = ctypes.create_string_buffer(b"from my own buffer", 18)
    assert write(ctypes.addressof(data), 18) == (0, 18)
    # the copy-back of a read goes straight into the buffer the request names
    into = ctypes.create_string_buffer(18)
    _, _, p = r.request(Kind.READ_FILE, wire.READ.pack(h, 18, -1, ctypes.addressof(into), 0),
                        flags=wire.FLAG_USER_BUFFER)
    assert wire.REPLY.unpack_from(p) == (0, 18) and len(p) == wire.REPLY.size
    assert into.raw == b"from my own buffer"
    r.close()
    # without the proof the flag is a protocol error
    r2 = Raw(hk.socket)
    r2.send(wire.HEADER.pack(wire.WRITE.size + 8, Kind.WRITE_FILE, wire.FLAG_USER_BUFFER, 0, 0, 1)
            + wire.WRITE.pack(1, -1, ctypes.addressof(data), 0) + wire.WRITE_LENGTH.pack(18))
    assert r2.disconnected()
    assert wait_until(lambda: any("FLAG_USER_BUFFER" in t for t in protocol_errors()))
    r2.close()
    others_carry_on(hk)


def test_huge_buffer_lengths_are_refused_without_allocating_them(hk):
    h = win32file.CreateFile(r"\\.\Recorder", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
    r = Raw(hk.socket)
    name = rb"\\.\Recorder"
    _, _, p = r.request(Kind.CREATE_FILE, wire.CREATE_FILE.pack(win32con.GENERIC_READ, 0, 3, 0, len(name)) + name)
    _, rh = wire.REPLY.unpack_from(p)
    for out_len in (0xFFFFFFFF, (1 << 31), 64 * 1024 * 1024):
        assert r.status(Kind.DEVICE_IO_CONTROL, wire.IOCTL.pack(rh, R.IOCTL_WHOAMI, 0, out_len, 0, 0, 0)) \
            == st.STATUS_INSUFFICIENT_RESOURCES
        assert r.status(Kind.READ_FILE, wire.READ.pack(rh, out_len, 0, 0, 0)) == st.STATUS_INSUFFICIENT_RESOURCES
    # the wait's handle count is bounded by the frame, not by its claim
    assert r.status(Kind.CLOSE_HANDLE, struct.pack("<Q", rh)) == 0
    r.close()
    h.Close()
    others_carry_on(hk)


@pytest.mark.parametrize("overlapped", [False, True])
def test_an_input_too_large_for_a_frame_fails_the_call_not_the_connection(hk, overlapped):
    """An IOCTL's input travels in its request's frame: one over the frame's
    limit fails with ERROR_NO_SYSTEM_RESOURCES, as a system buffer the I/O
    manager cannot allocate does, and the program goes on talking."""
    conn = client.connection()
    flags = win32con.FILE_FLAG_OVERLAPPED if overlapped else 0
    h = win32file.CreateFile(r"\\.\Recorder", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, flags, None)
    ov = None
    if overlapped:
        ov = pywintypes.OVERLAPPED()
        ov.hEvent = win32event.CreateEvent(None, True, False, None)
    with pytest.raises(pywintypes.error) as e:
        win32file.DeviceIoControl(h, R.IOCTL_WHOAMI, b"a" * (conn.max_payload + 1), 16, ov)
    assert e.value.winerror == winerror.ERROR_NO_SYSTEM_RESOURCES
    assert client.connection() is conn and not conn.closed
    assert len(win32file.DeviceIoControl(h, R.IOCTL_WHOAMI, b"a" * 1000, 16, ov)) == 16
    assert not protocol_errors()
    h.Close()
    others_carry_on(hk)


def test_a_program_that_never_speaks_costs_no_process_and_blocks_nobody(hk):
    before = processes()
    silent = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(20)]
    for s in silent:
        s.connect(hk.socket)
    others_carry_on(hk)
    assert processes() == before
    for s in silent:
        s.close()
    others_carry_on(hk)


def test_a_program_that_stops_reading_its_replies_is_disconnected(hk):
    r = Raw(hk.socket)
    r.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    name = rb"\\.\Recorder"
    _, _, p = r.request(Kind.CREATE_FILE, wire.CREATE_FILE.pack(win32con.GENERIC_READ, 0, 3, 0, len(name)) + name)
    _, rh = wire.REPLY.unpack_from(p)
    # each request asks for a 1 MiB answer; the program never reads one
    req = wire.IOCTL.pack(rh, R.IOCTL_FILL, 9, 1 << 20, 0, 0, 0) + struct.pack("<IIB", 1 << 20, 0, 1)
    frame = wire.HEADER.pack(len(req), Kind.DEVICE_IO_CONTROL, 0, 0, 0, 9) + req
    r.s.setblocking(False)
    sent = 0
    try:
        for _ in range(64):
            r.s.send(frame)
            sent += 1
    except (BlockingIOError, BrokenPipeError, ConnectionResetError):
        pass
    others_carry_on(hk)
    assert wait_until(lambda: any("stopped reading its replies" in t for t in
                                  (x["text"] for x in client.connection().call("dbg.recent", count=4096))),
                      timeout=60)
    r.s.setblocking(True)
    r.s.settimeout(10)
    assert r.disconnected()
    r.close()
    others_carry_on(hk)


def _quota_kernel(tmp_path, monkeypatch, *args):
    return start_kernel(tmp_path, monkeypatch, loads=[RECORDER], extra_args=args)


def _open_recorder():
    return win32file.CreateFile(r"\\.\Recorder", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)


def _another_program_opens(k, count: int) -> None:
    """Another program opens `count` handles to the Recorder: its quota and limits are its own."""
    k.run(f"""
        from ringzero.win32 import win32file, win32con
        hs = [win32file.CreateFile(r"\\\\.\\Recorder", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING,
                                   0, None) for _ in range({count})]
    """)


def test_handle_quota(tmp_path, monkeypatch):
    k = _quota_kernel(tmp_path, monkeypatch, "--max-handles", "4")
    try:
        open_ = _open_recorder
        hs = [open_() for _ in range(4)]
        with pytest.raises(pywintypes.error) as e:
            open_()
        assert e.value.winerror == winerror.ERROR_NO_SYSTEM_RESOURCES
        with pytest.raises(pywintypes.error) as e:
            win32event.CreateEvent(None, True, False, None)
        assert e.value.winerror == winerror.ERROR_NO_SYSTEM_RESOURCES
        # the driver saw the refused open's cleanup and close, as for any file object
        c, cl, clo, _ = struct.unpack("<IIII", win32file.DeviceIoControl(hs[0], R.IOCTL_COUNTS, None, 16))
        assert (c, cl, clo) == (5, 1, 1)
        hs.pop().Close()
        hs.append(open_())
        _another_program_opens(k, 4)
        for h in hs:
            h.Close()
    finally:
        k.stop()


def test_outstanding_request_quota(tmp_path, monkeypatch):
    k = _quota_kernel(tmp_path, monkeypatch, "--max-pending", "3")
    try:
        h = win32file.CreateFile(r"\\.\Recorder", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING,
                                 win32con.FILE_FLAG_OVERLAPPED, None)
        ovs = []
        for _ in range(3):
            ov = pywintypes.OVERLAPPED()
            ov.hEvent = win32event.CreateEvent(None, True, False, None)
            win32file.DeviceIoControl(h, R.IOCTL_PEND, None, 0, ov)
            assert pywintypes.get_last_error() == winerror.ERROR_IO_PENDING
            ovs.append(ov)
        ov = pywintypes.OVERLAPPED()
        ov.hEvent = win32event.CreateEvent(None, True, False, None)
        with pytest.raises(pywintypes.error) as e:
            win32file.DeviceIoControl(h, R.IOCTL_PEND, None, 0, ov)
        assert e.value.winerror == winerror.ERROR_NO_SYSTEM_RESOURCES
        # another program is not affected, and can complete ours
        k.run(f"""
            import struct
            from ringzero.win32 import win32file, win32con
            h = win32file.CreateFile(r"\\\\.\\Recorder", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
            assert struct.unpack("<I", win32file.DeviceIoControl(h, {R.IOCTL_COMPLETE_ALL}, None, 4))[0] == 3
        """)
        for o in ovs:
            assert win32event.WaitForSingleObject(o.hEvent, 10_000) == win32event.WAIT_OBJECT_0
        # under the quota again
        win32file.DeviceIoControl(h, R.IOCTL_PEND, None, 0, ov)
        win32file.CancelIo(h)
        h.Close()
    finally:
        k.stop()


def test_open_handles_count_against_the_programs_quota(tmp_path, monkeypatch):
    """Each open handle is charged what it costs the kernel, as NT charges an
    object's pool quota to the process that opens it: handles cannot hold the
    kernel's memory past a program's quota either.  Closing gives it back, and
    another program's quota is its own."""
    from ringzero.kernel.ob.handles import HANDLE_CHARGE
    k = _quota_kernel(tmp_path, monkeypatch, "--max-io-memory", "64K")
    try:
        open_ = _open_recorder
        hs = []
        with pytest.raises(pywintypes.error) as e:
            while len(hs) < 1000:
                hs.append(open_())
        assert e.value.winerror == winerror.ERROR_NOT_ENOUGH_QUOTA
        assert len(hs) == (64 << 10) // HANDLE_CHARGE
        with pytest.raises(pywintypes.error) as e:
            win32event.CreateEvent(None, True, False, None)
        assert e.value.winerror == winerror.ERROR_NOT_ENOUGH_QUOTA
        with pytest.raises(pywintypes.error) as e:     # a request's IRP is charged to the same quota
            win32file.DeviceIoControl(hs[0], R.IOCTL_COUNTS, None, 16)
        assert e.value.winerror == winerror.ERROR_NOT_ENOUGH_QUOTA
        for _ in range(3):
            hs.pop().Close()                        # the quota comes back
        c, cl, clo, _ = struct.unpack("<IIII", win32file.DeviceIoControl(hs[0], R.IOCTL_COUNTS, None, 16))
        assert (c, cl, clo) == (len(hs) + 4, 4, 4)   # the refused open got its cleanup and close, as any does
        hs.append(open_())
        _another_program_opens(k, 32)
        for h in hs:
            h.Close()
        ev = win32event.CreateEvent(None, True, False, None)
        ev.Close()
        others_carry_on(k)
    finally:
        k.stop()


def test_an_outstanding_requests_charge_covers_what_it_costs_the_kernel(tmp_path, monkeypatch):
    """Each outstanding request is charged IRP_CHARGE besides its buffers; the
    kernel's memory grows by no more than that for each (its RSS over 20 000
    pending one-byte reads), so the quota bounds the kernel's real memory."""
    from ringzero.drivers.example_ioctl import EXAMPLE_BLOCKING_READS, IOCTL_EXAMPLE_SET_BLOCKING
    from ringzero.kernel.io.file import IRP_CHARGE
    k = _quota_kernel(tmp_path, monkeypatch)
    try:
        k.load("ringzero.drivers.example", "Example")
        h = win32file.CreateFile("\\\\.\\Example\\Charge", win32con.GENERIC_READ | win32con.GENERIC_WRITE, 0,
                                 None, win32con.OPEN_EXISTING, win32con.FILE_FLAG_OVERLAPPED, None)
        win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_BLOCKING, struct.pack("<I", EXAMPLE_BLOCKING_READS), 0)

        def kernel_rss() -> int:
            with open(f"/proc/{k.proc.pid}/status") as f:
                return int(f.read().split("VmRSS:")[1].split()[0]) * 1024
        n = 20_000
        before = kernel_rss()
        pending = [pywintypes.OVERLAPPED() for _ in range(n)]
        for ov in pending:
            assert win32file.ReadFile(h, 1, ov)[0] == winerror.ERROR_IO_PENDING
        per_request = (kernel_rss() - before) / n
        assert IRP_CHARGE / 4 < per_request <= IRP_CHARGE, per_request
        win32file.CancelIo(h)
        h.Close()
        others_carry_on(k)
    finally:
        k.stop()


def test_pending_requests_hold_no_more_system_buffers_than_the_programs_quota(tmp_path, monkeypatch):
    """Blocking reads and writes that pend keep their IRPs and system buffers; a
    program that piles them up meets its quota (ERROR_NOT_ENOUGH_QUOTA), as NT
    charges them to its pool quota, and gets it back as they complete or are
    cancelled.  Another program's quota is its own."""
    from ringzero.drivers.example_ioctl import EXAMPLE_BLOCKING_READS, IOCTL_EXAMPLE_SET_BLOCKING
    k = _quota_kernel(tmp_path, monkeypatch, "--max-io-memory", "1M")
    try:
        k.load("ringzero.drivers.example", "Example")
        h = win32file.CreateFile("\\\\.\\Example\\Q", win32con.GENERIC_READ | win32con.GENERIC_WRITE, 0, None,
                                 win32con.OPEN_EXISTING, win32con.FILE_FLAG_OVERLAPPED, None)
        win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_BLOCKING, struct.pack("<I", EXAMPLE_BLOCKING_READS), 0)
        pending = []
        with pytest.raises(pywintypes.error) as e:
            for _ in range(10):
                ov = pywintypes.OVERLAPPED()
                hr, _ = win32file.ReadFile(h, 300 << 10, ov)
                assert hr == winerror.ERROR_IO_PENDING
                pending.append(ov)
        assert e.value.winerror == winerror.ERROR_NOT_ENOUGH_QUOTA
        assert len(pending) == 3                       # 3 x 300 KiB fit in 1 MiB, a fourth does not
        k.run("""
            from ringzero.win32 import win32file, win32con
            h = win32file.CreateFile("\\\\\\\\.\\\\Example\\\\Q", win32con.GENERIC_READ | win32con.GENERIC_WRITE,
                                     0, None, win32con.OPEN_EXISTING, 0, None)
            # 900 KiB of system buffer while the reader holds 900 KiB: another program's quota is its own
            assert win32file.WriteFile(h, b"x" * (900 << 10))[1] == 900 << 10
        """)
        for ov in pending:                             # the write filled the three pending reads
            assert win32file.GetOverlappedResult(h, ov, True) == 300 << 10
        pending = []
        for _ in range(3):                             # the quota came back
            ov = pywintypes.OVERLAPPED()
            assert win32file.ReadFile(h, 300 << 10, ov)[0] == winerror.ERROR_IO_PENDING
            pending.append(ov)
        win32file.CancelIo(h)
        for ov in pending:
            with pytest.raises(pywintypes.error) as e:
                win32file.GetOverlappedResult(h, ov, True)
            assert e.value.winerror == winerror.ERROR_OPERATION_ABORTED
        ov = pywintypes.OVERLAPPED()
        assert win32file.ReadFile(h, 900 << 10, ov)[0] == winerror.ERROR_IO_PENDING   # and back again
        win32file.CancelIo(h)
        # each request's IRP counts too: reads of a byte cannot pile up without end either
        from ringzero.kernel.io.file import IRP_CHARGE
        count = 0
        with pytest.raises(pywintypes.error) as e:
            while count < 100_000:
                assert win32file.ReadFile(h, 1, pywintypes.OVERLAPPED())[0] == winerror.ERROR_IO_PENDING
                count += 1
        assert e.value.winerror == winerror.ERROR_NOT_ENOUGH_QUOTA
        from ringzero.kernel.ob.handles import HANDLE_CHARGE
        assert count == ((1 << 20) - HANDLE_CHARGE) // (1 + IRP_CHARGE)     # (h is charged too)
        win32file.CancelIo(h)
        h.Close()
        others_carry_on(k)
    finally:
        k.stop()


def test_pool_limit_fails_allocations_not_the_kernel(tmp_path, monkeypatch):
    """A program that makes a driver allocate without end (the Example driver
    allocates a context per name and a ring of any size it is asked for) finds
    ExAllocatePool returning NULL at the limit, as on NT: its requests fail,
    the kernel and other programs carry on, and the pool comes back as the
    handles close."""
    from ringzero.drivers.example_ioctl import IOCTL_EXAMPLE_SET_SIZE
    k = _quota_kernel(tmp_path, monkeypatch, "--max-pool", "1M")
    try:
        k.load("ringzero.drivers.example", "Example")
        assert client.connection().call("kernel.info")["pool"]["limit"] == 1 << 20

        def pipe(name):
            return win32file.CreateFile("\\\\.\\Example\\" + name, win32con.GENERIC_READ | win32con.GENERIC_WRITE,
                                        0, None, win32con.OPEN_EXISTING, 0, None)

        big = pipe("BIG")
        with pytest.raises(pywintypes.error) as e:
            win32file.DeviceIoControl(big, IOCTL_EXAMPLE_SET_SIZE, struct.pack("<I", 2 << 20), 0)
        assert e.value.winerror == winerror.ERROR_NO_SYSTEM_RESOURCES
        handles = []
        with pytest.raises(pywintypes.error) as e:
            for i in range(1000):                     # 4 KiB and a little per name: the limit comes first
                handles.append(pipe(f"N{i}"))
        assert e.value.winerror == winerror.ERROR_NO_SYSTEM_RESOURCES
        assert 100 < len(handles) < 300
        info = client.connection().call("kernel.info")["pool"]
        assert info["in_use"] <= info["limit"]
        warnings = [r["text"] for r in client.connection().call("dbg.recent", count=4096)
                    if r["level"] == "warning" and "pool limit reached" in r["text"]]
        assert warnings
        others_carry_on(k)
        for h in handles:
            h.Close()
        # room again: the ring the limit refused before now fits
        win32file.DeviceIoControl(big, IOCTL_EXAMPLE_SET_SIZE, struct.pack("<I", 512 << 10), 0)
        win32file.WriteFile(big, b"after")
        assert win32file.ReadFile(big, 16)[1] == b"after"
        big.Close()
        assert client.connection().call("kernel.info")["pool"]["in_use"] == 0
    finally:
        k.stop()


def _few_descriptors():
    import resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (600, 600))


def test_a_program_opening_without_end_runs_out_before_the_kernels_descriptors_do(tmp_path, monkeypatch):
    """Each Example name holds a pool section (its ring, a page), and each
    section two of the kernel's descriptors: at the section limit, three
    quarters of them, the opens fail with ERROR_NO_SYSTEM_RESOURCES as at the
    pool limit, and a new program still connects, with its rings, and is served."""
    k = start_kernel(tmp_path, monkeypatch, loads=[RECORDER], preexec_fn=_few_descriptors)
    try:
        k.load("ringzero.drivers.example", "Example")
        handles = []
        with pytest.raises(pywintypes.error) as e:
            for i in range(1000):
                handles.append(win32file.CreateFile("\\\\.\\Example\\N%d" % i, win32con.GENERIC_READ, 0, None,
                                                    win32con.OPEN_EXISTING, 0, None))
        assert e.value.winerror == winerror.ERROR_NO_SYSTEM_RESOURCES
        assert 150 < len(handles) <= 600 * 3 // 4 // 2
        warnings = [r["text"] for r in client.connection().call("dbg.recent", count=4096)
                    if r["level"] == "warning" and "section limit reached" in r["text"]]
        assert len(warnings) == 1
        r = k.run("""
            from ringzero import client
            from ringzero.win32 import win32file, win32con
            h = win32file.CreateFile(r"\\\\.\\Recorder", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
            assert len(win32file.DeviceIoControl(h, %d, None, 16)) == 16
            print("rings", client.connection().resp_ring is not None)
        """ % R.IOCTL_WHOAMI)
        assert r.stdout.split() == ["rings", "True"]
        for h in handles[:10]:
            h.Close()
        more = [win32file.CreateFile("\\\\.\\Example\\M%d" % i, win32con.GENERIC_READ, 0, None,
                                     win32con.OPEN_EXISTING, 0, None) for i in range(10)]
        for h in handles[10:] + more:
            h.Close()
        assert client.connection().call("kernel.info")["pool"]["in_use"] == 0
        others_carry_on(k)
    finally:
        k.stop()


def test_rings_another_process_has_used_end_the_connection_as_kernel_gone(hk):
    """Both halves of a fork that ran no Python fork hooks (libc's fork() by
    ctypes) share one connection's rings; whichever finds them inconsistent
    gets KernelGone saying so, not the wire's own exception, and the kernel
    and other programs carry on."""
    h = win32file.CreateFile(r"\\.\Recorder", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
    conn = client.connection()
    ring = conn.req_ring
    ring.ctl[ring.tail_i] = ring.pos + (1 << 40)        # a tail no consumer of this ring could have left
    with pytest.raises(client.KernelGone, match="request ring is corrupt"):
        win32file.DeviceIoControl(h, R.IOCTL_WHOAMI, None, 16)
    h.Detach()
    client.disconnect()
    others_carry_on(hk)

