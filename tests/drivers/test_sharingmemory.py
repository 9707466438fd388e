"""SharingMemory across real processes: a kernel page mapped into programs."""

import json
import os
import signal
import struct
import sys
import time

import pytest

from conftest import wait_until
from ringzero.kernel.ringpoll import MAX_SPARE
from ringzero.win32 import pywintypes, win32con, win32file, winerror

IOCTL = 0x226000  # CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS)
TAG = "ShMm"


@pytest.fixture
def shm(kernel):
    kernel.load("ringzero.drivers.sharingmemory", "SharingMemory")
    return kernel


def pool_in_use(k):
    return sum(r["bytes"] for r in k.call("pool.stats") if r["tag"] == TAG)


def kernel_fds(k):
    return len(os.listdir(f"/proc/{k.pid}/fd"))


def test_program_reads_the_drivers_time_from_its_own_memory(shm):
    r = shm.run("""
from ringzero.samples.sharingmemory import run
run(3, True)
""")
    out = json.loads(r.stdout)
    assert out["address"] > 0
    assert out["requests_while_reading"] == 0          # no kernel call per read
    raws = [s["raw"] for s in out["samples"]]
    assert raws == sorted(raws) and raws[-1] > raws[0]  # the timer keeps writing
    for s in out["samples"]:
        # local time in the page vs the program's own clock at the moment it read it
        wall_local_100ns = int((s["wall_clock"] + out["utc_offset_seconds"]) * 1e7) + 116444736000000000
        assert abs(s["raw"] - wall_local_100ns) <= 2 * 10**7


def test_the_address_is_real_memory_of_the_program(shm):
    r = shm.run("""
import ctypes, struct
from ringzero.win32 import win32file, win32con
h = win32file.CreateFile(r"\\\\.\\slSharingMemory", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
addr = struct.unpack("<Q", win32file.DeviceIoControl(h, 0x226000, None, 8))[0]
maps = open("/proc/self/maps").read().splitlines()
hit = [l for l in maps if int(l.split("-")[0], 16) <= addr < int(l.split()[0].split("-")[1], 16)]
print(hit[0])
h.Close()
# after IRP_MJ_CLEANUP the view is gone from this process
maps = open("/proc/self/maps").read()
print("still mapped" if any(int(l.split("-")[0], 16) == addr for l in maps.splitlines()) else "unmapped")
""")
    line, after = r.stdout.strip().splitlines()
    assert "memfd:ringzero-pool" in line and "rw-s" in line
    assert after == "unmapped"
    assert wait_until(lambda: pool_in_use(shm) == 0)


def test_too_small_output_buffer(shm):
    h = win32file.CreateFile(r"\\.\slSharingMemory", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
    with pytest.raises(pywintypes.error) as e:
        win32file.DeviceIoControl(h, IOCTL, None, 4)
    assert e.value.winerror == winerror.ERROR_INSUFFICIENT_BUFFER
    h.Close()
    assert pool_in_use(shm) == 0


def test_mapping_failure_is_caught_and_leaks_nothing(shm):
    # the program leaves itself no address space for the view, so the real mmap fails
    r = shm.run("""
import resource, struct
from ringzero.win32 import win32file, win32con, pywintypes
h = win32file.CreateFile(r"\\\\.\\slSharingMemory", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm, resource.RLIM_INFINITY))
try:
    win32file.DeviceIoControl(h, 0x226000, None, 8)
    print("mapped")
except pywintypes.error as e:
    print("refused", e.winerror)
""")
    assert r.stdout.strip() == f"refused {winerror.ERROR_GEN_FAILURE}"   # STATUS_UNSUCCESSFUL, as the seed sets
    assert "mapping into the process failed" in shm.log()
    assert wait_until(lambda: pool_in_use(shm) == 0)
    assert shm.call("kernel.info")["mdls"] == 0


def test_fifty_programs_hold_views_and_all_go_away(shm):
    fds_before = kernel_fds(shm)
    code = """
import ctypes, struct, sys, time
from ringzero.win32 import win32file, win32con
h = win32file.CreateFile(r"\\\\.\\slSharingMemory", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
addr = struct.unpack("<Q", win32file.DeviceIoControl(h, 0x226000, None, 8))[0]
first = ctypes.c_int64.from_address(addr).value
print("mapped", flush=True)
while ctypes.c_int64.from_address(addr).value == first:
    time.sleep(0.05)
print("updated", flush=True)
sys.stdin.readline()
"""
    progs = [shm.spawn(code, stdin=__import__("subprocess").PIPE) for _ in range(50)]
    for p in progs:
        assert p.stdout.readline().strip() == "mapped"
    assert pool_in_use(shm) == 50 * 4096
    for p in progs:
        assert p.stdout.readline().strip() == "updated"
    killed, exited = progs[::2], progs[1::2]
    for p in killed:
        os.kill(p.pid, signal.SIGKILL)
    for p in exited:
        p.stdin.write("\n")
        p.stdin.flush()
    for p in progs:
        p.wait(timeout=60)
    assert all(p.returncode == 0 for p in exited)
    assert wait_until(lambda: pool_in_use(shm) == 0, timeout=30)
    info = shm.call("kernel.info")
    assert info["mdls"] == 0
    assert wait_until(lambda: kernel_fds(shm) <= fds_before, timeout=30)
    handles = shm.call("handles.list")
    assert all(p["views"] == 0 for p in handles)


def kernel_threads(k) -> int:
    return len(os.listdir(f"/proc/{k.pid}/task"))


def test_a_program_that_never_answers_its_upcalls_holds_a_bounded_number_of_kernel_threads(shm):
    """Mapping a view into a program is an upcall a kernel thread waits on: a
    program that never answers them (here it ignores every MAP_VIEW) may hold
    64 such threads; the mappings past those fail at once (the driver's
    __except: ERROR_GEN_FAILURE), and its exit gives every thread back."""
    threads_before = kernel_threads(shm)
    p = shm.spawn("""
import os, sys
from ringzero import client
from ringzero.protocol import wire
from ringzero.protocol.wire import K
from ringzero.win32 import win32file, win32con
client.Connection._map_view = lambda self, f: [os.close(fd) for fd in f.fds]     # never answers
conn = client.connection()
slots = []
for _ in range(70):
    h = win32file.CreateFile(r"\\\\.\\slSharingMemory", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING,
                             win32con.FILE_FLAG_OVERLAPPED, None)
    slots.append(conn.start(K.DEVICE_IO_CONTROL, wire.IOCTL.pack(int(h.Detach()), 0x226000, 0, 8, 0, 0, 0),
                            wire.FLAG_OVERLAPPED)[1])
import time
deadline = time.monotonic() + 30      # (a bound on the test, not a timing claim)
while len([s for s in slots if s.done]) < 6 and time.monotonic() < deadline:
    conn.wait(slots[0], timeout=0.05)
print(sorted(hex(s.status) for s in slots if s.done), flush=True)
sys.stdin.readline()
""", stdin=__import__("subprocess").PIPE)
    line = p.stdout.readline().strip()
    assert line == str([hex(0xC0000001)] * 6), (line, p.stderr.read() if p.poll() is not None else "")
    assert kernel_threads(shm) <= threads_before + 64 + MAX_SPARE + 4
    assert "64 upcalls unanswered" in shm.log()
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.wait(timeout=60) == 0
    # (the ring poller keeps up to MAX_SPARE parked threads for its next handoffs)
    assert wait_until(lambda: kernel_threads(shm) <= threads_before + MAX_SPARE + 4, timeout=30)
    assert wait_until(lambda: pool_in_use(shm) == 0, timeout=30)
    assert shm.call("kernel.info")["mdls"] == 0


def test_an_upcall_the_program_never_answers_fails_the_mapping_in_the_end(shm):
    """(It takes UPCALL_TIMEOUT, 10 s: the one slow test of this file.)"""
    r = shm.run("""
import os
from ringzero import client
from ringzero.win32 import win32file, win32con, pywintypes
client.Connection._map_view = lambda self, f: [os.close(fd) for fd in f.fds]     # never answers
h = win32file.CreateFile(r"\\\\.\\slSharingMemory", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
try:
    win32file.DeviceIoControl(h, 0x226000, None, 8)
    print("mapped")
except pywintypes.error as e:
    print("refused", e.winerror)
h.Close()
""", timeout=120)
    assert r.stdout.strip() == f"refused {winerror.ERROR_GEN_FAILURE}"
    assert "did not answer a MAP_VIEW in 10 s" in shm.log()
    assert wait_until(lambda: pool_in_use(shm) == 0, timeout=30)
    assert shm.call("kernel.info")["mdls"] == 0
