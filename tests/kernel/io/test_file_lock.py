"""The lock of a file object opened for synchronous I/O (NT's IopLockFileObject):
the requests on one synchronous handle reach the driver one at a time, each
holding the lock until it is done, and the close of the last handle waits for
it too; an overlapped handle's requests do not wait for each other.  Shown with
the Example driver, whose blocking reads pend until a writer supplies data."""

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import examplepipe
from conftest import wait_until
from examplepipe import query, set_blocking
from ringzero.win32 import pywintypes, win32event, win32file, winerror

NAME = "\\\\.\\Example\\Lock"
pipe = examplepipe.opener(NAME)


@pytest.fixture
def ex(kernel):
    return examplepipe.load(kernel)


def handle_row(k, h, pid=None) -> dict | None:
    """The kernel's row for handle `h` of `pid` (this program's by default), or None."""
    for p in k.call("handles.list", pid=os.getpid() if pid is None else pid):
        for row in p["handles"]:
            if row["handle"] == int(h):
                return row
    return None


class Call(threading.Thread):
    """fn(*args) on a thread of its own; result() is its value (or raises what it raised)."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.value = self.error = None
        self.done = threading.Event()
        self.start()

    def run(self):
        try:
            self.value = self.fn(*self.args)
        except BaseException as e:  # noqa: B036 - handed to the test
            self.error = e
        finally:
            self.done.set()

    def result(self, timeout: float = 20.0):
        assert self.done.wait(timeout), f"{self.fn.__name__} did not return"
        if self.error is not None:
            raise self.error
        return self.value


def pending_read(h, feeder) -> Call:
    """A blocking ReadFile on `h`, pending in the driver."""
    reader = Call(win32file.ReadFile, h, 100)
    assert wait_until(lambda: query(feeder).PendingReads == 1)
    return reader


def test_a_write_on_a_synchronous_handle_waits_for_the_read_pending_on_it(ex):
    h, feeder = pipe(), pipe()
    set_blocking(h)
    reader = pending_read(h, feeder)
    assert handle_row(ex, h)["busy"] is True
    writer = Call(win32file.WriteFile, h, b"mine")
    assert wait_until(lambda: handle_row(ex, h)["waiters"] == 1)
    assert not writer.done.is_set()
    assert query(feeder).BytesQueued == 0            # the write has not reached the driver
    shown = subprocess.run([sys.executable, "-m", "ringzero.cli.main", "handles", "--pid", str(os.getpid())],
                           env=ex.env, capture_output=True, text=True, timeout=60).stdout
    assert [line for line in shown.splitlines() if line.strip().startswith(f"{int(h):X}:")][0].endswith(
        "\\Device\\Example\\Lock  [busy, 1 waiting]")
    win32file.WriteFile(feeder, b"data")             # completes the read, which lets the write go
    assert reader.result() == (0, b"data")           # (without the lock the read would get "mine")
    assert writer.result() == (0, 4)
    assert query(feeder).BytesQueued == 4
    row = handle_row(ex, h)
    assert (row["busy"], row["waiters"]) == (False, 0)


def test_a_device_control_on_a_synchronous_handle_waits_for_the_read_pending_on_it(ex):
    h, feeder = pipe(), pipe()
    set_blocking(h)
    reader = pending_read(h, feeder)
    asking = Call(query, h)
    assert wait_until(lambda: handle_row(ex, h)["waiters"] == 1)
    win32file.WriteFile(feeder, b"xy")
    assert reader.result() == (0, b"xy")
    assert asking.result().PendingReads == 0          # it ran after the read, not beside it


def test_closing_a_synchronous_handle_waits_for_its_pending_read(ex):
    h, feeder = pipe(), pipe()
    set_blocking(h)
    reader = pending_read(h, feeder)
    value = int(h)
    closer = Call(h.Close)
    assert wait_until(lambda: handle_row(ex, value) is None)
    # the handle is gone from the table and IRP_MJ_CLEANUP waits for the lock:
    # the read is still pending, the context still has both file objects
    info = query(feeder)
    assert (info.PendingReads, info.ReferenceCount) == (1, 2)
    assert not closer.done.is_set()
    win32file.WriteFile(feeder, b"late")
    assert reader.result() == (0, b"late")
    closer.result()
    assert wait_until(lambda: query(feeder).ReferenceCount == 1)


def test_cancelioex_from_another_thread_ends_the_read_and_the_waiting_write_goes_on(ex):
    h, feeder = pipe(), pipe()
    set_blocking(h)
    reader = pending_read(h, feeder)
    writer = Call(win32file.WriteFile, h, b"next")
    assert wait_until(lambda: handle_row(ex, h)["waiters"] == 1)
    win32file.CancelIoEx(h)
    with pytest.raises(pywintypes.error) as e:
        reader.result()
    assert e.value.winerror == winerror.ERROR_OPERATION_ABORTED
    assert writer.result() == (0, 4)
    assert query(feeder).BytesQueued == 4


def test_an_overlapped_handle_does_not_serialise_its_requests(ex):
    h, feeder = pipe(win32file.FILE_FLAG_OVERLAPPED), pipe()
    set_blocking(h)
    ov = pywintypes.OVERLAPPED()
    ov.hEvent = win32event.CreateEvent(None, True, False, None)
    hr, _ = win32file.ReadFile(h, 100, ov)
    assert hr == winerror.ERROR_IO_PENDING
    assert "busy" not in handle_row(ex, h)
    wov = pywintypes.OVERLAPPED()
    wov.hEvent = win32event.CreateEvent(None, True, False, None)
    win32file.WriteFile(h, b"mine", wov)              # goes at once, and feeds the pending read
    assert win32event.WaitForSingleObject(wov.hEvent, 20000) == win32event.WAIT_OBJECT_0   # (not behind the read)
    assert win32file.GetOverlappedResult(h, wov, True) == 4
    assert win32event.WaitForSingleObject(ov.hEvent, 20000) == win32event.WAIT_OBJECT_0
    assert win32file.GetOverlappedResult(h, ov, True) == 4
    assert bytes(ov._buffer[:4]) == b"mine"
    assert query(feeder).PendingReads == 0


def test_a_program_killed_while_its_request_waits_for_the_lock_leaves_nothing_behind(ex):
    feeder = pipe()
    src = textwrap.dedent(f'''
        import struct, sys, threading
        from ringzero.drivers.example_ioctl import EXAMPLE_BLOCKING_READS, IOCTL_EXAMPLE_SET_BLOCKING
        from ringzero.win32 import win32file
        h = win32file.CreateFile({NAME!r}, win32file.GENERIC_READ | win32file.GENERIC_WRITE, 0, None,
                                 win32file.OPEN_EXISTING, 0, None)
        win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_BLOCKING, struct.pack("<I", EXAMPLE_BLOCKING_READS), 0)
        threading.Thread(target=win32file.ReadFile, args=(h, 100), daemon=True).start()
        print(int(h), flush=True)
        threading.Thread(target=win32file.WriteFile, args=(h, b"never"), daemon=True).start()
        threading.Event().wait()
    ''')
    child = subprocess.Popen([sys.executable, "-c", src], stdout=subprocess.PIPE, text=True)
    try:
        handle = int(child.stdout.readline())
        assert wait_until(lambda: (handle_row(ex, handle, child.pid) or {}).get("waiters") == 1)
        assert query(feeder).PendingReads == 1
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    assert wait_until(lambda: query(feeder).ReferenceCount == 1)
    info = query(feeder)
    assert (info.PendingReads, info.BytesQueued) == (0, 0)   # the read cancelled, the write never made
    win32file.WriteFile(feeder, b"ok")
    assert query(feeder).BytesQueued == 2
    bad = [r for r in ex.call("dbg.recent", count=4096) if r["level"] in ("fault", "leak")]
    assert not bad, bad


def test_one_program_may_have_only_so_many_requests_waiting_for_locks(ex):
    from ringzero.kernel.io.file import MAX_LOCK_WAITS
    h, feeder = pipe(), pipe()
    set_blocking(h)
    reader = pending_read(h, feeder)
    writers = [Call(win32file.WriteFile, h, b"w") for _ in range(MAX_LOCK_WAITS)]
    assert wait_until(lambda: handle_row(ex, h)["waiters"] == MAX_LOCK_WAITS, timeout=60)
    # one more would cost the kernel one more thread: refused, and the others wait on
    with pytest.raises(pywintypes.error) as e:
        win32file.WriteFile(h, b"one too many")
    assert e.value.winerror == winerror.ERROR_NO_SYSTEM_RESOURCES
    win32file.WriteFile(feeder, b"go")
    assert reader.result() == (0, b"go")
    assert [w.result(60) for w in writers] == [(0, 1)] * MAX_LOCK_WAITS
    assert query(feeder).BytesQueued == MAX_LOCK_WAITS
