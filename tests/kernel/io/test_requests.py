"""The I/O manager across real processes: copy-back, status mapping, cleanup and
close, pending and cancel, events between programs and drivers."""

import os
import signal
import struct

import pytest

from conftest import TEST_DRIVERS, wait_until
from ringzero.win32 import pywintypes, win32con, win32event, win32file, winerror

RECORDER = os.path.join(TEST_DRIVERS, "recorder.py")
PRELUDE = f"""
import os, struct, sys, time
sys.path.insert(0, {TEST_DRIVERS!r})
from ringzero.win32 import win32file, win32event, win32con, pywintypes
import recorder as R
def open_rec():
    return win32file.CreateFile(r"\\\\.\\Recorder", win32con.GENERIC_READ | win32con.GENERIC_WRITE, 0, None,
                                win32con.OPEN_EXISTING, 0, None)
"""

import sys  # noqa: E402
sys.path.insert(0, TEST_DRIVERS)
import recorder as R  # noqa: E402


def open_rec(access=win32con.GENERIC_READ | win32con.GENERIC_WRITE, flags=0):
    return win32file.CreateFile(r"\\.\Recorder", access, 0, None, win32con.OPEN_EXISTING, flags, None)


_query = []


def counts():
    """The recorder's totals, read through one handle held for the whole test."""
    c, cl, clo, open_files = struct.unpack("<IIII", win32file.DeviceIoControl(_query[0], R.IOCTL_COUNTS, None, 16))
    return {"create": c, "cleanup": cl, "close": clo, "open": open_files}


@pytest.fixture
def rec(kernel):
    kernel.load(RECORDER, "Recorder")
    _query[:] = [open_rec()]
    yield kernel
    _query.clear()


def fill(h, info, status, out_len, byte=0xAB):
    return win32file.DeviceIoControl(h, R.IOCTL_FILL, struct.pack("<IIB", info, status, byte), out_len)


def test_buffered_copy_back_honours_information_exactly(rec):
    h = open_rec()
    for info in (0, 1, 7, 64):
        assert fill(h, info, 0, 64) == b"\xab" * info
    # Information beyond the output buffer: only the buffer's worth comes back
    assert fill(h, 500, 0, 32) == b"\xab" * 32
    # into a caller's buffer: exactly Information bytes written, the rest untouched
    out = bytearray(b"\x11" * 16)
    mv = win32file.DeviceIoControl(h, R.IOCTL_FILL, struct.pack("<IIB", 5, 0, 0xCD), out)
    assert bytes(mv) == b"\xcd" * 5
    assert out == b"\xcd" * 5 + b"\x11" * 11
    h.Close()


def test_error_status_copies_nothing_and_maps_to_win32(rec):
    h = open_rec()
    out = bytearray(b"\x11" * 16)
    with pytest.raises(pywintypes.error) as e:
        win32file.DeviceIoControl(h, R.IOCTL_FILL, struct.pack("<IIB", 16, 0xC0000023, 0xCD), out)
    assert e.value.winerror == winerror.ERROR_INSUFFICIENT_BUFFER  # STATUS_BUFFER_TOO_SMALL -> 122
    assert e.value.funcname == "DeviceIoControl"
    assert out == b"\x11" * 16
    for status, code in [(0xC0000010, 1), (0xC0000022, 5), (0xC000000D, 87), (0xC0000001, 31)]:
        with pytest.raises(pywintypes.error) as e:
            fill(h, 0, status, 8)
        assert e.value.winerror == code
    with pytest.raises(pywintypes.error) as e:
        win32file.DeviceIoControl(h, 0x00229999, None, 0)  # no such code: the driver says invalid request
    assert e.value.winerror == winerror.ERROR_INVALID_FUNCTION
    h.Close()


def test_warning_status_still_copies_back(rec):
    h = open_rec()
    # STATUS_BUFFER_OVERFLOW is a warning: NT copies the data and the caller sees ERROR_MORE_DATA
    assert fill(h, 8, 0x80000005, 8) == b"\xab" * 8
    assert pywintypes.get_last_error() == winerror.ERROR_MORE_DATA
    h.Close()


def test_open_errors(kernel):
    for name, code in [(r"\\.\NoSuchDevice", winerror.ERROR_FILE_NOT_FOUND),
                       (r"\\.\NoDir\Deeper\X", winerror.ERROR_PATH_NOT_FOUND)]:
        with pytest.raises(pywintypes.error) as e:
            win32file.CreateFile(name, win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
        assert e.value.winerror == code, name


def test_missing_major_function_is_invalid_device_request(kernel):
    h = win32file.CreateFile(r"\\.\Echo", win32con.GENERIC_READ | win32con.GENERIC_WRITE, 0, None,
                             win32con.OPEN_EXISTING, 0, None)
    with pytest.raises(pywintypes.error) as e:
        win32file.ReadFile(h, 16)   # the echo driver has no IRP_MJ_READ
    assert e.value.winerror == winerror.ERROR_INVALID_FUNCTION
    h.Close()


def test_ioctl_access_bits_checked_before_the_driver(rec):
    h = open_rec(win32con.GENERIC_READ)
    with pytest.raises(pywintypes.error) as e:
        win32file.DeviceIoControl(h, R.IOCTL_NEEDS_WRITE, None, 0)
    assert e.value.winerror == winerror.ERROR_ACCESS_DENIED
    h.Close()
    h = open_rec(win32con.GENERIC_READ | win32con.GENERIC_WRITE)
    win32file.DeviceIoControl(h, R.IOCTL_NEEDS_WRITE, None, 0)
    h.Close()


def test_close_sends_cleanup_then_close(rec):
    before = counts()
    h = open_rec()
    h.Close()
    after = counts()
    assert after["create"] - before["create"] == 1
    assert after["cleanup"] - before["cleanup"] == 1
    assert after["close"] - before["close"] == 1


def test_closed_handle_is_invalid(rec):
    h = open_rec()
    raw = int(h)
    h.Close()
    with pytest.raises(pywintypes.error) as e:
        win32file.DeviceIoControl(raw, R.IOCTL_COUNTS, None, 16)
    assert e.value.winerror == winerror.ERROR_INVALID_HANDLE


def test_kill_9_gives_exactly_one_cleanup_and_close_per_file(rec):
    before = counts()
    p = rec.spawn(PRELUDE + """
hs = [open_rec() for _ in range(3)]
print("ready", flush=True)
time.sleep(600)
""")
    assert p.stdout.readline().strip() == "ready"
    assert counts()["open"] - before["open"] == 3
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert wait_until(lambda: counts()["close"] - before["close"] == 3)
    after = counts()
    assert after["cleanup"] - before["cleanup"] == 3
    assert after["close"] - before["close"] == 3
    assert after["open"] == before["open"]
    assert "recorder: cleanup pid %d" % p.pid in rec.log()   # cleanup ran in the dead program's context


def test_handles_are_per_process(rec):
    h = open_rec()
    r = rec.run(PRELUDE + f"""
try:
    win32file.DeviceIoControl({int(h)}, R.IOCTL_COUNTS, None, 16)
except pywintypes.error as e:
    print(e.winerror)
""")
    assert r.stdout.strip() == str(winerror.ERROR_INVALID_HANDLE)
    h.Close()


def test_dispatch_runs_in_the_requestors_context(rec):
    h = open_rec()
    cur, req = struct.unpack("<QQ", win32file.DeviceIoControl(h, R.IOCTL_WHOAMI, None, 16))
    assert cur == req == os.getpid()
    h.Close()


def test_the_driver_sees_the_calling_threads_id(rec):
    # PsGetCurrentThreadId in the dispatch routine is the program's GetCurrentThreadId, thread by thread
    import threading
    from ringzero.win32 import win32api
    h = open_rec()
    seen = {}

    def ask(name):
        pid, _, tid = struct.unpack("<QQQ", win32file.DeviceIoControl(h, R.IOCTL_WHOAMI, None, 24))
        seen[name] = (pid, tid, win32api.GetCurrentThreadId())
    ask("main")
    t = threading.Thread(target=ask, args=("other",))
    t.start()
    t.join()
    h.Close()
    assert seen["main"] == (os.getpid(), threading.get_native_id(), threading.get_native_id())
    assert seen["other"][1] == seen["other"][2] != seen["main"][1]


def test_pending_irp_cancelled_by_cancelio(rec):
    h = open_rec(flags=win32con.FILE_FLAG_OVERLAPPED)
    ov = pywintypes.OVERLAPPED()
    ov.hEvent = win32event.CreateEvent(None, True, False, None)
    win32file.DeviceIoControl(h, R.IOCTL_PEND, None, 0, ov)
    assert pywintypes.get_last_error() == winerror.ERROR_IO_PENDING
    with pytest.raises(pywintypes.error) as e:
        win32file.GetOverlappedResult(h, ov, False)
    assert e.value.winerror == winerror.ERROR_IO_INCOMPLETE
    assert win32event.WaitForSingleObject(ov.hEvent, 0) == win32event.WAIT_TIMEOUT
    win32file.CancelIo(h)
    assert win32event.WaitForSingleObject(ov.hEvent, 10_000) == win32event.WAIT_OBJECT_0
    with pytest.raises(pywintypes.error) as e:
        win32file.GetOverlappedResult(h, ov, True)
    assert e.value.winerror == winerror.ERROR_OPERATION_ABORTED
    h.Close()


def test_pending_irp_completed_later_by_another_program(rec):
    h = open_rec(flags=win32con.FILE_FLAG_OVERLAPPED)
    ov = pywintypes.OVERLAPPED()
    ov.hEvent = win32event.CreateEvent(None, True, False, None)
    win32file.DeviceIoControl(h, R.IOCTL_PEND, None, 0, ov)
    r = rec.run(PRELUDE + """
h = open_rec()
print(struct.unpack("<I", win32file.DeviceIoControl(h, R.IOCTL_COMPLETE_ALL, None, 4))[0])
""")
    assert r.stdout.strip() == "1"
    assert win32file.GetOverlappedResult(h, ov, True) == 0
    h.Close()


def test_synchronous_pending_request_blocks_until_completed(rec):
    p = rec.spawn(PRELUDE + """
h = open_rec()
print("sending", flush=True)
win32file.DeviceIoControl(h, R.IOCTL_PEND, None, 0)
print("completed", flush=True)
""")
    assert p.stdout.readline().strip() == "sending"
    h = open_rec()
    assert wait_until(lambda: struct.unpack("<I", win32file.DeviceIoControl(h, R.IOCTL_COMPLETE_ALL, None, 4))[0] == 1)
    assert p.stdout.readline().strip() == "completed"
    assert p.wait(timeout=30) == 0
    h.Close()


def test_pending_irp_cancelled_when_the_program_dies(rec):
    before = counts()
    p = rec.spawn(PRELUDE + """
h = open_rec()
print("pending", flush=True)
win32file.DeviceIoControl(h, R.IOCTL_PEND, None, 0)
""")
    assert p.stdout.readline().strip() == "pending"
    # the IOCTL has reached the driver once the handle's file object lock is held
    # (a synchronous handle: the request holds it while it is pending)
    assert wait_until(lambda: any(row.get("busy") for proc in rec.call("handles.list", pid=p.pid)
                                  for row in proc["handles"]))
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert wait_until(lambda: "recorder: cancelled an IRP of pid %d" % p.pid in rec.log())
    assert wait_until(lambda: counts()["close"] - before["close"] == 1)


def test_named_event_set_in_one_program_wakes_another(kernel):
    waiter = kernel.spawn("""
from ringzero.win32 import win32event
ev = win32event.CreateEvent(None, True, False, "RzTestEvent")
print("waiting", flush=True)
print(win32event.WaitForSingleObject(ev, 60_000), flush=True)
""")
    assert waiter.stdout.readline().strip() == "waiting"
    kernel.run("""
from ringzero.win32 import win32event, win32api
ev = win32event.OpenEvent(win32event.EVENT_MODIFY_STATE | win32event.SYNCHRONIZE, False, "RzTestEvent")
win32event.SetEvent(ev)
""")
    assert waiter.stdout.readline().strip() == str(win32event.WAIT_OBJECT_0)
    assert waiter.wait(timeout=30) == 0


def test_program_event_referenced_by_driver_wakes_program(rec):
    h = open_rec()
    ev = win32event.CreateEvent(None, False, False, None)
    assert win32event.WaitForSingleObject(ev, 0) == win32event.WAIT_TIMEOUT
    win32file.DeviceIoControl(h, R.IOCTL_SET_EVENT, struct.pack("<Q", int(ev)), 0)
    assert win32event.WaitForSingleObject(ev, 10_000) == win32event.WAIT_OBJECT_0
    # a synchronization event: the wait consumed it
    assert win32event.WaitForSingleObject(ev, 0) == win32event.WAIT_TIMEOUT
    # a handle that is not an event, and one that is not ours
    with pytest.raises(pywintypes.error) as e:
        win32file.DeviceIoControl(h, R.IOCTL_SET_EVENT, struct.pack("<Q", int(h)), 0)
    assert e.value.winerror == winerror.ERROR_INVALID_HANDLE  # STATUS_OBJECT_TYPE_MISMATCH -> 6
    with pytest.raises(pywintypes.error) as e:
        win32file.DeviceIoControl(h, R.IOCTL_SET_EVENT, struct.pack("<Q", 0x7FFC), 0)
    assert e.value.winerror == winerror.ERROR_INVALID_HANDLE
    h.Close()


def test_driver_set_event_wakes_a_thread_of_the_program_waiting_meanwhile(rec):
    import threading
    h = open_rec()
    ev = win32event.CreateEvent(None, True, False, None)
    got = []
    t = threading.Thread(target=lambda: got.append(win32event.WaitForSingleObject(ev, 30_000)))
    t.start()
    # the other thread is blocked in the kernel; this one keeps making requests
    for _ in range(5):
        win32file.DeviceIoControl(h, R.IOCTL_WHOAMI, None, 16)
    win32file.DeviceIoControl(h, R.IOCTL_SET_EVENT, struct.pack("<Q", int(ev)), 0)
    t.join(30)
    assert got == [win32event.WAIT_OBJECT_0]
    h.Close()


def test_threads_of_one_program_share_its_connection_and_every_answer_reaches_its_thread(rec):
    """Whichever thread holds the receive role delivers the others' answers and
    wakes them; a thread that only waits sleeps until it is told."""
    import threading
    h = open_rec()
    mine = win32file.DeviceIoControl(h, R.IOCTL_WHOAMI, None, 16)
    errors, done = [], []

    def worker(k):
        try:
            for i in range(150):
                n = (k * 7 + i) % 60
                if fill(h, n, 0, 64, byte=k + 1) != bytes([k + 1]) * n:
                    errors.append((k, i))
            done.append(k)
        except Exception as e:      # reported below, with the thread's number
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and sorted(done) == list(range(6))
    assert win32file.DeviceIoControl(h, R.IOCTL_WHOAMI, None, 16) == mine
    h.Close()


def test_driver_fault_fails_the_irp_and_the_kernel_goes_on(rec):
    h = open_rec()
    with pytest.raises(pywintypes.error) as e:
        win32file.DeviceIoControl(h, R.IOCTL_RAISE, None, 0)
    assert e.value.winerror != 0
    assert "ZeroDivisionError" in rec.log()
    assert win32file.DeviceIoControl(h, R.IOCTL_WHOAMI, None, 16)
    h.Close()


def test_a_file_handle_can_be_waited_on_again_and_again(rec):
    """A wait on a file handle waits on the file object's event, which lives
    as long as the file object: waiting again after a wait ended is fine."""
    h = open_rec()
    for _ in range(3):
        assert win32event.WaitForSingleObject(h, 0) in (win32event.WAIT_OBJECT_0, win32event.WAIT_TIMEOUT)
    assert win32event.WaitForMultipleObjects([h, h], False, 0) in (win32event.WAIT_OBJECT_0,
                                                                    win32event.WAIT_TIMEOUT)
    h.Close()
    faults = [r["text"] for r in rec.call("dbg.recent", count=4096) if r["level"] == "fault"]
    assert faults == []
