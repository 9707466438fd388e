"""Fast I/O (FAST_IO_DISPATCH): when the I/O manager calls a driver's FastIoRead
and FastIoWrite instead of building an IRP, and what it does with their answer,
as NtReadFile and NtWriteFile do."""

import json
import os
import struct
import sys

import pytest

from conftest import TEST_DRIVERS
from ringzero.win32 import pywintypes, win32con, win32event, win32file, winerror

sys.path.insert(0, TEST_DRIVERS)
import fastio as F  # noqa: E402


@pytest.fixture
def fio(kernel):
    kernel.load(os.path.join(TEST_DRIVERS, "fastio.py"), "FastIo")
    ctl = open_fio()
    kernel.set_mode = lambda mode, cache_map=1: win32file.DeviceIoControl(
        ctl, F.IOCTL_SET_MODE, struct.pack("<II", mode, cache_map), 0)
    kernel.calls = lambda: json.loads(bytes(win32file.DeviceIoControl(ctl, F.IOCTL_LOG, None, 1 << 16)))
    kernel.fast_io = lambda: kernel.call("driver.counters", service="FastIo")["counters"]["fast_io"]
    kernel.calls()
    yield kernel
    ctl.Close()


def open_fio(flags=0):
    return win32file.CreateFile(r"\\.\FastIo", win32con.GENERIC_READ | win32con.GENERIC_WRITE, 0, None,
                                win32con.OPEN_EXISTING, flags, None)


def overlapped_call(call, h, arg):
    ov = pywintypes.OVERLAPPED()
    ov.hEvent = win32event.CreateEvent(None, True, False, None)
    call(h, arg, ov)
    n = win32file.GetOverlappedResult(h, ov, True)
    return n, ov


def test_a_synchronous_handle_reads_and_writes_by_fast_io_in_the_callers_context(fio):
    h = open_fio()
    assert win32file.ReadFile(h, 10) == (0, b"F" * 10)
    assert win32file.WriteFile(h, b"abc") == (0, 3)
    # PASSIVE_LEVEL, the caller's process, a buffer of Length bytes; no IRP.  The read
    # is offered with Wait FALSE first, its Buffer the room of its reply in the response
    # ring; a small write is copied out of the request ring and offered with Wait TRUE
    assert fio.calls() == [["fast-read", 10, False, 0, os.getpid(), 10], ["fast-write", "abc", True, 0]]
    assert fio.fast_io() == 2
    h.Close()


def test_an_overlapped_handle_always_gets_an_irp(fio):
    h = open_fio(win32con.FILE_FLAG_OVERLAPPED)
    assert overlapped_call(win32file.ReadFile, h, 6)[0] == 6
    assert overlapped_call(win32file.WriteFile, h, b"xyz")[0] == 3
    assert fio.calls() == [["irp-read", 6], ["irp-write", "xyz"]]
    assert fio.fast_io() == 0
    h.Close()


def test_without_a_private_cache_map_there_is_no_fast_io(fio):
    fio.set_mode(F.FAST, cache_map=0)
    h = open_fio()
    assert win32file.ReadFile(h, 4) == (0, b"IIII")
    assert fio.calls() == [["irp-read", 4]]
    h.Close()


@pytest.mark.parametrize("mode", [F.DECLINE, F.UNTAKEN, F.NOT_BOOL])
def test_fast_io_declined_or_not_taken_becomes_an_irp(fio, mode):
    fio.set_mode(mode)
    h = open_fio()
    assert win32file.ReadFile(h, 4) == (0, b"IIII")
    assert win32file.WriteFile(h, b"ab") == (0, 2)
    # (the read offered twice, with Wait FALSE where its reply lies, then TRUE)
    assert [c[0] for c in fio.calls()] == ["fast-read", "fast-read", "irp-read", "fast-write", "irp-write"]
    assert ("DRIVER_RETURNED_NON_BOOLEAN" in fio.log()) is (mode == F.NOT_BOOL)
    h.Close()


def test_a_fast_read_answers_with_its_status_as_an_irp_would(fio):
    h = open_fio()
    fio.set_mode(F.EOF)
    with pytest.raises(pywintypes.error) as e:
        win32file.ReadFile(h, 8)
    assert e.value.winerror == winerror.ERROR_HANDLE_EOF
    fio.set_mode(F.OVERFLOW)          # a warning: the data still comes back
    assert win32file.ReadFile(h, 8) == (winerror.ERROR_MORE_DATA, b"FFFF")
    fio.set_mode(F.TOO_MUCH)          # Information past the buffer: only the buffer's worth
    assert win32file.ReadFile(h, 8) == (0, b"F" * 8)
    assert "INFORMATION_TOO_LARGE" in fio.log() or "larger than the output buffer" in fio.log()
    assert [c[0] for c in fio.calls()] == ["fast-read"] * 3
    h.Close()


def test_an_event_is_signalled_when_fast_io_did_the_request(fio):
    h = open_fio()
    n, ov = overlapped_call(win32file.ReadFile, h, 5)
    assert n == 5
    assert win32event.WaitForSingleObject(ov.hEvent, 0) == win32event.WAIT_OBJECT_0
    assert [c[0] for c in fio.calls()] == ["fast-read"]
    h.Close()


def test_a_fast_io_routine_that_raises_fails_its_request_and_the_kernel_goes_on(fio):
    fio.set_mode(F.RAISE)
    h = open_fio()
    for call, arg in ((win32file.ReadFile, 4), (win32file.WriteFile, b"ab")):
        with pytest.raises(pywintypes.error) as e:
            call(h, arg)
        assert e.value.winerror == 1117      # STATUS_DRIVER_INTERNAL_ERROR -> ERROR_IO_DEVICE
    assert "ZeroDivisionError" in fio.log()
    assert [c[0] for c in fio.calls()] == ["fast-read", "fast-write"]   # not retried as IRPs
    fio.set_mode(F.FAST)
    assert win32file.ReadFile(h, 3) == (0, b"FFF")
    h.Close()


def test_a_large_write_is_offered_to_fast_io_where_it_lies_without_waiting_first(fio):
    """A write large enough to be taken apart by the ring poller is offered to
    FastIoWrite as the program's own buffer, still in the request ring, with
    Wait FALSE (nothing may block while its room is held); declined there, it
    is copied out and goes on as any write: Wait TRUE, then an IRP."""
    h = open_fio()
    big = b"w" * 8192
    assert win32file.WriteFile(h, big) == (0, 8192)
    assert fio.calls() == [["fast-write", "8192 bytes, b'w'...", False, 0]]
    fio.set_mode(F.DECLINE)
    assert win32file.WriteFile(h, big) == (0, 8192)
    assert fio.calls() == [["fast-write", "8192 bytes, b'w'...", False, 0],
                           ["fast-write", "8192 bytes, b'w'...", True, 0], ["irp-write", "8192 bytes, b'w'..."]]
    fio.set_mode(F.RAISE)               # a routine that raised in place is not called again
    with pytest.raises(pywintypes.error):
        win32file.WriteFile(h, big)
    assert [c[2] for c in fio.calls()] == [False]
    h.Close()


def test_what_a_fast_read_finds_in_its_buffer_is_only_its_own_programs_earlier_data(fio):
    """A fast read's Buffer stands for the program's own buffer, not zeroed
    anew: the room of its reply in the program's response ring or, when there
    is no such room, the program's last fast read's buffer.  What a driver
    finds there is never another program's data."""
    h = open_fio()
    code = r"""
        from ringzero.win32 import win32con, win32file
        h = win32file.CreateFile(r"\\.\FastIo", win32con.GENERIC_READ | win32con.GENERIC_WRITE, 0, None,
                                 win32con.OPEN_EXISTING, 0, None)
        for _ in range(4):
            print(win32file.ReadFile(h, 16)[1].hex())
    """
    fio.set_mode(F.FAST)
    assert win32file.ReadFile(h, 16) == (0, b"F" * 16)        # this program's own buffers hold F's
    fio.set_mode(F.PEEK)             # from now on a read answers with whatever its buffer held
    env = fio.env
    try:
        for ring in ("1", "0"):      # with rings, and by the socket alone (no reply room to lend)
            fio.env = {**env, "RINGZERO_RING": ring}
            seen = fio.run(code).stdout.split()
            assert len(seen) == 4 and not any("46464646" in line for line in seen), seen
    finally:
        fio.env = env
    h.Close()
