"""A thread's exit cancels the IRPs it has outstanding (NT's IoCancelThreadIo):
an overlapped read issued by a thread that then ends completes with
ERROR_OPERATION_ABORTED, while the reads of threads still running stay pending.
Shown with the Example driver, whose blocking reads pend until data comes."""

import threading

import pytest

import examplepipe
from conftest import wait_until
from examplepipe import query, set_blocking
from ringzero.win32 import pywintypes, win32event, win32file, winerror

pipe = examplepipe.opener("\\\\.\\Example\\ThreadExit")


@pytest.fixture
def ex(kernel):
    return examplepipe.load(kernel)


def read_on_a_thread(h, stay: threading.Event | None = None) -> pywintypes.OVERLAPPED:
    """An overlapped read issued by a thread of its own, which then ends (or,
    with `stay`, runs until it is set); the read's OVERLAPPED."""
    ov = pywintypes.OVERLAPPED()
    ov.hEvent = win32event.CreateEvent(None, True, False, None)
    issued = threading.Event()

    def issue():
        hr, _ = win32file.ReadFile(h, 100, ov)
        assert hr == winerror.ERROR_IO_PENDING
        issued.set()
        if stay is not None:
            stay.wait()

    t = threading.Thread(target=issue, daemon=True)
    t.start()
    assert issued.wait(20)
    if stay is None:
        t.join(20)
    return ov


def test_the_reads_of_a_thread_that_exits_are_cancelled_and_the_others_stay(ex):
    h, feeder = pipe(win32file.FILE_FLAG_OVERLAPPED), pipe()
    set_blocking(h)
    stay = threading.Event()
    kept = read_on_a_thread(h, stay)
    gone = read_on_a_thread(h)                       # its thread has ended
    assert win32event.WaitForSingleObject(gone.hEvent, 20000) == win32event.WAIT_OBJECT_0
    with pytest.raises(pywintypes.error) as e:
        win32file.GetOverlappedResult(h, gone, True)
    assert e.value.winerror == winerror.ERROR_OPERATION_ABORTED
    assert query(feeder).PendingReads == 1           # the running thread's read is still there
    assert win32event.WaitForSingleObject(kept.hEvent, 0) == win32event.WAIT_TIMEOUT
    win32file.WriteFile(feeder, b"for the one still reading")
    assert win32file.GetOverlappedResult(h, kept, True) == len(b"for the one still reading")
    stay.set()
    # and once that thread too has ended, nothing is left to cancel
    assert wait_until(lambda: query(feeder).PendingReads == 0)
    h.Close()
