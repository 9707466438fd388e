"""Process notify routines and process lookups, across real processes: a real
kernel fed by the real process-events connector, a test driver (notifytest)
registering routines, and real Linux processes created and ended here."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from conftest import SRC, TEST_DRIVERS, wait_until
from ringzero.kernel.ke.clock import EPOCH_DIFFERENCE_100NS
from ringzero.kernel.ps import connector
from ringzero.nt import status as st
from ringzero.win32 import pywintypes, win32con, win32file, winerror

NOTIFYTEST = os.path.join(TEST_DRIVERS, "notifytest.py")
sys.path.insert(0, TEST_DRIVERS)
import notifytest as N  # noqa: E402

EX, PLAIN = N.ROUTINE_EX, N.ROUTINE_PLAIN


def open_dev(name: str = "NotifyTest"):
    return win32file.CreateFile(rf"\\.\{name}", win32con.GENERIC_READ | win32con.GENERIC_WRITE, 0, None,
                                win32con.OPEN_EXISTING, 0, None)


def register(h, bits: int) -> None:
    win32file.DeviceIoControl(h, N.IOCTL_REGISTER, struct.pack("<I", bits), None)


def seen(h, pid: int) -> list[dict]:
    return json.loads(bytes(win32file.DeviceIoControl(h, N.IOCTL_SEEN, struct.pack("<I", pid), 1 << 20)))


def lookup(h, pid: int) -> dict:
    return json.loads(bytes(win32file.DeviceIoControl(h, N.IOCTL_LOOKUP, struct.pack("<I", pid & 0xFFFFFFFF),
                                                      4096)))


def seen_when(h, pid: int, predicate, timeout: float = 20) -> list[dict]:
    """What the routines were told of `pid`, once `predicate(calls)` holds."""
    def check():
        calls = seen(h, pid)
        return calls if predicate(calls) else None
    calls = wait_until(check, timeout=timeout)
    assert calls, f"notifications for pid {pid} never satisfied the test: {seen(h, pid)}"
    return calls


def seen_until(h, pid: int, kind: str) -> list[dict]:
    """What the routines were told of `pid`, once a call of `kind` arrived."""
    return seen_when(h, pid, lambda calls: any(c["kind"] == kind for c in calls))


def system_time_now() -> int:
    return time.time_ns() // 100 + EPOCH_DIFFERENCE_100NS


@pytest.fixture
def nt(kernel):
    kernel.load(NOTIFYTEST, "NotifyTest")
    h = open_dev()
    yield h
    h.Close()


def test_a_process_created_and_exited_reaches_both_kinds_of_routine(kernel, nt):
    register(nt, EX | PLAIN)
    p = subprocess.Popen(["/bin/sh", "-c", "sleep 0.3; exit 7"])
    p.wait()
    calls = seen_when(nt, p.pid, lambda calls: len(calls) == 4)
    assert [c["kind"] for c in calls] == ["ex-create", "plain", "ex-exit", "plain"]
    create, plain_create, exit_, plain_exit = calls
    assert create["ppid"] == os.getpid()
    assert create["creating_thread"] == [os.getpid(), threading.get_native_id()]
    assert create["image"] == os.path.realpath("/bin/sh")
    assert create["full_name"] is True
    assert create["command_line"] == '/bin/sh -c "sleep 0.3; exit 7"'
    assert create["pid_of_object"] == p.pid
    assert create["irql"] == 0                 # PASSIVE_LEVEL, as NT calls them
    assert create["context_pid"] == 4          # the System process's context
    assert exit_["exit_status"] == 7
    assert exit_["object"] == create["object"]  # one process object from creation to exit
    assert plain_create == {"kind": "plain", "ppid": os.getpid(), "create": True}
    assert plain_exit == {"kind": "plain", "ppid": os.getpid(), "create": False}


def test_a_fork_without_exec_is_reported_with_the_image_it_inherited(kernel, nt):
    register(nt, EX)
    r = kernel.run("""
        import os, sys, time
        pid = os.fork()
        if pid == 0:
            time.sleep(0.3)
            os._exit(3)
        print(os.getpid(), pid, flush=True)
        os.waitpid(pid, 0)
    """)
    parent, child = map(int, r.stdout.split())
    calls = seen_until(nt, child, "ex-exit")
    create = calls[0]
    assert create["kind"] == "ex-create"
    assert create["ppid"] == parent
    assert create["image"] == os.path.realpath(sys.executable)
    assert create["command_line"].startswith(sys.executable + " -c ")
    assert calls[-1]["exit_status"] == 3


def test_threads_are_not_processes(kernel, nt):
    register(nt, EX)
    r = kernel.run("""
        import os, threading, time
        ids = []
        def work():
            ids.append(threading.get_native_id())
            time.sleep(0.1)
        ts = [threading.Thread(target=work) for _ in range(4)]
        for t in ts: t.start()
        for t in ts: t.join()
        print(os.getpid(), *ids, flush=True)
    """)
    pid, *tids = map(int, r.stdout.split())
    seen_until(nt, pid, "ex-exit")
    assert len(tids) == 4 and pid not in tids
    for tid in tids:
        assert seen(nt, tid) == []


def test_lookup_finds_any_process_and_only_processes(kernel, nt):
    register(nt, EX)
    # the test process itself: a program, looked up (and dereferenced) again and again
    for _ in range(3):
        me = lookup(nt, os.getpid())
        assert me["status"] == 0
        assert me["pid"] == os.getpid()
        assert me["ppid"] == os.getppid()
        assert me["image_file_name"] == os.path.basename(os.path.realpath(sys.executable))[:14]
        assert me["exit_status"] == st.STATUS_PENDING
    # a process created while the routine is registered: the object the routine was given
    before = system_time_now()
    p = subprocess.Popen(["/bin/sleep", "30"])
    after = system_time_now()
    try:
        create = seen_until(nt, p.pid, "ex-create")[0]
        got = lookup(nt, p.pid)
        assert got["status"] == 0
        assert got["object"] == create["object"]
        assert got["image_file_name"] == "sleep"
        assert got["ppid"] == os.getpid()
        assert got["exit_status"] == st.STATUS_PENDING
        # the connector's fork timestamp, converted to system time (an ordering, not a duration)
        assert before - 200_000 <= got["create_time"] <= after + 200_000
    finally:
        p.kill()
        p.wait()
    gone = seen_until(nt, p.pid, "ex-exit")[-1]
    assert gone["exit_status"] == -9
    assert lookup(nt, p.pid)["status"] == st.STATUS_INVALID_PARAMETER
    # pid 4 is the System process, as on NT
    system = lookup(nt, 4)
    assert (system["status"], system["image_file_name"]) == (0, "System")
    # not processes: a thread of this process, kthreadd, pid 0, a pid that is not in use
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        tid = wait_until(lambda: t.native_id)
        assert lookup(nt, tid)["status"] == st.STATUS_INVALID_PARAMETER
    finally:
        stop.set()
        t.join()
    if open("/proc/2/comm").read().strip() == "kthreadd":
        assert lookup(nt, 2)["status"] == st.STATUS_INVALID_PARAMETER
    assert lookup(nt, 0)["status"] == st.STATUS_INVALID_PARAMETER
    with open("/proc/sys/kernel/pid_max") as f:
        assert lookup(nt, int(f.read()) + 1)["status"] == st.STATUS_INVALID_PARAMETER


def test_a_routine_that_raises_is_the_drivers_fault_and_the_others_still_run(kernel, nt):
    register(nt, EX | PLAIN)
    win32file.DeviceIoControl(nt, N.IOCTL_FAULT, struct.pack("<I", 1), None)
    try:
        p = subprocess.Popen(["/bin/sleep", "0.1"])
        p.wait()
        calls = seen_when(nt, p.pid, lambda calls: len(calls) == 4)
        assert [c["kind"] for c in calls] == ["ex-create", "plain", "ex-exit", "plain"]
    finally:
        win32file.DeviceIoControl(nt, N.IOCTL_FAULT, struct.pack("<I", 0), None)
    faults = [r for r in kernel.call("dbg.recent", count=4000)
              if r["level"] == "fault" and "process notify routine NotifyEx" in r["text"]]
    assert faults and faults[0]["source"] == "NotifyTest"
    assert "notifytest: a notify routine that raises" in faults[0]["text"]
    assert kernel.call("driver.counters", service="NotifyTest")["faults"] >= 2


def test_removing_a_routine_that_is_not_registered(kernel, nt):
    with pytest.raises(pywintypes.error) as e:
        win32file.DeviceIoControl(nt, N.IOCTL_REMOVE, struct.pack("<I", EX), None)
    assert e.value.winerror == winerror.ERROR_PROC_NOT_FOUND     # STATUS_PROCEDURE_NOT_FOUND
    register(nt, PLAIN)
    win32file.DeviceIoControl(nt, N.IOCTL_REMOVE, struct.pack("<I", PLAIN), None)
    assert kernel.call("ps.notify")["routines"] == []


def test_a_routine_can_deny_a_creation(kernel, nt):
    register(nt, EX)
    token = f"rz-deny-{uuid.uuid4().hex}"
    win32file.DeviceIoControl(nt, N.IOCTL_DENY, token.encode(), None)
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", token])
    try:
        assert p.wait(timeout=20) == -9
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    log = [r["text"] for r in kernel.call("dbg.recent", count=4000)]
    assert any(f"creation of pid {p.pid}" in t and "denied by NotifyTest with STATUS_ACCESS_DENIED; killed" in t
               for t in log), log[-20:]


def test_unload_removes_a_routine_the_driver_forgot(kernel, nt):
    kernel.load(NOTIFYTEST, "NotifyWitness")
    witness = open_dev("NotifyWitness")
    register(witness, EX)
    register(nt, EX | PLAIN)
    win32file.DeviceIoControl(nt, N.IOCTL_FORGET, None, None)
    nt.Close()
    result = kernel.call("driver.unload", service="NotifyTest")
    assert result["deferred"] is False
    leaks = [x for x in result["leaks"] if x.startswith("notify routine")]
    assert sorted(leaks) == ["notify routine: process notify routine Notify still registered",
                             "notify routine: process notify routine NotifyEx still registered"]
    assert kernel.call("ps.notify")["routines"] == [{"driver": "NotifyWitness", "routine": "NotifyEx", "ex": True}]
    # a marked process: the witness logs it, the unloaded driver is never called for it
    p = subprocess.Popen(["/bin/sh", "-c", "sleep 0.2", N.MARK])
    p.wait()
    assert wait_until(lambda: any(r["text"] == f"NotifyWitness: exit {p.pid}"
                                  for r in kernel.call("dbg.recent", count=4000)), timeout=20)
    texts = [r["text"] for r in kernel.call("dbg.recent", count=4000)]
    assert f"NotifyWitness: create {p.pid}" in texts
    assert not any(t.startswith("NotifyTest:") and str(p.pid) in t for t in texts)
    witness.Close()


def test_the_last_routine_removed_closes_the_connector(kernel, nt):
    register(nt, EX)
    assert kernel.call("ps.notify")["routines"] == [{"driver": "NotifyTest", "routine": "NotifyEx", "ex": True}]
    win32file.DeviceIoControl(nt, N.IOCTL_REMOVE, struct.pack("<I", EX), None)
    assert kernel.call("ps.notify")["routines"] == []
    kernel_pid = kernel.pid

    def netlink_connector_sockets():
        inodes = set()
        for fd in os.listdir(f"/proc/{kernel_pid}/fd"):
            try:
                target = os.readlink(f"/proc/{kernel_pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        with open("/proc/net/netlink") as f:
            rows = [line.split() for line in f.readlines()[1:]]
        return [r for r in rows if r[1] == str(connector.NETLINK_CONNECTOR) and r[-1] in inodes]

    assert wait_until(lambda: not netlink_connector_sockets())
    register(nt, EX)
    assert netlink_connector_sockets()


# -- where the connector cannot be used ---------------------------------------------

def test_a_refused_subscription_is_access_denied_and_a_missing_one_not_supported():
    from ringzero.kernel.ps import notify
    assert notify._status_for(connector.ConnectorUnavailable("x", errno.EPERM)) == st.STATUS_ACCESS_DENIED
    assert notify._status_for(connector.ConnectorUnavailable("x", errno.EACCES)) == st.STATUS_ACCESS_DENIED
    assert notify._status_for(connector.ConnectorUnavailable("x", errno.EPROTONOSUPPORT)) == st.STATUS_NOT_SUPPORTED
    assert notify._status_for(connector.ConnectorUnavailable("x", None)) == st.STATUS_NOT_SUPPORTED


def test_registering_inside_a_user_namespace_fails_clearly(tmp_path):
    """The connector ignores subscriptions from outside the initial user
    namespace (as in most containers): the registration says so."""
    code = textwrap.dedent("""
        import json
        from ringzero.kernel import dbg, system
        system.boot(None)
        from ringzero.kernel.ps import notify
        status = notify.PsSetCreateProcessNotifyRoutineEx(lambda *a: None, False)
        print(json.dumps({"status": status, "routines": notify.registrations(),
                          "log": [r.text for r in dbg.recent(20)]}))
    """)
    env = dict(os.environ, PYTHONPATH=SRC)
    try:
        r = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", code], env=env,
                           capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("unshare (util-linux) is not installed")
    if r.returncode != 0 and "unshare" in r.stderr:
        pytest.skip(f"cannot make a user namespace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == st.STATUS_NOT_SUPPORTED
    assert out["routines"] == []
    assert any("STATUS_NOT_SUPPORTED" in t and "namespaces" in t for t in out["log"]), out["log"]
