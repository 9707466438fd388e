"""Dying programs: programs killed with kill -9 at random moments (while
opening, mid-request, with pending IRPs on the recorder, with SharingMemory
views mapped); afterwards nothing of theirs is left in the kernel and the
recorder saw exactly one CLEANUP and one CLOSE per file object.

`make test` kills RINGZERO_SOAK_CASES programs (default 30).
"""

import os
import random
import signal
import struct
import subprocess
import sys

from conftest import TEST_DRIVERS, wait_until
from ringzero import client
from ringzero.win32 import win32con, win32file

sys.path.insert(0, TEST_DRIVERS)
import recorder as R  # noqa: E402

RECORDER = os.path.join(TEST_DRIVERS, "recorder.py")
CASES = int(os.environ.get("RINGZERO_SOAK_CASES", "30"))
SEED = int(os.environ.get("RINGZERO_SOAK_SEED", "0")) or random.randrange(1 << 30)
WAVE = 5

PROGRAM = f"""
import struct, sys
sys.path.insert(0, {TEST_DRIVERS!r})
from ringzero.win32 import win32file, win32event, win32con, pywintypes
import recorder as R
def open_rec(flags=0):
    return win32file.CreateFile(r"\\\\.\\Recorder", win32con.GENERIC_READ | win32con.GENERIC_WRITE, 0, None,
                                win32con.OPEN_EXISTING, flags, None)
hs = [open_rec(), open_rec()]
ov_h = open_rec(win32con.FILE_FLAG_OVERLAPPED)
ovs = []
for _ in range(3):
    ov = pywintypes.OVERLAPPED()
    ov.hEvent = win32event.CreateEvent(None, True, False, None)
    win32file.DeviceIoControl(ov_h, R.IOCTL_PEND, None, 0, ov)
    ovs.append(ov)
shm = win32file.CreateFile(r"\\\\.\\slSharingMemory", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
addr = struct.unpack("<Q", win32file.DeviceIoControl(shm, 0x226000, None, 8))[0]
print("ready", flush=True)
i = 0
while True:
    win32file.DeviceIoControl(hs[i % 2], R.IOCTL_FILL, struct.pack("<IIB", 64, 0, i % 256), 256)
    h = open_rec()
    win32file.DeviceIoControl(h, R.IOCTL_WHOAMI, None, 16)
    h.Close()
    i += 1
"""


def kernel_fds(k):
    return len(os.listdir(f"/proc/{k.pid}/fd"))


def pool_bytes(k):
    return sum(r["bytes"] for r in k.call("pool.stats"))


def test_programs_killed_at_random_moments_leave_nothing(kernel, capsys):
    kernel.load(RECORDER, "Recorder")
    kernel.load("ringzero.drivers.sharingmemory", "SharingMemory")
    query = win32file.CreateFile(r"\\.\Recorder", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
    base = {"processes": kernel.call("kernel.info")["processes"], "fds": kernel_fds(kernel),
            "pool": pool_bytes(kernel)}
    rng = random.Random(SEED)
    killed = ready_when_killed = 0
    while killed < CASES:
        wave = [kernel.spawn(PROGRAM) for _ in range(min(WAVE, CASES - killed))]
        for p in wave:
            # a third die at a random moment of their start (connecting, opening, pending,
            # mapping); the rest once set up, mid-request after a random delay
            if rng.random() < 1 / 3:
                try:
                    p.wait(timeout=rng.uniform(0.05, 0.6))
                except subprocess.TimeoutExpired:
                    pass
            else:
                assert p.stdout.readline().strip() == "ready", p.stderr.read()
                ready_when_killed += 1
                try:
                    p.wait(timeout=rng.uniform(0, 0.2))
                except subprocess.TimeoutExpired:
                    pass
            assert p.poll() is None, p.stderr.read()
            os.kill(p.pid, signal.SIGKILL)
            killed += 1
        for p in wave:
            p.wait(timeout=30)
            p.stdout.close()
            p.stderr.close()

    # everything of theirs is gone
    assert wait_until(lambda: kernel.call("kernel.info")["processes"] == base["processes"], timeout=60)
    others = [p for p in kernel.call("handles.list") if p["pid"] != os.getpid()]
    mine = [p for p in kernel.call("handles.list") if p["pid"] == os.getpid()]
    assert others == []
    assert mine[0]["pending_irps"] == 0 and mine[0]["views"] == 0
    assert wait_until(lambda: pool_bytes(kernel) == base["pool"], timeout=30)
    assert kernel.call("kernel.info")["mdls"] == 0
    assert wait_until(lambda: kernel_fds(kernel) <= base["fds"], timeout=30)
    creates, cleanups, closes, open_files = struct.unpack("<IIII", win32file.DeviceIoControl(query, R.IOCTL_COUNTS,
                                                                                             None, 16))
    # only this test's own handle is still open; each other file object got one cleanup, one close
    assert open_files == 1 and cleanups == creates - 1 and closes == creates - 1
    assert struct.unpack("<III", win32file.DeviceIoControl(query, R.IOCTL_ANOMALIES, None, 12)) == (0, 0, 0)
    faults = [r["text"] for r in kernel.call("dbg.recent", count=4096) if r["level"] in ("fault", "leak")]
    assert faults == []
    query.Close()
    with capsys.disabled():
        print(f"\nsoak (seed {SEED}): {killed} programs killed with kill -9 ({ready_when_killed} mid-request with "
              f"3 pending IRPs and a mapped view, {killed - ready_when_killed} while starting); "
              f"{creates - 1} file objects, each with 1 CLEANUP and 1 CLOSE; processes, handles, pending IRPs, "
              f"views, pool, MDLs and fds leaked: 0")
