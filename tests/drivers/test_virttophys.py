"""Seed system 1, VirtToPhys: the driver translates the calling program's
virtual addresses to physical ones, loaded and unloaded through the service
control manager; the control program does the seed's sequence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import SRC, as_user

from ringzero import client
from ringzero.drivers import virttophys as drv
from ringzero.kernel.mm import pagemap
from ringzero.win32 import pywintypes, win32file
from ringzero.win32 import win32service as ws
from ringzero.win32 import winerror as we
from ringzero.win32.win32con import (GENERIC_READ, GENERIC_WRITE, OPEN_EXISTING, SC_MANAGER_ALL_ACCESS,
                                     SERVICE_ALL_ACCESS, SERVICE_CONTROL_STOP, SERVICE_DEMAND_START,
                                     SERVICE_ERROR_IGNORE, SERVICE_KERNEL_DRIVER)

DRIVER = os.path.abspath(drv.__file__)
PAGE = os.sysconf("SC_PAGE_SIZE")


def needs_frame_numbers():
    if os.geteuid() != 0 or not pagemap.pfns_visible():
        pytest.skip("physical frame numbers are visible to root only")


def start_service():
    scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    svc = ws.CreateService(scm, "VirtToPhys", "Virtual To Physical Address Converter", SERVICE_ALL_ACCESS,
                           SERVICE_KERNEL_DRIVER, SERVICE_DEMAND_START, SERVICE_ERROR_IGNORE, DRIVER,
                           None, 0, None, None, None)
    ws.StartService(svc, None)
    return scm, svc


def ioctl_error(h, code, data, out_len) -> int:
    with pytest.raises(pywintypes.error) as e:
        win32file.DeviceIoControl(h, code, data, out_len)
    return e.value.winerror


def irps() -> int:
    return client.connection().call("driver.counters", service="VirtToPhys")["counters"]["irps"]


def nothing_left(k) -> None:
    sc = subprocess.run([sys.executable, "-m", "ringzero.cli.main", "sc", "query"], env=k.env,
                        capture_output=True, text=True, timeout=60)
    assert sc.returncode == 0 and "VirtToPhys" not in sc.stdout
    obj = subprocess.run([sys.executable, "-m", "ringzero.cli.main", "obj", "\\Device"], env=k.env,
                         capture_output=True, text=True, timeout=60)
    assert obj.returncode == 0 and "devVirtToPhys" not in obj.stdout
    assert "VirtToPhys" not in client.connection().call("kernel.info")["drivers"]


def test_the_physical_address_is_what_the_program_reads_in_its_own_pagemap(bare_kernel):
    needs_frame_numbers()
    r = bare_kernel.run(f"""
        import ctypes, json, mmap, os, struct
        from ringzero.win32 import win32file, win32service as ws
        from ringzero.win32.win32con import *
        from ringzero.drivers.virttophys import IOCTL_GET_PHYS_ADDRESS
        PAGE = mmap.PAGESIZE

        def own_pagemap(va):
            fd = os.open("/proc/self/pagemap", os.O_RDONLY)
            (entry,) = struct.unpack("<Q", os.pread(fd, 8, va // PAGE * 8))
            os.close(fd)
            assert entry >> 63, "the page is not present"
            return (entry & ((1 << 55) - 1)) * PAGE + va % PAGE

        page = mmap.mmap(-1, PAGE)
        page[:5] = b"touch"
        va = ctypes.addressof(ctypes.c_char.from_buffer(page)) + 0x123
        gone = mmap.mmap(-1, PAGE)
        gone_va = ctypes.addressof(ctypes.c_char.from_buffer(gone))
        gone.close()
        scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
        svc = ws.CreateService(scm, "VirtToPhys", "Virtual To Physical Address Converter",
                               SERVICE_START + SERVICE_STOP + DELETE, SERVICE_KERNEL_DRIVER, SERVICE_DEMAND_START,
                               SERVICE_ERROR_IGNORE, {DRIVER!r}, None, 0, None, None, None)
        ws.StartService(svc, None)
        h = win32file.CreateFile(r"\\\\.\\slVirtToPhys", GENERIC_READ + GENERIC_WRITE, 0, None, OPEN_EXISTING, 0, None)
        out = win32file.DeviceIoControl(h, IOCTL_GET_PHYS_ADDRESS, struct.pack("<QQ", va, gone_va), 16)
        win32file.CloseHandle(h)
        ws.ControlService(svc, SERVICE_CONTROL_STOP)
        ws.DeleteService(svc)
        ws.CloseServiceHandle(svc)
        ws.CloseServiceHandle(scm)
        print(json.dumps({{"expected": own_pagemap(va), "got": list(struct.unpack("<QQ", out)), "pid": os.getpid()}}))
    """)
    out = json.loads(r.stdout)
    assert out["expected"] != 0
    assert out["got"] == [out["expected"], 0]
    log = bare_kernel.log()
    assert f"VirtToPhys: pid {out['pid']} " in log
    nothing_left(bare_kernel)


def test_the_sample_prints_the_seeds_table_and_leaves_nothing_behind(bare_kernel):
    needs_frame_numbers()
    r = subprocess.run([sys.executable, "-m", "ringzero.cli.main", "sample", "virttophys"], env=bare_kernel.env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["Modules", "BASE", "Physical"] and set(lines[1]) == {"-"}
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 4
    assert rows[0][0].startswith("python") and rows[1][0].startswith("libc")
    exe_base, exe_phys = int(rows[0][1], 16), int(rows[0][2], 16)
    assert exe_phys != 0 and exe_phys % PAGE == exe_base % PAGE
    nothing_left(bare_kernel)
    log = bare_kernel.log()
    assert "VirtToPhys: DriverEntry, registry path \\Registry\\Machine\\System\\CurrentControlSet\\Services\\VirtToPhys" in log
    assert "VirtToPhys: unloaded" in log

    unmapped = 0x1000          # the first pages are never mapped (vm.mmap_min_addr)
    r = subprocess.run([sys.executable, "-m", "ringzero.samples.virttophys", "--json", "--address", f"{unmapped:x}"],
                       env=bare_kernel.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    modules = json.loads(r.stdout)["modules"]
    assert len(modules) == 5 and modules[4] == {"module": "0x1000", "base": unmapped, "physical": 0}
    assert modules[0]["physical"] != 0
    r = subprocess.run([sys.executable, "-m", "ringzero.samples.virttophys", "--address", f"{unmapped:x}"],
                       env=bare_kernel.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].split() == ["0x1000", f"{unmapped:016X}", "0" * 16, "(no", "page", "there:",
                                                 "MmGetPhysicalAddress", "gives", "0)"]
    nothing_left(bare_kernel)


def test_a_handle_without_write_access_is_refused_before_the_driver_sees_it(bare_kernel):
    assert drv.IOCTL_GET_PHYS_ADDRESS >> 14 & 3 == 3            # FILE_READ_ACCESS | FILE_WRITE_ACCESS
    scm, svc = start_service()
    h = win32file.CreateFile(r"\\.\slVirtToPhys", GENERIC_READ, 0, None, OPEN_EXISTING, 0, None)
    before = irps()
    assert ioctl_error(h, drv.IOCTL_GET_PHYS_ADDRESS, b"\0" * 8, 8) == we.ERROR_ACCESS_DENIED
    assert irps() == before
    win32file.CloseHandle(h)
    ws.ControlService(svc, SERVICE_CONTROL_STOP)
    ws.DeleteService(svc)


def test_the_driver_checks_buffers_as_the_seed_does(bare_kernel):
    scm, svc = start_service()
    h = win32file.CreateFile(r"\\.\slVirtToPhys", GENERIC_READ | GENERIC_WRITE, 0, None, OPEN_EXISTING, 0, None)
    code = drv.IOCTL_GET_PHYS_ADDRESS
    assert ioctl_error(h, code, b"\0" * 4, 8) == we.ERROR_INSUFFICIENT_BUFFER      # STATUS_BUFFER_TOO_SMALL
    assert ioctl_error(h, code, b"\0" * 16, 8) == we.ERROR_INSUFFICIENT_BUFFER     # no room for the answers
    assert ioctl_error(h, code, b"\0" * 12, 16) == we.ERROR_INVALID_PARAMETER      # not whole entries
    other = drv.CTL_CODE(drv.FILE_DEVICE_UNKNOWN, 0x801, drv.METHOD_BUFFERED, drv.FILE_ANY_ACCESS)
    assert ioctl_error(h, other, b"\0" * 8, 8) == we.ERROR_INVALID_FUNCTION         # STATUS_INVALID_DEVICE_REQUEST
    win32file.CloseHandle(h)
    ws.ControlService(svc, SERVICE_CONTROL_STOP)
    ws.DeleteService(svc)


SAME_USER_PROGRAM = """
import ctypes, json, mmap, struct
from ringzero.win32 import pywintypes, win32file, win32service as ws
from ringzero.win32.win32con import *
from ringzero.drivers.virttophys import IOCTL_GET_PHYS_ADDRESS
page = mmap.mmap(-1, mmap.PAGESIZE)
page[0] = 1
va = ctypes.addressof(ctypes.c_char.from_buffer(page))
scm = ws.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
svc = ws.CreateService(scm, "VirtToPhys", None, SERVICE_ALL_ACCESS, SERVICE_KERNEL_DRIVER, SERVICE_DEMAND_START,
                       SERVICE_ERROR_IGNORE, {driver!r}, None, 0, None, None, None)
ws.StartService(svc, None)
h = win32file.CreateFile(r"\\\\.\\slVirtToPhys", GENERIC_READ | GENERIC_WRITE, 0, None, OPEN_EXISTING, 0, None)
try:
    win32file.DeviceIoControl(h, IOCTL_GET_PHYS_ADDRESS, struct.pack("<Q", va), 8)
    out = {{"winerror": 0}}
except pywintypes.error as e:
    out = {{"winerror": e.winerror}}
win32file.CloseHandle(h)
ws.ControlService(svc, SERVICE_CONTROL_STOP)
ws.DeleteService(svc)
print(json.dumps(out))
"""


def test_a_kernel_that_cannot_read_frame_numbers_says_so_and_invents_nothing(tmp_path):
    prefix = as_user("nobody")
    run_dir = tempfile.mkdtemp(prefix="rz-nobody-")
    try:
        uid = int(prefix[1].split("=")[1])
        gid = int(prefix[2].split("=")[1])
        os.chown(run_dir, uid, gid)
        os.chmod(run_dir, 0o755)
        sock, state = os.path.join(run_dir, "kernel.sock"), os.path.join(run_dir, "state")
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": SRC, "RINGZERO_SOCKET": sock,
               "RINGZERO_STATE": state, "HOME": run_dir}
        if "RINGZERO_RING" in os.environ:
            env["RINGZERO_RING"] = os.environ["RINGZERO_RING"]
        log = open(tmp_path / "kernel.log", "w")
        k = subprocess.Popen(prefix + ["-m", "ringzero.kernel", "--socket", sock, "--state", state, "--verbose"],
                             env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while not client.kernel_running(sock) and k.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.kernel_running(sock), (tmp_path / "kernel.log").read_text()
            # the seed's program, run by root against this kernel: the kernel may not read root's page map
            r = subprocess.run([sys.executable, "-m", "ringzero.samples.virttophys"], env=env, capture_output=True,
                               text=True, timeout=120)
            assert r.returncode != 0
            assert "Can't send control code to device." in r.stderr
            assert "only to root" in r.stderr and "no physical address was made up" in r.stderr
            assert r.stdout == ""
            j = subprocess.run([sys.executable, "-m", "ringzero.samples.virttophys", "--json"], env=env,
                               capture_output=True, text=True, timeout=120)
            assert j.returncode != 0
            assert json.loads(j.stdout)["winerror"] == we.ERROR_PRIVILEGE_NOT_HELD
            # a program of the kernel's own user: its page map opens, but the frame numbers read as zero
            same_user = subprocess.run(prefix + ["-c", SAME_USER_PROGRAM.format(driver=DRIVER)], env=env,
                                       capture_output=True, text=True, timeout=120)
            assert same_user.returncode == 0, same_user.stderr
            assert json.loads(same_user.stdout) == {"winerror": we.ERROR_PRIVILEGE_NOT_HELD}
            assert "frame numbers are hidden" in (tmp_path / "kernel.log").read_text()
            q = subprocess.run([sys.executable, "-m", "ringzero.cli.main", "sc", "query"], env=env,
                               capture_output=True, text=True, timeout=60)
            assert q.returncode == 0 and "VirtToPhys" not in q.stdout
        finally:
            k.terminate()
            k.wait(timeout=30)
            log.close()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_the_sample_starts_an_embedded_kernel_when_none_runs(tmp_path):
    env = dict(os.environ, PYTHONPATH=SRC, RINGZERO_SOCKET=str(tmp_path / "nobody-listens.sock"))
    r = subprocess.run([sys.executable, "-m", "ringzero.samples.virttophys"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert "no kernel was running; started one for this program" in r.stderr
    if os.geteuid() == 0 and pagemap.pfns_visible():
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("Modules")
    else:
        assert r.returncode != 0 and "only to root" in r.stderr
