"""`ringzero sc`: sc.exe's words, output layout and exit codes, against a real kernel."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

DRIVERS = Path(__file__).parents[1] / "kernel" / "svc" / "drivers"
PROBE = str(DRIVERS / "probe.py")


def sc(k, *words, cwd=None):
    r = subprocess.run([sys.executable, "-m", "ringzero.cli.main", "sc", *words], env=k.env, capture_output=True,
                       text=True, timeout=60, cwd=cwd)
    return r.returncode, r.stdout.splitlines()


STOPPED_NEVER_STARTED = [
    "",
    "SERVICE_NAME: SvcProbe",
    "        TYPE               : 1  KERNEL_DRIVER",
    "        STATE              : 1  STOPPED",
    "        WIN32_EXIT_CODE    : 1077  (0x435)",
    "        SERVICE_EXIT_CODE  : 0  (0x0)",
    "        CHECKPOINT         : 0x0",
    "        WAIT_HINT          : 0x0",
]


def test_create_start_query_qc_stop_delete(bare_kernel):
    k = bare_kernel
    assert sc(k, "create", "SvcProbe", "binPath=", PROBE, "type=", "kernel", "start=", "demand", "error=", "ignore",
              "DisplayName=", "Service probe") == (0, ["[SC] CreateService SUCCESS"])
    assert sc(k, "query", "SvcProbe") == (0, STOPPED_NEVER_STARTED)
    assert "SvcProbe: DriverEntry" not in k.log()
    assert sc(k, "start", "SvcProbe") == (0, [
        "",
        "SERVICE_NAME: SvcProbe",
        "        TYPE               : 1  KERNEL_DRIVER",
        "        STATE              : 4  RUNNING",
        "                                (STOPPABLE, NOT_PAUSABLE, IGNORES_SHUTDOWN)",
        "        WIN32_EXIT_CODE    : 0  (0x0)",
        "        SERVICE_EXIT_CODE  : 0  (0x0)",
        "        CHECKPOINT         : 0x0",
        "        WAIT_HINT          : 0x0",
        "        PID                : 0",
        "        FLAGS              :",
    ])
    assert sc(k, "qc", "SvcProbe") == (0, [
        "[SC] QueryServiceConfig SUCCESS",
        "",
        "SERVICE_NAME: SvcProbe",
        "        TYPE               : 1  KERNEL_DRIVER",
        "        START_TYPE         : 3   DEMAND_START",
        "        ERROR_CONTROL      : 0   IGNORE",
        f"        BINARY_PATH_NAME   : {PROBE}",
        "        LOAD_ORDER_GROUP   :",
        "        TAG                : 0",
        "        DISPLAY_NAME       : Service probe",
        "        DEPENDENCIES       :",
        "        SERVICE_START_NAME :",
    ])
    code, out = sc(k, "query")
    assert code == 0 and out[:3] == ["", "SERVICE_NAME: SvcProbe", "DISPLAY_NAME: Service probe"]
    assert sc(k, "query", "state=", "inactive") == (0, [""])
    assert "SvcProbe: DriverEntry \\Registry\\Machine\\System\\CurrentControlSet\\Services\\SvcProbe" in k.log()
    assert "SvcProbe: DriverUnload" not in k.log()
    code, out = sc(k, "stop", "SvcProbe")
    assert code == 0 and out[3] == "        STATE              : 1  STOPPED" and len(out) == 8
    assert "SvcProbe: DriverUnload" in k.log()
    assert sc(k, "config", "SvcProbe", "start=", "auto") == (0, ["[SC] ChangeServiceConfig SUCCESS"])
    assert sc(k, "qc", "SvcProbe")[1][4] == "        START_TYPE         : 2   AUTO_START"
    assert sc(k, "delete", "SvcProbe") == (0, ["[SC] DeleteService SUCCESS"])
    assert sc(k, "query", "SvcProbe") == (1060 & 0xFF, [
        "[SC] OpenService FAILED 1060:",
        "",
        "The specified service does not exist as an installed service.",
        "",
    ])


def test_failures_exit_with_the_win32_error(bare_kernel):
    k = bare_kernel
    sc(k, "create", "SvcProbe", "binPath=", PROBE)
    code, out = sc(k, "create", "SvcProbe", "binPath=", PROBE)
    assert (code, out[0]) == (1073 & 0xFF, "[SC] CreateService FAILED 1073:")
    code, out = sc(k, "stop", "SvcProbe")
    assert (code, out[0], out[2]) == (1062 & 0xFF, "[SC] ControlService FAILED 1062:", "The service has not been started.")
    sc(k, "start", "SvcProbe")
    code, out = sc(k, "start", "SvcProbe")
    assert (code, out[0]) == (1056 & 0xFF, "[SC] StartService FAILED 1056:")
    code, out = sc(k, "create", "Broken", "binPath=", "/nonexistent/driver.py")
    code, out = sc(k, "start", "Broken")
    assert (code, out[:3]) == (2, ["[SC] StartService FAILED 2:", "", "The system cannot find the file specified."])
    assert "/nonexistent/driver.py does not exist" in out[4]
    code, out = sc(k, "frobnicate")
    assert code == 2


def test_json_for_scripts(bare_kernel):
    k = bare_kernel
    sc(k, "create", "SvcProbe", "binPath=", PROBE)
    code, out = sc(k, "--json", "query", "SvcProbe")
    s = json.loads("\n".join(out))
    assert code == 0 and s["CurrentState"] == 1 and s["Win32ExitCode"] == 1077 and s["Leaks"] == []
    code, out = sc(k, "query", "Nothing", "--json")
    assert code == 1060 & 0xFF
    assert json.loads("\n".join(out))["error"] == 1060 and json.loads("\n".join(out))["function"] == "OpenService"
    code, out = sc(k, "--json", "query")
    assert [r["ServiceName"] for r in json.loads("\n".join(out))] == ["SvcProbe"]


def test_a_relative_bin_path_is_made_absolute(bare_kernel):
    k = bare_kernel
    assert sc(k, "create", "SvcProbe", "binPath=", "probe.py", cwd=str(DRIVERS))[0] == 0
    assert sc(k, "qc", "SvcProbe")[1][6] == f"        BINARY_PATH_NAME   : {PROBE}"
    assert sc(k, "start", "SvcProbe")[0] == 0


def test_leaks_and_waiting_handles_show_in_query(bare_kernel):
    k = bare_kernel
    sc(k, "create", "Leaky", "binPath=", str(DRIVERS / "leaky.py"))
    sc(k, "start", "Leaky")
    code, out = sc(k, "stop", "Leaky")
    assert code == 0
    at = out.index("        LEAKS              : 4")
    assert sorted(line.strip().split(":")[0] for line in out[at + 1:]) == ["device", "pool", "symbolic link", "timer"]
    assert sc(k, "queryex", "Leaky")[1][-5:] == out[-5:]

    sc(k, "create", "SvcProbe", "binPath=", PROBE)
    sc(k, "start", "SvcProbe")
    holder = k.spawn("""
        import sys
        from ringzero.win32 import win32file
        h = win32file.CreateFile(r"\\\\.\\SvcProbe", win32file.GENERIC_READ, 0, None, win32file.OPEN_EXISTING, 0, None)
        print("open", flush=True)
        sys.stdin.readline()
    """, stdin=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "open"
        code, out = sc(k, "stop", "SvcProbe")
        assert code == 0 and out[3] == "        STATE              : 3  STOP_PENDING"
        assert out[4] == "                                (NOT_STOPPABLE, NOT_PAUSABLE, IGNORES_SHUTDOWN)"
        assert re.fullmatch(rf"        WAITING_FOR        : pid {holder.pid} \(.*\) handle 0x[0-9a-f]+ to "
                            r"\\Device\\SvcProbe", out[-1]), out[-1]
    finally:
        holder.kill()
        holder.wait()


def test_a_driver_loaded_directly_is_a_service_sc_can_stop_and_start(tmp_path, monkeypatch):
    """As NtLoadDriver needs a service key: `ringzero kernel --load` and the
    driver.load call the samples make go through a service of the driver's
    name, made if there is none, which the SCM shows and controls."""
    from conftest import start_kernel
    k = start_kernel(tmp_path, monkeypatch, loads=["ringzero.drivers.echo"])
    try:
        code, out = sc(k, "query", "echo")
        assert code == 0 and "        STATE              : 4  RUNNING" in out
        code, out = sc(k, "qc", "echo")
        assert code == 0 and any(line.split(":", 1)[-1].strip() == "ringzero.drivers.echo" for line in out
                                 if "BINARY_PATH_NAME" in line)
        k.load(PROBE, "SvcProbe")                    # the samples' way
        code, out = sc(k, "query")
        assert code == 0 and "SERVICE_NAME: SvcProbe" in out and "SERVICE_NAME: echo" in out
        assert sc(k, "stop", "SvcProbe")[0] == 0
        assert "SvcProbe" not in k.call("kernel.info")["drivers"]
        assert sc(k, "start", "SvcProbe")[0] == 0    # from the image path the load recorded
        assert "SvcProbe" in k.call("kernel.info")["drivers"]
    finally:
        k.stop()
    # the services outlive the kernel, stopped, as services do
    k = start_kernel(tmp_path, monkeypatch)
    try:
        code, out = sc(k, "query", "echo")
        assert code == 0 and "        STATE              : 1  STOPPED" in out
        assert sc(k, "start", "echo")[0] == 0
        assert "echo" in k.call("kernel.info")["drivers"]
    finally:
        k.stop()
