"""The service control manager across real processes: the seed's sequence,
every error Windows gives, persistence across a kernel restart, boot-time
starts, admin-only changes, deferred stops and leak reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import start_kernel, wait_until

from ringzero import client
from ringzero.kernel.svc.store import Store
from ringzero.nt import registry as reg
from ringzero.nt import status as st
from ringzero.win32 import pywintypes, win32file
from ringzero.win32 import win32service as ws
from ringzero.win32 import winerror as we
from ringzero.win32.win32con import (DELETE, GENERIC_READ, OPEN_EXISTING, SC_MANAGER_ALL_ACCESS, SC_MANAGER_CONNECT,
                                     SERVICE_ALL_ACCESS, SERVICE_AUTO_START, SERVICE_BOOT_START,
                                     SERVICE_CONTROL_INTERROGATE, SERVICE_CONTROL_PAUSE, SERVICE_CONTROL_STOP,
                                     SERVICE_DEMAND_START, SERVICE_DISABLED, SERVICE_DRIVER, SERVICE_ERROR_IGNORE,
                                     SERVICE_ERROR_NORMAL, SERVICE_KERNEL_DRIVER, SERVICE_QUERY_STATUS,
                                     SERVICE_RUNNING, SERVICE_START, SERVICE_STOP, SERVICE_STOP_PENDING,
                                     SERVICE_STOPPED, SERVICE_SYSTEM_START, SERVICE_WIN32_OWN_PROCESS)

DRIVERS = Path(__file__).parent / "drivers"
PROBE = str(DRIVERS / "probe.py")
SERVICES = "\\Registry\\Machine\\System\\CurrentControlSet\\Services"


def create(scm, name, image, start=SERVICE_DEMAND_START, display=None, error=SERVICE_ERROR_NORMAL):
    return ws.CreateService(scm, name, display, SERVICE_ALL_ACCESS, SERVICE_KERNEL_DRIVER, start, error,
                            str(image), None, 0, None, None, None)


def winerror(fn, *args) -> int:
    with pytest.raises(pywintypes.error) as e:
        fn(*args)
    assert e.value.funcname == {"create": "CreateService"}.get(fn.__name__, fn.__name__)
    return e.value.winerror


def log_texts() -> list[str]:
    return [r["text"] for r in client.connection().call("dbg.recent", count=4096)]


def set_parameter(kernel, service, name, value_type, value):
    """What regedit would do: write a value under the service's Parameters key."""
    s = Store.open(kernel.state)
    try:
        s.put(f"{SERVICES}\\{service}\\Parameters", name, value_type, value)
    finally:
        s.close()


def devices() -> list[str]:
    return [c["name"] for c in client.connection().call("obj.list", path="\\Device")["children"]]


def test_the_seeds_sequence_runs_driver_entry_and_unload_at_the_right_moments(bare_kernel):
    scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    svc = ws.CreateService(scm, "SvcProbe", "Service probe", SERVICE_START + SERVICE_STOP + DELETE,
                           SERVICE_KERNEL_DRIVER, SERVICE_DEMAND_START, SERVICE_ERROR_IGNORE, PROBE,
                           None, 0, None, None, None)
    assert not any("SvcProbe: DriverEntry" in t for t in log_texts())
    ws.StartService(svc, None)
    assert f"SvcProbe: DriverEntry {SERVICES}\\SvcProbe" in log_texts()
    assert "SvcProbe: Greeting=hello" in log_texts()          # RtlQueryRegistryValues' default
    h = win32file.CreateFile(r"\\.\SvcProbe", GENERIC_READ, 0, None, OPEN_EXISTING, 0, None)
    win32file.CloseHandle(h)
    assert "SvcProbe: DriverUnload" not in log_texts()
    status = ws.ControlService(svc, SERVICE_CONTROL_STOP)
    assert status[:4] == (SERVICE_KERNEL_DRIVER, SERVICE_STOPPED, 0, 0)
    assert "SvcProbe: DriverUnload" in log_texts()
    assert "SvcProbe" not in devices()
    ws.DeleteService(svc)
    ws.CloseServiceHandle(svc)
    assert ws.EnumServicesStatus(scm, SERVICE_DRIVER) == ()
    ws.CloseServiceHandle(scm)


def test_service_status_and_configuration(bare_kernel):
    scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    svc = create(scm, "SvcProbe", PROBE, display="Service probe")
    assert ws.QueryServiceStatus(svc) == (SERVICE_KERNEL_DRIVER, SERVICE_STOPPED, 0, we.ERROR_SERVICE_NEVER_STARTED,
                                          0, 0, 0)
    assert ws.QueryServiceConfig(svc) == (SERVICE_KERNEL_DRIVER, SERVICE_DEMAND_START, SERVICE_ERROR_NORMAL, PROBE,
                                          "", 0, (), "", "Service probe")
    ws.StartService(svc, None)
    ex = ws.QueryServiceStatusEx(svc)
    assert ex == {"ServiceType": SERVICE_KERNEL_DRIVER, "CurrentState": SERVICE_RUNNING, "ControlsAccepted": 1,
                  "Win32ExitCode": 0, "ServiceSpecificExitCode": 0, "CheckPoint": 0, "WaitHint": 0,
                  "ProcessId": 0, "ServiceFlags": 0}
    assert ws.ControlService(svc, SERVICE_CONTROL_INTERROGATE)[1] == SERVICE_RUNNING
    ws.ChangeServiceConfig(svc, ws.SERVICE_NO_CHANGE, SERVICE_DISABLED, ws.SERVICE_NO_CHANGE, None, None, 0,
                           None, None, None, "Renamed probe")
    c = ws.QueryServiceConfig(svc)
    assert (c[1], c[3], c[8]) == (SERVICE_DISABLED, PROBE, "Renamed probe")
    assert ws.EnumServicesStatus(scm, SERVICE_DRIVER) == (("SvcProbe", "Renamed probe", ws.QueryServiceStatus(svc)),)
    assert ws.EnumServicesStatus(scm, SERVICE_DRIVER, ws.SERVICE_INACTIVE) == ()
    assert ws.EnumServicesStatus(scm) == ()        # pywin32's default type is SERVICE_WIN32: no drivers
    ws.ControlService(svc, SERVICE_CONTROL_STOP)
    assert winerror(ws.StartService, svc, None) == we.ERROR_SERVICE_DISABLED


def test_windows_errors(bare_kernel, tmp_path):
    scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    assert winerror(ws.OpenService, scm, "NoSuchService", SERVICE_ALL_ACCESS) == we.ERROR_SERVICE_DOES_NOT_EXIST
    svc = create(scm, "SvcProbe", PROBE)
    assert winerror(create, scm, "svcprobe", PROBE) == we.ERROR_SERVICE_EXISTS
    assert winerror(create, scm, "Other", PROBE, SERVICE_DEMAND_START, "SvcProbe") == we.ERROR_DUPLICATE_SERVICE_NAME
    assert winerror(create, scm, "Bad\\Name", PROBE) == we.ERROR_INVALID_NAME
    assert winerror(ws.CreateService, scm, "Win32", None, SERVICE_ALL_ACCESS, SERVICE_WIN32_OWN_PROCESS,
                    SERVICE_DEMAND_START, SERVICE_ERROR_NORMAL, "/bin/true", None, 0, None, None, None) \
        == we.ERROR_INVALID_PARAMETER
    assert winerror(ws.ControlService, svc, SERVICE_CONTROL_STOP) == we.ERROR_SERVICE_NOT_ACTIVE
    ws.StartService(svc, None)
    assert winerror(ws.StartService, svc, None) == we.ERROR_SERVICE_ALREADY_RUNNING
    assert winerror(ws.ControlService, svc, SERVICE_CONTROL_PAUSE) == we.ERROR_INVALID_SERVICE_CONTROL
    assert winerror(ws.ControlService, svc, 77) == we.ERROR_INVALID_PARAMETER
    ws.ControlService(svc, SERVICE_CONTROL_STOP)
    limited = ws.OpenService(scm, "SvcProbe", SERVICE_QUERY_STATUS)
    assert winerror(ws.StartService, limited, None) == we.ERROR_ACCESS_DENIED
    ws.CloseServiceHandle(limited)
    assert winerror(ws.QueryServiceStatus, limited) == we.ERROR_INVALID_HANDLE
    assert winerror(ws.OpenService, svc, "SvcProbe", SERVICE_ALL_ACCESS) == we.ERROR_INVALID_HANDLE


def test_a_driver_without_driver_unload_cannot_be_stopped(bare_kernel):
    scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    svc = create(scm, "NoUnload", DRIVERS / "nounload.py")
    ws.StartService(svc, None)
    assert ws.QueryServiceStatus(svc)[2] == 0                # not SERVICE_ACCEPT_STOP
    assert winerror(ws.ControlService, svc, SERVICE_CONTROL_STOP) == we.ERROR_INVALID_SERVICE_CONTROL
    assert ws.QueryServiceStatus(svc)[1] == SERVICE_RUNNING
    ws.DeleteService(svc)                                     # marked; it stays while it runs
    ws.CloseServiceHandle(svc)
    assert winerror(ws.OpenService, scm, "NoUnload", SERVICE_ALL_ACCESS) == we.ERROR_SERVICE_MARKED_FOR_DELETE
    assert [n for n, _, _ in ws.EnumServicesStatus(scm, SERVICE_DRIVER)] == ["NoUnload"]


def test_marked_for_delete_until_the_last_handle_closes(bare_kernel):
    scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    svc = create(scm, "SvcProbe", PROBE)
    other = ws.OpenService(scm, "SvcProbe", SERVICE_QUERY_STATUS)
    ws.DeleteService(svc)
    assert winerror(ws.DeleteService, svc) == we.ERROR_SERVICE_MARKED_FOR_DELETE
    assert winerror(ws.OpenService, scm, "SvcProbe", SERVICE_ALL_ACCESS) == we.ERROR_SERVICE_MARKED_FOR_DELETE
    assert winerror(create, scm, "SvcProbe", PROBE) == we.ERROR_SERVICE_MARKED_FOR_DELETE
    assert winerror(ws.StartService, svc, None) == we.ERROR_SERVICE_MARKED_FOR_DELETE
    ws.CloseServiceHandle(svc)
    assert ws.QueryServiceStatus(other)[1] == SERVICE_STOPPED   # still there: `other` is open
    ws.CloseServiceHandle(other)
    assert winerror(ws.OpenService, scm, "SvcProbe", SERVICE_ALL_ACCESS) == we.ERROR_SERVICE_DOES_NOT_EXIST
    ws.CloseServiceHandle(create(scm, "SvcProbe", PROBE))       # the name is free again


def test_a_running_service_marked_for_delete_goes_when_it_stops(bare_kernel):
    scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    svc = create(scm, "SvcProbe", PROBE)
    ws.StartService(svc, None)
    ws.DeleteService(svc)
    ws.CloseServiceHandle(svc)
    assert [n for n, _, _ in ws.EnumServicesStatus(scm, SERVICE_DRIVER)] == ["SvcProbe"]
    bare_kernel.run("""
        from ringzero import client
        client.connection().call("driver.unload", service="SvcProbe")
    """)
    assert ws.EnumServicesStatus(scm, SERVICE_DRIVER) == ()


def test_handles_a_program_leaves_open_are_closed_when_it_exits(bare_kernel):
    scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    ws.CloseServiceHandle(create(scm, "SvcProbe", PROBE))
    holder = bare_kernel.spawn("""
        import sys
        from ringzero.win32 import win32service as ws
        scm = ws.OpenSCManager(None, None, ws.SC_MANAGER_CONNECT)
        h = ws.OpenService(scm, "SvcProbe", ws.SERVICE_QUERY_STATUS)
        print("open", flush=True)
        sys.stdin.readline()
    """, stdin=-1)
    assert holder.stdout.readline().strip() == "open"
    svc = ws.OpenService(scm, "SvcProbe", DELETE)
    ws.DeleteService(svc)
    ws.CloseServiceHandle(svc)
    assert [n for n, _, _ in ws.EnumServicesStatus(scm, SERVICE_DRIVER)] == ["SvcProbe"]
    holder.kill()
    holder.wait()
    assert wait_until(lambda: ws.EnumServicesStatus(scm, SERVICE_DRIVER) == ())


@pytest.mark.parametrize("setup, error", [
    ("EntryStatus", we.ERROR_NO_SYSTEM_RESOURCES),     # STATUS_INSUFFICIENT_RESOURCES from DriverEntry
    ("Raise", we.ERROR_IO_DEVICE),                     # an exception: STATUS_DRIVER_INTERNAL_ERROR
])
def test_a_failing_driver_entry_is_the_services_exit_code_and_leaves_nothing(bare_kernel, setup, error):
    scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    svc = create(scm, "SvcProbe", PROBE)
    value = st.STATUS_INSUFFICIENT_RESOURCES if setup == "EntryStatus" else 1
    set_parameter(bare_kernel, "SvcProbe", setup, reg.REG_DWORD, value)
    with pytest.raises(pywintypes.error) as e:
        ws.StartService(svc, None)
    assert e.value.winerror == error
    assert ws.QueryServiceStatus(svc)[1:4] == (SERVICE_STOPPED, 0, error)
    assert "SvcProbe" not in devices()
    links = [c["name"] for c in client.connection().call("obj.list", path="\\??")["children"]]
    assert "SvcProbe" not in links
    assert "SvcProbe" not in [c["name"] for c in client.connection().call("obj.list", path="\\Driver")["children"]]
    assert "SvcProbe" not in client.connection().call("kernel.info")["drivers"]


def test_images_that_cannot_load(bare_kernel, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('this driver imports something that is not there')\n")
    no_entry = tmp_path / "noentry.py"
    no_entry.write_text("from ringzero.ddk import *\n")
    scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    details = {}
    for name, image, error in (("Broken", broken, we.ERROR_BAD_DRIVER),       # STATUS_DRIVER_UNABLE_TO_LOAD
                               ("NoEntry", no_entry, we.ERROR_PROC_NOT_FOUND),  # STATUS_DRIVER_ENTRYPOINT_NOT_FOUND
                               ("Missing", tmp_path / "missing.py", we.ERROR_FILE_NOT_FOUND),
                               ("Folder", tmp_path, we.ERROR_FILE_NOT_FOUND)):
        svc = create(scm, name, image)
        with pytest.raises(pywintypes.error) as e:
            ws.StartService(svc, None)
        assert e.value.winerror == error, name
        details[name] = e.value.detail
        assert ws.QueryServiceStatus(svc)[1:4] == (SERVICE_STOPPED, 0, error)
    assert "this driver imports something that is not there" in details["Broken"]
    assert "has no DriverEntry" in details["NoEntry"]
    assert "does not exist" in details["Missing"]
    assert "is a directory, not a driver's .py file" in details["Folder"]
    texts = log_texts()
    assert any("failed to start" in t and "Broken" in t for t in texts)


def test_only_administrators_change_services_and_anyone_may_query(bare_kernel):
    scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    ws.StartService(create(scm, "SvcProbe", PROBE), None)
    r = bare_kernel.run("""
        import json
        from ringzero.win32 import pywintypes, win32service as ws
        out = {}
        def attempt(label, fn, *args):
            try:
                out[label] = fn(*args)
                if hasattr(out[label], "handle"):
                    out[label] = "ok"
            except pywintypes.error as e:
                out[label] = e.winerror
        attempt("all_access", ws.OpenSCManager, None, None, ws.SC_MANAGER_ALL_ACCESS)
        scm = ws.OpenSCManager(None, None, ws.SC_MANAGER_CONNECT | ws.SC_MANAGER_ENUMERATE_SERVICE)
        attempt("create", ws.CreateService, scm, "Mine", None, ws.SERVICE_ALL_ACCESS, ws.SERVICE_KERNEL_DRIVER,
                ws.SERVICE_DEMAND_START, ws.SERVICE_ERROR_NORMAL, "/tmp/x.py", None, 0, None, None, None)
        attempt("open_stop", ws.OpenService, scm, "SvcProbe", ws.SERVICE_STOP)
        attempt("open_delete", ws.OpenService, scm, "SvcProbe", 0x10000)
        h = ws.OpenService(scm, "SvcProbe", ws.SERVICE_QUERY_STATUS | ws.SERVICE_QUERY_CONFIG)
        out["state"] = ws.QueryServiceStatus(h)[1]
        out["image"] = ws.QueryServiceConfig(h)[3]
        out["enum"] = [n for n, _, _ in ws.EnumServicesStatus(scm, ws.SERVICE_DRIVER)]
        attempt("stop_with_query_handle", ws.ControlService, h, ws.SERVICE_CONTROL_STOP)
        print(json.dumps(out))
    """, user="nobody")
    out = json.loads(r.stdout)
    assert out == {"all_access": 5, "create": 5, "open_stop": 5, "open_delete": 5, "state": SERVICE_RUNNING,
                   "image": PROBE, "enum": ["SvcProbe"], "stop_with_query_handle": 5}


def test_stopping_a_driver_with_open_handles_waits_for_them(bare_kernel):
    scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    svc = create(scm, "SvcProbe", PROBE)
    ws.StartService(svc, None)
    holder = bare_kernel.spawn("""
        import sys
        from ringzero.win32 import win32file
        h = win32file.CreateFile(r"\\\\.\\SvcProbe", win32file.GENERIC_READ, 0, None, win32file.OPEN_EXISTING, 0, None)
        print("open", flush=True)
        sys.stdin.readline()
        win32file.CloseHandle(h)
        print("closed", flush=True)
        sys.stdin.readline()
    """, stdin=-1)
    assert holder.stdout.readline().strip() == "open"
    assert ws.ControlService(svc, SERVICE_CONTROL_STOP)[1] == SERVICE_STOP_PENDING
    assert "SvcProbe: DriverUnload" not in log_texts()
    s = client.connection().call("svc.query", handle=int(svc))
    assert s["WaitingFor"] and f"pid {holder.pid}" in s["WaitingFor"][0] and "\\Device\\SvcProbe" in s["WaitingFor"][0]
    assert winerror(ws.StartService, svc, None) == we.ERROR_SERVICE_ALREADY_RUNNING
    assert winerror(ws.ControlService, svc, SERVICE_CONTROL_STOP) == we.ERROR_SERVICE_CANNOT_ACCEPT_CTRL
    assert winerror(win32file.CreateFile, r"\\.\SvcProbe", GENERIC_READ, 0, None, OPEN_EXISTING, 0, None) \
        == we.ERROR_ACCESS_DENIED                           # STATUS_DELETE_PENDING
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "closed"
    assert wait_until(lambda: ws.QueryServiceStatus(svc)[1] == SERVICE_STOPPED)
    assert "SvcProbe: DriverUnload" in log_texts()
    ws.StartService(svc, None)                              # and it starts again
    holder.kill()
    holder.wait()


def test_a_leaky_driver_gets_four_named_leak_reports(bare_kernel):
    scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    svc = create(scm, "Leaky", DRIVERS / "leaky.py")
    ws.StartService(svc, None)
    ws.ControlService(svc, SERVICE_CONTROL_STOP)
    leaks = client.connection().call("svc.query", handle=int(svc))["Leaks"]
    assert sorted(x.split(":")[0] for x in leaks) == ["device", "pool", "symbolic link", "timer"]
    assert "device: \\Device\\Leaky" in leaks and "symbolic link: \\??\\Leaky" in leaks
    assert "pool: 64 bytes tagged 'Leak'" in leaks
    assert any(x.startswith("timer: KTIMER still set with a DPC") for x in leaks)
    logged = [t for t in log_texts() if t.startswith("Leaky: leaked at unload: ")]
    assert sorted(t.split(": ", 2)[2] for t in logged) == sorted(leaks)
    assert "Leaky" not in devices()                          # the kernel took them back
    ws.StartService(svc, None)                              # and a new start begins clean
    assert client.connection().call("svc.query", handle=int(svc))["Leaks"] == []


def test_a_registry_key_left_open_is_a_named_leak(bare_kernel):
    scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    svc = create(scm, "KeyLeak", DRIVERS / "keyleak.py")
    ws.StartService(svc, None)
    ws.ControlService(svc, SERVICE_CONTROL_STOP)
    leaks = client.connection().call("svc.query", handle=int(svc))["Leaks"]
    assert leaks == [f"handle: registry key {SERVICES}\\KeyLeak not closed"]


def test_services_survive_a_restart_and_start_at_boot_in_order(tmp_path, monkeypatch):
    k = start_kernel(tmp_path, monkeypatch)
    order = tmp_path / "order.py"
    order.write_text("from ringzero.ddk import *\n\n"
                     "def DriverUnload(DriverObject):\n    pass\n\n"
                     "def DriverEntry(DriverObject, RegistryPath):\n"
                     "    DbgPrint('Order: %s', RegistryPath.rsplit(chr(92), 1)[1])\n"
                     "    DriverObject.DriverUnload = DriverUnload\n"
                     "    return STATUS_SUCCESS\n")
    try:
        scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
        for name, start in (("Alpha", SERVICE_AUTO_START), ("Mid", SERVICE_SYSTEM_START), ("Zeta", SERVICE_BOOT_START),
                            ("Demand", SERVICE_DEMAND_START)):
            ws.CloseServiceHandle(create(scm, name, order, start, f"{name} driver"))
        doomed = create(scm, "Doomed", order)
        ws.DeleteService(doomed)                 # marked, with a handle open when the kernel goes
        assert [n for n, _, _ in ws.EnumServicesStatus(scm, SERVICE_DRIVER, ws.SERVICE_ACTIVE)] == []
    finally:
        k.stop()
    k = start_kernel(tmp_path, monkeypatch)
    try:
        scm = ws.OpenSCManager(None, None, SC_MANAGER_CONNECT | ws.SC_MANAGER_ENUMERATE_SERVICE)
        rows = {n: (d, s[1]) for n, d, s in ws.EnumServicesStatus(scm, SERVICE_DRIVER)}
        assert rows == {"Alpha": ("Alpha driver", SERVICE_RUNNING), "Mid": ("Mid driver", SERVICE_RUNNING),
                        "Zeta": ("Zeta driver", SERVICE_RUNNING), "Demand": ("Demand driver", SERVICE_STOPPED)}
        started = [t.split(": ")[1] for t in log_texts() if t.startswith("Order: ")]
        assert started == ["Zeta", "Mid", "Alpha"]
        assert ws.QueryServiceConfig(ws.OpenService(scm, "Alpha", ws.SERVICE_QUERY_CONFIG))[:4] == \
            (SERVICE_KERNEL_DRIVER, SERVICE_AUTO_START, SERVICE_ERROR_NORMAL, str(order))
    finally:
        k.stop()


def test_service_names_compare_as_nts_upcase_does(kernel):
    """One character for one (RtlUpcaseUnicodeChar): "Straße" and "STRASSE" are
    two services, "Straße" and "STRAßE" one."""
    scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    a = create(scm, "Straße", PROBE)
    b = create(scm, "STRASSE", PROBE)                           # another name
    assert winerror(create, scm, "STRAßE", PROBE) == we.ERROR_SERVICE_EXISTS
    assert ws.QueryServiceConfig(ws.OpenService(scm, "strasse", SERVICE_ALL_ACCESS))[8] == "STRASSE"   # its display name
    for h in (a, b):
        ws.DeleteService(h)
        ws.CloseServiceHandle(h)
    ws.CloseServiceHandle(scm)


def test_a_string_argument_that_is_no_string_is_error_invalid_parameter(kernel):
    scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    with pytest.raises(client.CallFailed) as e:
        client.connection().call("svc.create", manager=int(scm), name="BadDisplay", display=5, path=PROBE)
    assert e.value.winerror == we.ERROR_INVALID_PARAMETER and "display must be a string" in str(e.value)
    assert not any(r["level"] == "fault" for r in client.connection().call("dbg.recent", count=4096))
    ws.CloseServiceHandle(scm)
