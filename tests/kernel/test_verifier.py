"""The driver verifier and driver faults: each check tripped by the misbehave
test driver in a real kernel, seen as its named error in the kernel's log, and
the kernel (and the same driver) serving on afterwards."""

import os
import sys

import pytest

from conftest import TEST_DRIVERS, start_kernel, wait_until
from ringzero import client
from ringzero.kernel import verifier as V
from ringzero.win32 import pywintypes, win32con, win32file, winerror

sys.path.insert(0, TEST_DRIVERS)
import misbehave as M  # noqa: E402

MISBEHAVE = os.path.join(TEST_DRIVERS, "misbehave.py")


def open_dev():
    return win32file.CreateFile(r"\\.\Misbehave", win32con.GENERIC_READ | win32con.GENERIC_WRITE, 0, None,
                                win32con.OPEN_EXISTING, 0, None)


def records(level=None):
    recs = client.connection().call("dbg.recent", count=4096)
    return [r for r in recs if level is None or r["level"] == level]


def verifier_lines():
    return [r["text"] for r in records("verifier") if r["source"] == "Misbehave"]


def still_serves(h):
    assert win32file.DeviceIoControl(h, M.IOCTL_PING, None, 0) == b""
    h2 = open_dev()
    h2.Close()
    assert client.connection().call("kernel.info")["drivers"]


@pytest.fixture
def mis(kernel):
    kernel.load(MISBEHAVE, "Misbehave")
    return kernel


# (ioctl, the verifier's named error, the program's answer)
CHECKS = [
    (M.IOCTL_COMPLETE_TWICE, V.MULTIPLE_IRP_COMPLETE_REQUESTS),
    (M.IOCTL_PENDING_UNMARKED, V.IRP_NOT_MARKED_PENDING),
    (M.IOCTL_MARKED_NOT_PENDING, V.IRP_MARKED_PENDING_NOT_RETURNED),
    (M.IOCTL_NOT_COMPLETED, V.IRP_NOT_COMPLETED),
    (M.IOCTL_INFO_TOO_LARGE, V.INFORMATION_TOO_LARGE),
    (M.IOCTL_TOUCH_AFTER, V.IRP_TOUCHED_AFTER_COMPLETION),
]


@pytest.mark.parametrize("code,name", CHECKS, ids=[n.split(":")[-1].strip()[:40] for _, n in CHECKS])
def test_each_io_contract_violation_is_a_named_error(mis, code, name):
    h = open_dev()
    assert verifier_lines() == []
    # the program gets the driver's first completion (or the I/O manager's for a
    # driver that never completed), never a hang
    out = win32file.DeviceIoControl(h, code, None, 8)
    assert bytes(out) == (b"\0" * 8 if code == M.IOCTL_INFO_TOO_LARGE else b"")
    lines = wait_until(verifier_lines)
    assert len(lines) == 1 and lines[0].startswith(f"Misbehave: {name}"), lines
    still_serves(h)
    h.Close()


def test_a_bug_that_raises_is_also_a_fault_with_a_traceback(mis):
    h = open_dev()
    win32file.DeviceIoControl(h, M.IOCTL_TOUCH_AFTER, None, 0)
    faults = [r["text"] for r in records("fault") if r["source"] == "Misbehave"]
    assert len(faults) == 1 and "DriverBugcheck" in faults[0] and "misbehave.py" in faults[0], faults
    info = client.connection().call("driver.counters", service="Misbehave")
    assert info["faults"] == 1 and info["counters"]["verifier"] == 1 and not info["faulted"]
    h.Close()


def test_a_wait_at_dispatch_level_in_a_dpc_is_irql_not_less_or_equal(mis):
    h = open_dev()
    win32file.DeviceIoControl(h, M.IOCTL_WAIT_IN_DPC, None, 0)
    lines = wait_until(verifier_lines)
    assert len(lines) == 1 and lines[0].startswith(f"Misbehave: {V.IRQL_NOT_LESS_OR_EQUAL}"), lines
    assert "KeWaitForSingleObject" in lines[0]
    assert wait_until(lambda: any(r["source"] == "Misbehave" and "DPC WaitingDpc" in r["text"]
                                  for r in records("fault")))
    # the wait never happened: the DPC was stopped at the call
    assert not any("the DPC's wait returned" in r["text"] for r in records())
    still_serves(h)
    h.Close()


def test_a_wait_under_a_spin_lock_is_irql_not_less_or_equal(mis):
    h = open_dev()
    with pytest.raises(pywintypes.error) as e:
        win32file.DeviceIoControl(h, M.IOCTL_WAIT_UNDER_LOCK, None, 0)
    assert e.value.winerror == winerror.ERROR_IO_DEVICE   # the fault fails the IRP
    lines = verifier_lines()
    assert len(lines) == 1 and lines[0].startswith(f"Misbehave: {V.IRQL_NOT_LESS_OR_EQUAL}"), lines
    still_serves(h)
    # the lock was released and the thread is back at PASSIVE_LEVEL: it can happen again, once
    with pytest.raises(pywintypes.error):
        win32file.DeviceIoControl(h, M.IOCTL_WAIT_UNDER_LOCK, None, 0)
    assert len(verifier_lines()) == 2
    h.Close()


def test_pool_left_at_unload_is_a_named_leak(mis):
    h = open_dev()
    win32file.DeviceIoControl(h, M.IOCTL_LEAK_POOL, None, 0)
    h.Close()
    rep = client.connection().call("driver.unload", service="Misbehave")
    assert rep == {"leaks": ["pool: 48 bytes tagged 'Mis!'"], "deferred": False}
    assert any(r["level"] == "leak" and r["text"] == "Misbehave: leaked at unload: pool: 48 bytes tagged 'Mis!'"
               for r in records())
    assert client.connection().call("pool.stats") is not None


def test_an_mdl_left_at_unload_is_named_and_taken_back(mis):
    assert client.connection().call("kernel.info")["mdls"] == 0
    h = open_dev()
    win32file.DeviceIoControl(h, M.IOCTL_LEAK_MDL, None, 0)
    h.Close()
    assert client.connection().call("kernel.info")["mdls"] == 1
    rep = client.connection().call("driver.unload", service="Misbehave")
    assert any("MDL" in leak for leak in rep["leaks"]) and any("'MisM'" in leak for leak in rep["leaks"]), rep
    assert client.connection().call("kernel.info")["mdls"] == 0
    assert not [r for r in client.connection().call("pool.stats") if r["tag"] == "MisM" and r["bytes"]]


def _kernel_with(tmp_path, monkeypatch, *args):
    return start_kernel(tmp_path, monkeypatch, loads=[MISBEHAVE], extra_args=args)


def test_no_verifier_turns_the_checks_off_but_not_the_io_managers_repairs(tmp_path, monkeypatch):
    k = _kernel_with(tmp_path, monkeypatch, "--no-verifier")
    try:
        h = win32file.CreateFile(r"\\.\Misbehave", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
        for code in (M.IOCTL_INFO_TOO_LARGE, M.IOCTL_MARKED_NOT_PENDING, M.IOCTL_PENDING_UNMARKED):
            out = win32file.DeviceIoControl(h, code, None, 4)
            # Information past the buffer is still clipped to it
            assert bytes(out) == (b"\0" * 4 if code == M.IOCTL_INFO_TOO_LARGE else b"")
        assert [r for r in records("verifier")] == []
        # what would corrupt the kernel's own state stays a named error
        win32file.DeviceIoControl(h, M.IOCTL_COMPLETE_TWICE, None, 0)
        assert any(V.MULTIPLE_IRP_COMPLETE_REQUESTS in r["text"] for r in records("verifier"))
        h.Close()
    finally:
        k.stop()


def test_after_fault_limit_faults_the_driver_refuses_new_opens(tmp_path, monkeypatch):
    k = _kernel_with(tmp_path, monkeypatch, "--fault-limit", "2")
    try:
        h = win32file.CreateFile(r"\\.\Misbehave", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
        win32file.DeviceIoControl(h, M.IOCTL_TOUCH_AFTER, None, 0)
        h2 = win32file.CreateFile(r"\\.\Misbehave", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
        h2.Close()
        win32file.DeviceIoControl(h, M.IOCTL_COMPLETE_TWICE, None, 0)
        info = client.connection().call("driver.counters", service="misbehave")
        assert info["faults"] == 2 and info["faulted"]
        with pytest.raises(pywintypes.error) as e:
            win32file.CreateFile(r"\\.\Misbehave", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
        assert e.value.winerror == winerror.ERROR_IO_DEVICE  # STATUS_DRIVER_INTERNAL_ERROR
        assert any("marked faulted" in r["text"] for r in records("fault"))
        # a handle opened before still reaches the driver, as on NT
        assert win32file.DeviceIoControl(h, M.IOCTL_PING, None, 0) == b""
        h.Close()
        # other drivers carry on
        assert client.connection().call("kernel.info")["drivers"] == ["misbehave"]
    finally:
        k.stop()


def test_a_violation_the_io_manager_repairs_is_a_fault_too(tmp_path, monkeypatch):
    """A dispatch routine that neither completes nor pends its IRP is logged and
    repaired, not raised; it still counts toward --fault-limit."""
    k = _kernel_with(tmp_path, monkeypatch, "--fault-limit", "2")
    try:
        h = win32file.CreateFile(r"\\.\Misbehave", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
        for _ in range(2):
            assert win32file.DeviceIoControl(h, M.IOCTL_NOT_COMPLETED, None, 0) == b""
        info = client.connection().call("driver.counters", service="misbehave")
        assert info["faults"] == 2 and info["faulted"]
        with pytest.raises(pywintypes.error) as e:
            win32file.CreateFile(r"\\.\Misbehave", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
        assert e.value.winerror == winerror.ERROR_IO_DEVICE
        h.Close()
    finally:
        k.stop()


def test_without_a_fault_limit_a_driver_is_never_marked_faulted(mis):
    h = open_dev()
    for _ in range(5):
        win32file.DeviceIoControl(h, M.IOCTL_TOUCH_AFTER, None, 0)
    info = client.connection().call("driver.counters", service="Misbehave")
    assert info["faults"] == 5 and not info["faulted"]
    open_dev().Close()
    h.Close()


def test_cancel_routines_return_to_the_callers_irql(kernel):
    """IoCancelIrp leaves the thread at the IRQL it was called at, so the
    cancel routine of the next IRP it cancels runs its tail at PASSIVE_LEVEL."""
    from ringzero.win32 import win32event
    sys.path.insert(0, TEST_DRIVERS)
    import recorder as R
    kernel.load(os.path.join(TEST_DRIVERS, "recorder.py"), "Recorder")
    h = win32file.CreateFile(r"\\.\Recorder", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING,
                             win32con.FILE_FLAG_OVERLAPPED, None)
    ovs = []
    for _ in range(3):
        ov = pywintypes.OVERLAPPED()
        ov.hEvent = win32event.CreateEvent(None, True, False, None)
        win32file.DeviceIoControl(h, R.IOCTL_PEND, None, 0, ov)
        ovs.append(ov)
    win32file.CancelIo(h)
    for ov in ovs:
        assert win32event.WaitForSingleObject(ov.hEvent, 10_000) == win32event.WAIT_OBJECT_0
    lines = [r["text"] for r in records() if r["text"].startswith("recorder: cancelled an IRP")]
    assert len(lines) == 3 and all(t.endswith(" at IRQL 0") for t in lines), lines
    assert records("verifier") == []
    h.Close()


def test_systemexit_or_keyboardinterrupt_from_a_driver_is_a_fault_like_any_other(mis):
    """Not only Exception: a driver's sys.exit() in a dispatch routine fails
    that IRP, and a KeyboardInterrupt in a DPC is logged; the ring thread and
    the DPC thread go on serving every driver."""
    h = open_dev()
    with pytest.raises(pywintypes.error) as e:
        win32file.DeviceIoControl(h, M.IOCTL_SYS_EXIT, None, 0)
    assert e.value.winerror == winerror.ERROR_IO_DEVICE        # STATUS_DRIVER_INTERNAL_ERROR's Win32 code
    assert wait_until(lambda: any("SystemExit" in r["text"] for r in records("fault")))
    win32file.DeviceIoControl(h, M.IOCTL_EXIT_IN_DPC, None, 0)
    assert wait_until(lambda: any("KeyboardInterrupt" in r["text"] for r in records("fault")))
    still_serves(h)
    # the DPC thread still runs DPCs: the next one's own fault is seen
    win32file.DeviceIoControl(h, M.IOCTL_WAIT_IN_DPC, None, 0)
    assert wait_until(lambda: any("DPC WaitingDpc" in r["text"] for r in records("fault")))
    h.Close()


def test_a_cancel_routine_that_raises_still_ends_its_irp(mis):
    """The routine fails before completing the IRP: it completes cancelled
    (ERROR_OPERATION_ABORTED), its file object closes, and the driver unloads."""
    from ringzero.win32 import win32event
    h = win32file.CreateFile(r"\\.\Misbehave", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING,
                             win32con.FILE_FLAG_OVERLAPPED, None)
    ov = pywintypes.OVERLAPPED()
    ov.hEvent = win32event.CreateEvent(None, True, False, None)
    win32file.DeviceIoControl(h, M.IOCTL_PEND_BAD_CANCEL, None, 0, ov)
    assert pywintypes.get_last_error() == winerror.ERROR_IO_PENDING
    win32file.CancelIoEx(h, ov)
    with pytest.raises(pywintypes.error) as e:
        win32file.GetOverlappedResult(h, ov, True)
    assert e.value.winerror == winerror.ERROR_OPERATION_ABORTED
    assert any("the cancel routine fails" in r["text"] for r in records("fault"))
    h.Close()
    client.connection().call("driver.unload", service="Misbehave")
    assert "Misbehave" not in client.connection().call("kernel.info")["drivers"]


def test_a_dispatch_that_blocks_outside_a_ke_wait_holds_up_only_its_caller(mis):
    """time.sleep in a dispatch routine is no Ke wait, yet the ring thread that
    called it hands its role on all the same: other programs are served while
    the caller still waits for its answer."""
    sleeper = mis.spawn(f"""
from ringzero.win32 import win32file, win32con
h = win32file.CreateFile(r"\\\\.\\Misbehave", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
print("asking", flush=True)
win32file.DeviceIoControl(h, {M.IOCTL_SLEEP}, None, 0)
print("done", flush=True)
""")
    assert sleeper.stdout.readline().strip() == "asking"
    assert wait_until(lambda: any(r["text"] == "Misbehave: sleeping" for r in records()))
    h = open_dev()
    for _ in range(20):
        still_serves(h)
    assert sleeper.poll() is None                  # served, all of it, while the sleeper still waits
    assert sleeper.stdout.readline().strip() == "done"
    assert sleeper.wait(timeout=30) == 0
    h.Close()


def test_a_dispatch_routine_that_returns_holding_a_spin_lock_is_named(mis):
    h = open_dev()
    win32file.DeviceIoControl(h, M.IOCTL_KEEP_SPIN_LOCK, None, 0)       # its own answer stands
    lines = wait_until(verifier_lines)
    assert len(lines) == 1 and lines[0].startswith(f"Misbehave: {V.IRQL_GT_ZERO_AT_SYSTEM_SERVICE}"), lines
    assert "DispatchControl returned at IRQL 2" in lines[0]
    still_serves(h)                    # at PASSIVE_LEVEL again, the next request is served as ever
    h.Close()

