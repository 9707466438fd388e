"""Handle values a program may pass that are no handle of its own, and
DuplicateHandle: every call answers as Win32 does, with a pywintypes.error,
never an exception of the wire's."""

import struct

import pytest

from ringzero.drivers.echo import IOCTL_ECHO
from ringzero.nt import access as acc
from ringzero.win32 import pywintypes, win32api, win32con, win32event, win32file, winerror

NOT_HANDLES = [win32file.INVALID_HANDLE_VALUE, -2, 1 << 64, -(1 << 70), 0xDEAD0]


def invalid(call, *args):
    with pytest.raises(pywintypes.error) as e:
        call(*args)
    assert e.value.winerror == winerror.ERROR_INVALID_HANDLE, e.value
    return e.value


@pytest.mark.parametrize("h", NOT_HANDLES)
def test_a_value_that_is_no_handle_is_error_invalid_handle_everywhere(kernel, h):
    assert invalid(win32api.CloseHandle, h).funcname == "CloseHandle"
    assert invalid(win32file.DeviceIoControl, h, IOCTL_ECHO, b"x", 4).funcname == "DeviceIoControl"
    invalid(win32file.ReadFile, h, 16)
    invalid(win32file.WriteFile, h, b"data")
    invalid(win32file.CancelIo, h)
    invalid(win32event.SetEvent, h)
    invalid(win32event.ReleaseMutex, h)
    invalid(win32event.WaitForSingleObject, h, 0)
    invalid(win32api.DuplicateHandle, win32api.GetCurrentProcess(), h, win32api.GetCurrentProcess(), 0, False,
            win32api.DUPLICATE_SAME_ACCESS)
    invalid(pywintypes.HANDLE(h).Close)


def test_a_timeout_that_is_no_dword_is_refused_clearly(kernel):
    ev = win32event.CreateEvent(None, True, True, None)
    assert win32event.WaitForSingleObject(ev, win32event.INFINITE) == win32event.WAIT_OBJECT_0
    assert win32event.WaitForSingleObject(ev, 0xFFFFFFFF) == win32event.WAIT_OBJECT_0
    with pytest.raises(OverflowError, match="DWORD"):
        win32event.WaitForSingleObject(ev, 1 << 63)
    with pytest.raises(OverflowError, match="DWORD"):
        win32event.WaitForMultipleObjects([ev], False, -5)
    ev.Close()


def echo(h) -> bytes:
    return bytes(win32file.DeviceIoControl(h, IOCTL_ECHO, struct.pack("<Q", 7), 8))


def test_duplicate_handle_maps_generic_rights_and_closes_the_source_when_asked(kernel):
    me = win32api.GetCurrentProcess()
    h = win32file.CreateFile(r"\\.\Echo", win32con.GENERIC_READ | win32con.GENERIC_WRITE, 0, None,
                             win32con.OPEN_EXISTING, 0, None)
    # GENERIC_READ is FILE_GENERIC_READ for a file object: within what h was granted
    d = win32api.DuplicateHandle(me, h, me, win32con.GENERIC_READ, False, 0)
    assert echo(d) == struct.pack("<Q", 7)
    d.Close()
    # a right h was not granted is refused, generic or not
    r = win32file.CreateFile(r"\\.\Echo", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
    with pytest.raises(pywintypes.error) as e:
        win32api.DuplicateHandle(me, r, me, win32con.GENERIC_WRITE, False, 0)
    assert e.value.winerror == winerror.ERROR_ACCESS_DENIED
    with pytest.raises(pywintypes.error) as e:
        win32api.DuplicateHandle(me, r, me, acc.FILE_WRITE_DATA, False, 0)
    assert e.value.winerror == winerror.ERROR_ACCESS_DENIED
    r.Close()
    # DUPLICATE_CLOSE_SOURCE: the copy works, the source is closed
    d = win32api.DuplicateHandle(me, int(h), me, 0, False,
                                 win32api.DUPLICATE_SAME_ACCESS | win32api.DUPLICATE_CLOSE_SOURCE)
    assert echo(d) == struct.pack("<Q", 7)
    invalid(win32file.DeviceIoControl, int(h), IOCTL_ECHO, b"x", 4)
    h.Detach()
    d.Close()


def test_duplicate_handle_takes_no_process_but_this_one(kernel):
    ev = win32event.CreateEvent(None, True, False, None)
    for source, target in ((0xDEAD, 0xBEEF), (win32api.GetCurrentProcess(), 4), (0, win32api.GetCurrentProcess())):
        invalid(win32api.DuplicateHandle, source, ev, target, 0, False, win32api.DUPLICATE_SAME_ACCESS)
    d = win32api.DuplicateHandle(win32api.GetCurrentProcess(), ev, win32api.GetCurrentProcess(), 0, False,
                                 win32api.DUPLICATE_SAME_ACCESS)
    win32event.SetEvent(d)
    assert win32event.WaitForSingleObject(ev, 0) == win32event.WAIT_OBJECT_0
    d.Close()
    ev.Close()


def test_a_name_that_is_no_text_is_error_invalid_name(kernel):
    lone = "bad\ud800name"
    for call, args in ((win32file.CreateFile, ("\\\\.\\" + lone, win32con.GENERIC_READ, 0, None,
                                                win32con.OPEN_EXISTING, 0, None)),
                       (win32event.CreateEvent, (None, True, False, lone)),
                       (win32event.OpenEvent, (win32event.EVENT_ALL_ACCESS, False, lone)),
                       (win32event.CreateMutex, (None, False, lone)),
                       (win32event.OpenMutex, (win32event.SYNCHRONIZE, False, lone))):
        with pytest.raises(pywintypes.error) as e:
            call(*args)
        assert (e.value.winerror, e.value.funcname) == (winerror.ERROR_INVALID_NAME, call.__name__)


def test_duplicate_handle_with_no_access_asked_grants_none(kernel):
    """desiredAccess 0 without DUPLICATE_SAME_ACCESS is a handle with no
    access, as on NT: it names the object, and every use needing a right fails."""
    me = win32api.GetCurrentProcess()
    ev = win32event.CreateEvent(None, True, False, None)
    d = win32api.DuplicateHandle(me, ev, me, 0, False, 0)
    with pytest.raises(pywintypes.error) as e:
        win32event.SetEvent(d)
    assert e.value.winerror == winerror.ERROR_ACCESS_DENIED
    d.Close()
    ev.Close()
