"""The Example driver across real processes: per-name resource contexts, the
ring buffer, blocking reads and writes and their cancellation, and programs
that die."""

import ctypes
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from conftest import wait_until
from ringzero.drivers.example_ioctl import (EXAMPLE_BLOCKING_READS, EXAMPLE_BLOCKING_WRITES,
                                            EXAMPLE_DEFAULT_BUFFER_SIZE, EXAMPLE_MAX_BUFFER_SIZE,
                                            EXAMPLE_QUERY_INFORMATION, IOCTL_EXAMPLE_QUERY, IOCTL_EXAMPLE_SET_BLOCKING,
                                            IOCTL_EXAMPLE_SET_SIZE, query_name)
from ringzero.win32 import pywintypes, win32event, win32file, winerror

TAG = "Exmp"

# What every program below starts with.
PRELUDE = textwrap.dedent(r'''
    import ctypes, os, random, struct, sys, threading, time
    from ringzero.win32 import pywintypes, win32file, winerror
    from ringzero.drivers.example_ioctl import *

    def pipe(name, flags=0):
        return win32file.CreateFile("\\\\.\\Example\\" + name, win32file.GENERIC_READ | win32file.GENERIC_WRITE,
                                    0, None, win32file.OPEN_EXISTING, flags, None)

    def set_blocking(h):
        win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_BLOCKING, struct.pack("<I", EXAMPLE_BLOCKING_READS), 0)

    def write(h, data, overlapped=False):
        if not overlapped:
            return win32file.WriteFile(h, data)[1]
        ov = pywintypes.OVERLAPPED()
        win32file.WriteFile(h, data, ov)
        return win32file.GetOverlappedResult(h, ov, True)
''')


def program(code: str) -> str:
    return PRELUDE + textwrap.dedent(code)


@pytest.fixture
def ex(kernel):
    kernel.load("ringzero.drivers.example", "Example")
    return kernel


def pipe(name: str, flags: int = 0):
    return win32file.CreateFile("\\\\.\\Example\\" + name, win32file.GENERIC_READ | win32file.GENERIC_WRITE, 0, None,
                                win32file.OPEN_EXISTING, flags, None)


def query(h, name: str | None = None) -> EXAMPLE_QUERY_INFORMATION:
    out = win32file.DeviceIoControl(h, IOCTL_EXAMPLE_QUERY, query_name(name) if name else None,
                                    ctypes.sizeof(EXAMPLE_QUERY_INFORMATION))
    return EXAMPLE_QUERY_INFORMATION.from_buffer_copy(out)


def set_size(h, size: int) -> None:
    win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_SIZE, struct.pack("<I", size), 0)


def set_blocking(h, flags: int = EXAMPLE_BLOCKING_READS) -> None:
    win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_BLOCKING, struct.pack("<I", flags), 0)


def pool_rows(k):
    return [r for r in k.call("pool.stats") if r["tag"] == TAG]


def pool_in_use(k) -> int:
    return sum(r["bytes"] for r in pool_rows(k))


def no_faults(k) -> None:
    bad = [r for r in k.call("dbg.recent", count=4096) if r["level"] in ("fault", "leak")]
    assert not bad, bad


def pending(call, h, arg):
    """Issue an overlapped ReadFile or WriteFile that must pend; its OVERLAPPED."""
    ov = pywintypes.OVERLAPPED()
    ov.hEvent = win32event.CreateEvent(None, True, False, None)
    hr, _ = call(h, arg, ov)
    assert hr == winerror.ERROR_IO_PENDING
    return ov


def overlapped_read(h, size: int):
    return pending(win32file.ReadFile, h, size)


def overlapped_result(h, ov) -> bytes:
    # bounded, so a read that never completes fails the test instead of hanging it
    assert win32event.WaitForSingleObject(ov.hEvent, 20000) == win32event.WAIT_OBJECT_0
    n = win32file.GetOverlappedResult(h, ov, True)
    return bytes(ov._buffer[:n])


# -- names and contexts ---------------------------------------------------------------

def test_hello_in_any_case_reaches_one_context(ex):
    mine = pipe("hello")
    ex.run(program('''
        h = pipe("HELLO")
        assert win32file.WriteFile(h, b"from HELLO ")[1] == 11
        h.Close()
    '''))
    r = ex.run(program('''
        h = pipe("Hello")
        win32file.WriteFile(h, b"from Hello")
        info = EXAMPLE_QUERY_INFORMATION.from_buffer_copy(win32file.DeviceIoControl(h, IOCTL_EXAMPLE_QUERY, None, ctypes.sizeof(EXAMPLE_QUERY_INFORMATION)))
        print(info.ReferenceCount)
        h.Close()
    '''))
    assert r.stdout.split() == ["2"]          # this program's handle and ours
    assert win32file.ReadFile(mine, 100) == (0, b"from HELLO from Hello")
    info = query(mine)
    assert (info.ReferenceCount, info.ContextCount, info.BytesQueued) == (1, 1, 0)
    mine.Close()
    no_faults(ex)


def test_hello_and_temp_are_isolated(ex):
    hello, temp = pipe("HELLO"), pipe("Temp")
    ex.run(program('''
        win32file.WriteFile(pipe("Temp"), b"for Temp only")
    '''))
    assert win32file.ReadFile(hello, 100) == (0, b"")
    assert query(hello).ContextCount == 2
    assert query(hello, "Temp").BytesQueued == len(b"for Temp only")
    assert win32file.ReadFile(temp, 100) == (0, b"for Temp only")
    win32file.WriteFile(hello, b"for HELLO")
    assert win32file.ReadFile(temp, 100) == (0, b"")
    assert win32file.ReadFile(hello, 100) == (0, b"for HELLO")


def test_opening_the_device_itself_is_refused(ex):
    for path in ("\\\\.\\Example", "\\\\.\\Example\\"):
        with pytest.raises(pywintypes.error) as e:
            win32file.CreateFile(path, win32file.GENERIC_READ, 0, None, win32file.OPEN_EXISTING, 0, None)
        assert e.value.winerror == winerror.ERROR_INVALID_NAME
    assert pool_in_use(ex) == 0


def test_the_context_is_freed_when_its_last_handle_closes(ex):
    observer = pipe("Temp")
    assert pool_in_use(ex) > 0
    with_temp_only = pool_in_use(ex)
    closer = ex.spawn(program('''
        h = pipe("HELLO"); print("open", flush=True); sys.stdin.readline(); h.Close()
        print("closed", flush=True); sys.stdin.readline()
    '''), stdin=subprocess.PIPE)
    exiter = ex.spawn(program('''
        h = pipe("hello"); win32file.WriteFile(h, b"queued"); print("open", flush=True); sys.stdin.readline()
    '''), stdin=subprocess.PIPE)
    killed = ex.spawn(program('''
        h = pipe("HeLLo"); print("open", flush=True); time.sleep(600)
    '''))
    for p in (closer, exiter, killed):
        assert p.stdout.readline() == "open\n"
    info = query(observer, "HELLO")
    assert (info.ReferenceCount, info.ContextCount, info.BytesQueued) == (3, 2, 6)
    assert pool_in_use(ex) > with_temp_only

    closer.stdin.write("\n"), closer.stdin.flush()          # CloseHandle
    assert closer.stdout.readline() == "closed\n"
    assert query(observer, "HELLO").ReferenceCount == 2
    exiter.stdin.close()                                    # the program ends
    assert exiter.wait(30) == 0
    assert wait_until(lambda: query(observer, "HELLO").ReferenceCount == 1)
    os.kill(killed.pid, signal.SIGKILL)                     # the program is killed
    killed.wait(30)
    assert wait_until(lambda: query(observer, "HELLO").ContextCount == 1)
    info = query(observer, "HELLO")
    assert (info.ReferenceCount, info.BufferSize, info.BytesQueued, info.ContextCount) == (0, 0, 0, 1)
    assert pool_in_use(ex) == with_temp_only
    closer.stdin.close(), closer.wait(30)

    observer.Close()
    rows = pool_rows(ex)
    assert rows and all(r["diff"] == 0 and r["bytes"] == 0 for r in rows)
    assert rows[0]["allocs"] == 4                           # two contexts, each with its ring
    no_faults(ex)
    assert ex.call("driver.unload", service="Example")["leaks"] == []


def test_a_new_context_after_the_old_one_was_freed_starts_empty(ex):
    h = pipe("HELLO")
    win32file.WriteFile(h, b"old data")
    set_size(h, 100)
    h.Close()
    h = pipe("HELLO")
    info = query(h)
    assert (info.BufferSize, info.BytesQueued, info.ReferenceCount) == (EXAMPLE_DEFAULT_BUFFER_SIZE, 0, 1)
    assert win32file.ReadFile(h, 100) == (0, b"")


# -- the ring buffer ------------------------------------------------------------------

def test_reads_and_writes_never_block_by_default(ex):
    h = pipe("HELLO")
    assert win32file.ReadFile(h, 100) == (0, b"")           # empty: 0 bytes at once
    data = bytes(range(256)) * 20                            # 5120 bytes > the 4 KiB ring
    assert win32file.WriteFile(h, data) == (0, EXAMPLE_DEFAULT_BUFFER_SIZE)
    assert win32file.WriteFile(h, b"more") == (0, 0)         # full: nothing stored
    info = query(h)
    assert (info.BufferSize, info.BytesQueued) == (EXAMPLE_DEFAULT_BUFFER_SIZE, EXAMPLE_DEFAULT_BUFFER_SIZE)
    _, got = win32file.ReadFile(h, 1000)
    assert got == data[:1000]
    assert win32file.WriteFile(h, data[4096:]) == (0, 1000)  # wraps around the end
    _, rest = win32file.ReadFile(h, 10000)
    assert rest == data[1000:5096]
    assert query(h).BytesQueued == 0


def test_set_size_keeps_what_is_queued(ex):
    h = pipe("HELLO")
    win32file.WriteFile(h, b"0123456789" * 400)
    win32file.ReadFile(h, 3000)
    win32file.WriteFile(h, b"abcdefghij" * 300)              # the ring now wraps
    queued = b"0123456789" * 100 + b"abcdefghij" * 300
    assert query(h).BytesQueued == len(queued)
    with pytest.raises(pywintypes.error) as e:
        set_size(h, len(queued) - 1)
    assert e.value.winerror == winerror.ERROR_INSUFFICIENT_BUFFER
    set_size(h, 1 << 20)
    info = query(h)
    assert (info.BufferSize, info.BytesQueued) == (1 << 20, len(queued))
    assert win32file.WriteFile(h, b"x" * 100000) == (0, 100000)
    assert win32file.ReadFile(h, 200000) == (0, queued + b"x" * 100000)
    set_size(h, 16)
    assert win32file.WriteFile(h, b"y" * 20) == (0, 16)


@pytest.mark.parametrize("size", [0, EXAMPLE_MAX_BUFFER_SIZE + 1])
def test_set_size_out_of_bounds_is_refused(ex, size):
    h = pipe("HELLO")
    with pytest.raises(pywintypes.error) as e:
        set_size(h, size)
    assert e.value.winerror == winerror.ERROR_INVALID_PARAMETER
    assert query(h).BufferSize == EXAMPLE_DEFAULT_BUFFER_SIZE


def test_malformed_ioctls_are_refused(ex):
    h = pipe("HELLO")
    cases = [(IOCTL_EXAMPLE_SET_SIZE, b"\x01", 0, winerror.ERROR_INVALID_USER_BUFFER),
             (IOCTL_EXAMPLE_SET_BLOCKING, b"", 0, winerror.ERROR_INVALID_USER_BUFFER),
             (IOCTL_EXAMPLE_SET_BLOCKING, struct.pack("<I", 4), 0, winerror.ERROR_INVALID_PARAMETER),
             (IOCTL_EXAMPLE_QUERY, None, ctypes.sizeof(EXAMPLE_QUERY_INFORMATION) - 1,
              winerror.ERROR_INSUFFICIENT_BUFFER),
             (IOCTL_EXAMPLE_QUERY + 0x40, None, 0, winerror.ERROR_INVALID_FUNCTION)]
    for code, inp, out, err in cases:
        with pytest.raises(pywintypes.error) as e:
            win32file.DeviceIoControl(h, code, inp, out)
        assert e.value.winerror == err, hex(code)


def test_set_size_needs_write_access(ex):
    h = win32file.CreateFile("\\\\.\\Example\\HELLO", win32file.GENERIC_READ, 0, None, win32file.OPEN_EXISTING, 0, None)
    with pytest.raises(pywintypes.error) as e:
        set_size(h, 100)
    assert e.value.winerror == winerror.ERROR_ACCESS_DENIED
    set_blocking(h, 0)          # a reader may choose how it reads
    assert query(h).ReferenceCount == 1


# Each handle's reads and writes go one of two ways: a synchronous handle's by
# the driver's fast I/O routines, an overlapped one's as IRPs.
PATHS = {"fast I/O": 0, "IRP": win32file.FILE_FLAG_OVERLAPPED}


def read(h, n: int, overlapped: bool = False) -> bytes:
    """ReadFile of up to `n` bytes, waited for on an overlapped handle."""
    if not overlapped:
        return win32file.ReadFile(h, n)[1]
    ov = pywintypes.OVERLAPPED()
    win32file.ReadFile(h, n, ov)
    return bytes(ov._buffer[:win32file.GetOverlappedResult(h, ov, True)])


def write(h, data: bytes, overlapped: bool = False) -> int:
    """WriteFile; the count stored, waited for on an overlapped handle."""
    if not overlapped:
        return win32file.WriteFile(h, data)[1]
    ov = pywintypes.OVERLAPPED()
    win32file.WriteFile(h, data, ov)
    return win32file.GetOverlappedResult(h, ov, True)


def fast_io_calls(k) -> int:
    return k.call("driver.counters", service="Example")["counters"]["fast_io"]


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=hs.lists(hs.one_of(hs.tuples(hs.just("write"), hs.integers(0, 3000)),
                              hs.tuples(hs.just("read"), hs.integers(0, 3000)),
                              hs.tuples(hs.just("size"), hs.integers(1, 5000))), max_size=25))
def test_the_ring_behaves_as_a_bounded_fifo(ex, path, ops):
    h = pipe("Model", PATHS[path])
    irp = path == "IRP"
    size, model, counter = EXAMPLE_DEFAULT_BUFFER_SIZE, bytearray(), 0
    fast_before = fast_io_calls(ex)
    try:
        for op, n in ops:
            if op == "write":
                data = bytes((counter + i) % 251 for i in range(n))
                counter += n
                stored = write(h, data, irp)
                assert stored == min(n, size - len(model))
                model += data[:stored]
            elif op == "read":
                assert read(h, n, irp) == bytes(model[:n])
                del model[:n]
            elif len(model) > n:
                with pytest.raises(pywintypes.error):
                    set_size(h, n)
            else:
                set_size(h, n)
                size = n
            info = query(h)
            assert (info.BufferSize, info.BytesQueued) == (size, len(model))
    finally:
        h.Close()
    # zero-length reads and writes are fast I/O too: every one of them went its handle's way
    assert fast_io_calls(ex) - fast_before == (sum(op != "size" for op, _ in ops) if path == "fast I/O" else 0)


# -- several writers ------------------------------------------------------------------

WRITER = '''
    wid, total, seed = {wid}, {total}, {seed}
    stream = random.Random(1000 + wid).randbytes(total).translate(bytes((wid << 6) | (b & 0x3F) for b in range(256)))
    rng = random.Random(seed)
    h = pipe("HELLO", {flags})
    print("open", flush=True)
    pos = 0
    while pos < total:
        n = rng.randint(1, 700)
        w = write(h, stream[pos:pos + n], {flags} != 0)
        pos += w
        if w == 0:
            time.sleep(0.001)
    print(pos, flush=True)
'''


def expected_stream(wid: int, total: int) -> bytes:
    """Writer `wid`'s bytes: its id in the top two bits, a pseudo-random stream below."""
    return random.Random(1000 + wid).randbytes(total).translate(bytes((wid << 6) | (b & 0x3F) for b in range(256)))


def drain_until(h, done, rng, overlapped: bool = False) -> bytearray:
    """Read with varied sizes until `done()` and the ring is empty."""
    got = bytearray()
    while True:
        finished = done()
        data = read(h, rng.randint(1, 1500), overlapped)
        got += data
        if not data and finished:
            return got


def demux(got: bytes) -> dict[int, bytes]:
    out = {w: bytearray() for w in range(4)}
    for b in got:
        out[b >> 6].append(b)
    return {w: bytes(v) for w, v in out.items()}


@pytest.mark.parametrize("path", PATHS)
def test_writers_in_several_processes_lose_and_duplicate_nothing(ex, path):
    h = pipe("HELLO", PATHS[path])
    set_size(h, 1024)                        # small: many short writes and wrap-arounds
    total = 30000
    writers = [ex.spawn(program(WRITER.format(wid=w, total=total, seed=w, flags=PATHS[path]))) for w in range(4)]
    for p in writers:
        assert p.stdout.readline() == "open\n"
    got = drain_until(h, lambda: all(p.poll() is not None for p in writers), random.Random(7), path == "IRP")
    accepted = [int(p.stdout.read().split()[-1]) for p in writers]
    assert [p.returncode for p in writers] == [0] * 4
    assert accepted == [total] * 4
    streams = demux(got)
    for w in range(4):
        assert streams[w] == expected_stream(w, total)     # every byte once, in the writer's order
    assert query(h).ReferenceCount == 1
    no_faults(ex)


VICTIM_TOTAL = 4 * 10 ** 6     # far more than it gets to write before it is killed


def test_a_writer_killed_mid_stream_does_not_disturb_the_others(ex):
    h = pipe("HELLO")
    set_size(h, 2048)
    finite = [ex.spawn(program(WRITER.format(wid=w, total=20000, seed=w, flags=0))) for w in (0, 1)]
    victim = ex.spawn(program(WRITER.format(wid=2, total=VICTIM_TOTAL, seed=2, flags=0)))
    for p in finite + [victim]:
        assert p.stdout.readline() == "open\n"
    rng = random.Random(3)
    got = bytearray()
    while sum(1 for b in got if b >> 6 == 2) < 5000:         # the victim is well under way
        got += win32file.ReadFile(h, rng.randint(1, 1500))[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(30)
    got += drain_until(h, lambda: all(p.poll() is not None for p in finite), rng)
    assert [p.returncode for p in finite] == [0, 0]
    streams = demux(got)
    for w in (0, 1):
        assert streams[w] == expected_stream(w, 20000)
    assert len(streams[2]) >= 5000
    assert len(streams[2]) < VICTIM_TOTAL
    assert streams[2] == expected_stream(2, VICTIM_TOTAL)[:len(streams[2])]   # a prefix: nothing torn or repeated
    assert wait_until(lambda: query(h).ReferenceCount == 1)
    win32file.WriteFile(h, b"still works")
    assert win32file.ReadFile(h, 100) == (0, b"still works")
    no_faults(ex)


@pytest.mark.parametrize("user_buffers", ["1", "0"])
def test_writes_and_reads_of_every_size_arrive_whole_by_every_path(ex, user_buffers):
    """Small data travels in the ring's frames; data larger than a ring frame is
    copied by the kernel from and into the program's own buffers (or, when the
    program keeps it off with RINGZERO_USER_BUFFERS=0, goes by the socket)."""
    r = ex.run(program(f'''
        os.environ["RINGZERO_USER_BUFFERS"] = {user_buffers!r}
        from ringzero import client
        from ringzero.win32 import win32event
        h = pipe("BIG")
        win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_SIZE, struct.pack("<I", 8 << 20), 0)
        conn = client.connection()
        rng = random.Random(5)
        for n in (1, 4096, conn.max_ring_body, conn.max_ring_body + 1, 1 << 20, 5 << 20):
            data = rng.randbytes(n)
            assert win32file.WriteFile(h, data) == (0, n)
            tail = data[:7]
            assert win32file.WriteFile(h, bytearray(tail)) == (0, len(tail))
            buf = win32file.AllocateReadBuffer(n + 7)
            hr, got = win32file.ReadFile(h, buf)
            assert bytes(got) == data + tail, n
            assert win32file.ReadFile(h, n)[1] == b""
        # an overlapped read too large for the ring, pending until another handle writes
        o = pipe("BIG", win32file.FILE_FLAG_OVERLAPPED)
        set_blocking(o)
        ov = pywintypes.OVERLAPPED()
        ov.hEvent = win32event.CreateEvent(None, True, False, None)
        assert win32file.ReadFile(o, 1 << 20, ov)[0] == winerror.ERROR_IO_PENDING
        try:
            ov._buffer.extend(b"?")     # the kernel will copy into this buffer: it may not move meanwhile
            movable = True
        except BufferError:
            movable = False
        assert movable is not conn.user_buffers
        data = rng.randbytes(1 << 20)
        assert win32file.WriteFile(h, data) == (0, 1 << 20)
        assert win32event.WaitForSingleObject(ov.hEvent, 20000) == win32event.WAIT_OBJECT_0
        n = win32file.GetOverlappedResult(o, ov, True)
        assert bytes(ov._buffer[:n]) == data
        ov._buffer.extend(b"!")         # done: free to move again
        print(conn.user_buffers)
    '''))
    assert r.stdout.split() == (["True"] if user_buffers == "1" else ["False"])
    no_faults(ex)


# -- blocking reads --------------------------------------------------------------------

def test_a_pending_read_is_completed_by_a_write_from_another_program(ex):
    h = pipe("HELLO", win32file.FILE_FLAG_OVERLAPPED)
    set_blocking(h)
    assert query(h).Flags == EXAMPLE_BLOCKING_READS
    ov = overlapped_read(h, 100)
    assert query(h).PendingReads == 1
    ex.run(program('''
        win32file.WriteFile(pipe("hello"), b"wake up")
    '''))
    assert overlapped_result(h, ov) == b"wake up"
    info = query(h)
    assert (info.PendingReads, info.BytesQueued) == (0, 0)


def test_a_blocking_read_in_a_program_waits_for_data(ex):
    reader = ex.spawn(program('''
        h = pipe("HELLO")
        set_blocking(h)
        print("reading", flush=True)
        print(win32file.ReadFile(h, 100)[1].decode(), flush=True)
    '''))
    assert reader.stdout.readline() == "reading\n"
    h = pipe("HELLO")
    assert wait_until(lambda: query(h).PendingReads == 1)
    assert win32file.WriteFile(h, b"here it is") == (0, 10)
    assert reader.stdout.readline() == "here it is\n"
    assert reader.wait(30) == 0


def test_a_write_completes_the_oldest_pending_read_first(ex):
    first = pipe("HELLO", win32file.FILE_FLAG_OVERLAPPED)
    second = pipe("HELLO", win32file.FILE_FLAG_OVERLAPPED)
    set_blocking(first), set_blocking(second)
    ov1 = overlapped_read(first, 2)
    ov2 = overlapped_read(second, 10)
    ov3 = overlapped_read(first, 10)
    assert query(first).PendingReads == 3
    ex.run(program('''
        win32file.WriteFile(pipe("HELLO"), b"hello")
    '''))
    assert overlapped_result(first, ov1) == b"he"               # the oldest read is filled first,
    assert overlapped_result(second, ov2) == b"llo"             # the next one takes the rest
    assert query(first).PendingReads == 1
    win32file.WriteFile(second, b"third")
    assert overlapped_result(first, ov3) == b"third"
    assert query(first).BytesQueued == 0


def test_a_non_blocking_handle_does_not_wait_behind_a_blocking_one(ex):
    blocking = pipe("HELLO", win32file.FILE_FLAG_OVERLAPPED)
    set_blocking(blocking)
    ov = overlapped_read(blocking, 10)
    plain = pipe("HELLO")
    assert win32file.ReadFile(plain, 10) == (0, b"")
    set_blocking(blocking, 0)
    assert win32file.ReadFile(blocking, 10) == (0, b"")        # the flag is per handle, at once
    win32file.WriteFile(plain, b"x")
    assert overlapped_result(blocking, ov) == b"x"


def test_cancelio_cancels_a_pending_read(ex):
    h = pipe("HELLO", win32file.FILE_FLAG_OVERLAPPED)
    set_blocking(h)
    ov = overlapped_read(h, 100)
    win32file.CancelIo(h)
    assert win32event.WaitForSingleObject(ov.hEvent, 20000) == win32event.WAIT_OBJECT_0
    with pytest.raises(pywintypes.error) as e:
        win32file.GetOverlappedResult(h, ov, True)
    assert e.value.winerror == winerror.ERROR_OPERATION_ABORTED
    assert query(h).PendingReads == 0
    win32file.WriteFile(h, b"kept")                            # no cancelled read swallows it
    assert query(h).BytesQueued == 4


def test_closing_the_handle_cancels_its_pending_read(ex):
    # an overlapped handle's: on a synchronous one the close waits for the read
    # (tests/kernel/io/test_file_lock.py), as CloseHandle does on Windows
    observer = pipe("HELLO")
    h = pipe("HELLO", win32file.FILE_FLAG_OVERLAPPED)
    set_blocking(h)
    ov = overlapped_read(h, 100)
    assert query(observer).PendingReads == 1
    h.Close()                                    # IRP_MJ_CLEANUP ends the read
    assert win32event.WaitForSingleObject(ov.hEvent, 20000) == win32event.WAIT_OBJECT_0
    with pytest.raises(pywintypes.error) as e:
        win32file.GetOverlappedResult(h, ov, True)
    assert e.value.winerror == winerror.ERROR_OPERATION_ABORTED
    info = query(observer)
    assert (info.PendingReads, info.ReferenceCount) == (0, 1)
    win32file.WriteFile(observer, b"kept")
    assert query(observer).BytesQueued == 4


def test_a_pending_read_is_cancelled_when_its_program_dies(ex):
    h = pipe("HELLO")
    reader = ex.spawn(program('''
        h = pipe("HELLO")
        set_blocking(h)
        print("reading", flush=True)
        win32file.ReadFile(h, 100)
        print("the read returned", flush=True)
    '''))
    assert reader.stdout.readline() == "reading\n"
    assert wait_until(lambda: query(h).PendingReads == 1)
    os.kill(reader.pid, signal.SIGKILL)
    reader.wait(30)
    assert wait_until(lambda: query(h).ReferenceCount == 1)
    assert query(h).PendingReads == 0
    win32file.WriteFile(h, b"nobody took it")
    assert query(h).BytesQueued == len(b"nobody took it")
    no_faults(ex)


# -- blocking writes ------------------------------------------------------------------

def overlapped_write(h, data: bytes):
    return pending(win32file.WriteFile, h, data)


def test_a_blocking_write_that_does_not_fit_waits_for_room(ex):
    w = pipe("HELLO", win32file.FILE_FLAG_OVERLAPPED)
    set_size(w, 8)
    set_blocking(w, EXAMPLE_BLOCKING_WRITES)
    ov = overlapped_write(w, b"0123456789ABCDEF")
    info = query(w)
    assert (info.BytesQueued, info.PendingWrites, info.Flags) == (8, 1, EXAMPLE_BLOCKING_WRITES)
    r = pipe("HELLO")
    assert win32file.ReadFile(r, 5) == (0, b"01234")          # the room it made takes 5 more bytes
    info = query(r)
    assert (info.BytesQueued, info.PendingWrites) == (8, 1)
    assert win32event.WaitForSingleObject(ov.hEvent, 0) == win32event.WAIT_TIMEOUT
    assert win32file.ReadFile(r, 100) == (0, b"56789ABCDEF")  # a read takes what came in behind it
    assert win32event.WaitForSingleObject(ov.hEvent, 20000) == win32event.WAIT_OBJECT_0
    assert win32file.GetOverlappedResult(w, ov, True) == 16
    info = query(r)
    assert (info.BytesQueued, info.PendingWrites) == (0, 0)


def test_no_write_overtakes_a_pending_one(ex):
    first = pipe("HELLO", win32file.FILE_FLAG_OVERLAPPED)
    set_size(first, 4)
    set_blocking(first, EXAMPLE_BLOCKING_WRITES)
    ov1 = overlapped_write(first, b"aaaaaa")
    plain = pipe("HELLO")
    assert win32file.WriteFile(plain, b"b") == (0, 0)           # a non-blocking write stores nothing
    ov2 = overlapped_write(first, b"cc")
    assert query(plain).PendingWrites == 2
    got = bytearray()
    while len(got) < 8:
        got += win32file.ReadFile(plain, 3)[1]
    assert got == b"aaaaaacc"
    assert win32file.GetOverlappedResult(first, ov1, True) == 6
    assert win32file.GetOverlappedResult(first, ov2, True) == 2


def test_a_synchronous_blocking_write_returns_once_all_of_it_is_stored(ex):
    writer = ex.spawn(program('''
        h = pipe("HELLO")
        win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_BLOCKING, struct.pack("<I", EXAMPLE_BLOCKING_WRITES), 0)
        data = bytes(i % 251 for i in range(100000))
        print("writing", flush=True)
        print(win32file.WriteFile(h, data)[1], flush=True)
    '''))
    assert writer.stdout.readline() == "writing\n"
    h = pipe("HELLO")
    assert wait_until(lambda: query(h).PendingWrites == 1)
    got = bytearray()
    while len(got) < 100000:
        got += win32file.ReadFile(h, 3000)[1]
    assert got == bytes(i % 251 for i in range(100000))
    assert writer.stdout.readline() == "100000\n"
    assert writer.wait(30) == 0


def test_cancelio_cancels_a_pending_write_and_keeps_what_it_stored(ex):
    h = pipe("HELLO", win32file.FILE_FLAG_OVERLAPPED)
    set_size(h, 8)
    set_blocking(h, EXAMPLE_BLOCKING_WRITES)
    ov = overlapped_write(h, b"0123456789ABCDEF")
    win32file.CancelIo(h)
    assert win32event.WaitForSingleObject(ov.hEvent, 20000) == win32event.WAIT_OBJECT_0
    with pytest.raises(pywintypes.error) as e:
        win32file.GetOverlappedResult(h, ov, True)
    assert e.value.winerror == winerror.ERROR_OPERATION_ABORTED
    assert ov.InternalHigh == 8                                # what it had stored, and stays queued
    info = query(h)
    assert (info.PendingWrites, info.BytesQueued) == (0, 8)
    assert win32file.ReadFile(h, 100) == (0, b"01234567")


def test_a_pending_write_is_cancelled_when_its_program_dies_and_the_next_one_goes_on(ex):
    h = pipe("HELLO", win32file.FILE_FLAG_OVERLAPPED)
    set_size(h, 8)
    writer = ex.spawn(program('''
        h = pipe("HELLO")
        win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_BLOCKING, struct.pack("<I", EXAMPLE_BLOCKING_WRITES), 0)
        print("writing", flush=True)
        win32file.WriteFile(h, b"v" * 20)
        print("the write returned", flush=True)
    '''))
    assert writer.stdout.readline() == "writing\n"
    assert wait_until(lambda: query(h).PendingWrites == 1)
    set_blocking(h, EXAMPLE_BLOCKING_WRITES)
    ov = overlapped_write(h, b"mine")                          # queued behind the victim's
    assert query(h).PendingWrites == 2
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(30)
    assert wait_until(lambda: query(h).ReferenceCount == 1)
    assert query(h).PendingWrites == 1
    assert win32file.ReadFile(h, 100)[1] == b"v" * 8 + b"mine"
    assert win32file.GetOverlappedResult(h, ov, True) == 4
    no_faults(ex)


assert 'h = pipe("HELLO", {flags})' in WRITER
WRITER_BLOCKING = WRITER.replace('h = pipe("HELLO", {flags})', '''h = pipe("HELLO", {flags})
    win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_BLOCKING, struct.pack("<I", EXAMPLE_BLOCKING_WRITES), 0)''')


@pytest.mark.parametrize("path", PATHS)
def test_blocking_writers_in_several_processes_lose_and_duplicate_nothing(ex, path):
    """A synchronous handle's write goes by fast I/O when it fits and pends as
    an IRP when it does not; an overlapped handle's is an IRP either way."""
    h = pipe("HELLO", PATHS[path])
    set_size(h, 512)
    total = 20000
    writers = [ex.spawn(program(WRITER_BLOCKING.format(wid=w, total=total, seed=w, flags=PATHS[path])))
               for w in range(4)]
    for p in writers:
        assert p.stdout.readline() == "open\n"
    got = drain_until(h, lambda: all(p.poll() is not None for p in writers), random.Random(11), path == "IRP")
    assert [int(p.stdout.read().split()[-1]) for p in writers] == [total] * 4
    streams = demux(got)
    for w in range(4):
        assert streams[w] == expected_stream(w, total)
    info = query(h)
    assert (info.ReferenceCount, info.PendingWrites) == (1, 0)
    no_faults(ex)


# -- the samples -------------------------------------------------------------------------

def sample(ex, *args, **kw):
    return subprocess.Popen([sys.executable, "-m", "ringzero.cli.main", "sample", *args], env=ex.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_usedriver2_writes_lines_that_usedriver3_prints(ex):
    h = pipe("HELLO")                                          # keeps the context between the two
    w = sample(ex, "usedriver2", "HELLO", stdin=subprocess.PIPE)
    out, err = w.communicate("first line\nsecond line\n", timeout=60)
    assert w.returncode == 0, err
    assert query(h).BytesQueued == len("first line\nsecond line\n")
    r = sample(ex, "usedriver3", "hello", stdin=subprocess.PIPE)
    out, err = r.communicate("\n\n", timeout=60)               # Enter twice: everything, then nothing
    assert r.returncode == 0, err
    assert out == "first line\nsecond line\n"


def test_usedriver2_reports_a_full_pipe(ex):
    h = pipe("HELLO")
    w = sample(ex, "usedriver2", "HELLO", "--size", "8", stdin=subprocess.PIPE)
    out, err = w.communicate("12345\n67890\n", timeout=60)
    assert w.returncode == 0, err
    assert "the pipe is full: 2 of 6 bytes stored" in err
    assert win32file.ReadFile(h, 100) == (0, b"12345\n67")


def test_usedriver2_wait_waits_for_room_instead_of_cutting_lines(ex):
    h = pipe("HELLO")
    set_size(h, 8)
    w = sample(ex, "usedriver2", "HELLO", "--wait", stdin=subprocess.PIPE)
    w.stdin.write("12345\n67890\n")
    w.stdin.close()
    assert wait_until(lambda: query(h).PendingWrites == 1)     # the second line waits for room
    got = bytearray()
    while len(got) < 12:
        got += win32file.ReadFile(h, 5)[1]
    assert got == b"12345\n67890\n"
    assert w.wait(60) == 0
    assert "full" not in w.stderr.read()


def test_usedriver3_follow_prints_as_data_arrives_until_interrupted(ex):
    h = pipe("HELLO")
    r = sample(ex, "usedriver3", "HELLO", "--follow", stdin=subprocess.DEVNULL)
    assert "Ctrl-C stops" in r.stderr.readline()
    for line in ("one\n", "two\n"):
        assert wait_until(lambda: query(h).PendingReads == 1)
        win32file.WriteFile(h, line.encode())
        assert r.stdout.readline() == line
    r.send_signal(signal.SIGINT)
    assert r.wait(30) == 0
    assert wait_until(lambda: query(h).ReferenceCount == 1)
    assert query(h).PendingReads == 0


def test_usedriver3_follow_stops_on_ctrl_c_whenever_it_comes(ex):
    """Ctrl-C as the reader starts, or while it prints, finds no read to
    cancel yet; it still stops cleanly."""
    h = pipe("HELLO")
    for burst in (0, 3):
        r = sample(ex, "usedriver3", "HELLO", "--follow", stdin=subprocess.DEVNULL)
        assert "Ctrl-C stops" in r.stderr.readline()
        for i in range(burst):
            win32file.WriteFile(h, b"%d\n" % i)
        r.send_signal(signal.SIGINT)
        assert r.wait(30) == 0, r.stderr.read()
        assert wait_until(lambda: query(h).ReferenceCount == 1)
        win32file.ReadFile(h, 4096)         # what it did not get to read


def test_usedriver3_says_so_when_the_kernel_stops_under_it(ex):
    r = sample(ex, "usedriver3", "HELLO", "--follow", stdin=subprocess.DEVNULL)
    assert "Ctrl-C stops" in r.stderr.readline()
    ex.proc.kill()                           # the kernel, gone at once
    ex.proc.wait()
    assert r.wait(30) == 1
    err = r.stderr.read()
    assert "the ringzero kernel closed the connection" in err and "is gone with it" in err
    assert "Traceback" not in err


def test_the_demo_scene(ex):
    r = ex.run('''
        from rich.console import Console
        from ringzero.samples.usedriver2 import demo
        print(demo(Console(width=200)))
    ''')
    assert r.stdout.strip().endswith("True")
    assert "'nothing crosses over.'" in r.stdout
    assert pool_in_use(ex) == 0
    no_faults(ex)


def test_the_demo_scene_leaves_a_name_in_use_to_its_programs(ex):
    """A program already on HELLO (a reader in another terminal, say) keeps
    what is written there: the scene's first pair takes a name of its own."""
    h = pipe("HELLO")
    win32file.WriteFile(h, b"mine\n")
    r = ex.run('''
        from rich.console import Console
        from ringzero.samples.usedriver2 import demo
        print(demo(Console(width=200)))
    ''')
    assert r.stdout.strip().endswith("True")
    assert "HELLO is in use on this kernel (1 handles open, 5 bytes queued)" in r.stdout
    assert win32file.ReadFile(h, 4096)[1] == b"mine\n"          # nothing of the scene's came here
    assert query(h).ReferenceCount == 1
    h.Close()
    assert pool_in_use(ex) == 0
    no_faults(ex)


def test_a_stopped_reader_does_not_hold_up_the_writer_that_completes_its_reads(ex):
    """IoCompleteRequest never waits for the program the IRP belongs to: a
    reader with many blocking reads pending that stops (SIGSTOP) before taking
    their data holds up neither the writer whose writes complete them (its
    replies wait for it in the kernel) nor anyone else, and once it runs again
    it gets every byte, in order."""
    chunk, count = 60000, 50
    reader = ex.spawn(program(f'''
        import signal
        from ringzero.win32 import win32event
        h = pipe("STOPPED", win32file.FILE_FLAG_OVERLAPPED)
        set_blocking(h)
        reads = []
        for _ in range({count}):
            ov = pywintypes.OVERLAPPED()
            ov.hEvent = win32event.CreateEvent(None, True, False, None)
            _, buf = win32file.ReadFile(h, {chunk}, ov)
            reads.append((ov, buf))
        print("pending", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
        got = b"".join(bytes(buf[:win32file.GetOverlappedResult(h, ov, True)]) for ov, buf in reads)
        print(len(got), got == b"".join(bytes([i]) * {chunk} for i in range({count})), flush=True)
    '''))
    assert reader.stdout.readline().strip() == "pending"
    assert wait_until(lambda: open(f"/proc/{reader.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T")
    h = pipe("STOPPED")
    for i in range(count):
        assert win32file.WriteFile(h, bytes([i]) * chunk)[1] == chunk     # each completes the oldest read
    assert reader.poll() is None                                          # still there, still stopped
    assert query(h).PendingReads == 0
    others = ex.run(program('''
        h = pipe("OTHER")
        assert write(h, b"x" * 100) == 100
        print(len(win32file.ReadFile(h, 4096)[1]))
    '''))
    assert others.stdout.strip() == "100"
    os.kill(reader.pid, signal.SIGCONT)
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    assert out.split() == [str(count * chunk), "True"]
    h.Close()
    no_faults(ex)
