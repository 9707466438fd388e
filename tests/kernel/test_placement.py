"""A program about to spin on the CPU the kernel's ring thread runs on moves
itself to another CPU it may use, its affinity mask left as it was."""

import os
import struct
import time

import pytest

from ringzero import client
from ringzero.drivers.echo import IOCTL_ECHO
from ringzero.protocol import ring as rings
from ringzero.win32 import win32con, win32file

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to move between")


def test_a_program_waiting_on_the_kernels_cpu_moves_off_it(kernel):
    cpus = sorted(os.sched_getaffinity(0))
    home = cpus[0]
    h = win32file.CreateFile(r"\\.\Echo", win32con.GENERIC_READ | win32con.GENERIC_WRITE, 0, None,
                             win32con.OPEN_EXISTING, 0, None)
    conn = client.connection()
    assert conn.resp_ring is not None
    mine = set(cpus)
    # Where this thread runs right after each change of its own mask: Linux moves
    # a thread whose CPU the new mask leaves out before the call returns, so this
    # is the move itself, whatever the scheduler does with the thread afterwards
    # (on a loaded machine it may well bring it back to the kernel's CPU).
    set_affinity = os.sched_setaffinity
    landed = []

    def recording(pid, mask):
        set_affinity(pid, mask)
        if pid == 0:
            landed.append((set(mask), rings.current_cpu()))

    try:
        for tid in os.listdir(f"/proc/{kernel.pid}/task"):     # the kernel's threads, its ring thread among them
            set_affinity(int(tid), {home})
        set_affinity(0, {home})                                  # and this thread beside them...
        set_affinity(0, mine)                                    # ...free to go elsewhere, but there now
        assert rings.current_cpu() == home
        os.sched_setaffinity = recording
        deadline = time.monotonic() + 10      # a bound on the test, not a timing claim
        while time.monotonic() < deadline:
            win32file.DeviceIoControl(h, IOCTL_ECHO, struct.pack("<Q", 7), 8)
            if any(home not in mask for mask, _ in landed):
                break
        os.sched_setaffinity = set_affinity
        assert landed, "the program never moved off the kernel's CPU"
        narrowed, cpu = landed[0]
        assert narrowed == mine - {home}, "it left out the kernel's CPU, and only that"
        assert cpu != home, "and the program was elsewhere when the call returned"
        assert landed[1][0] == mine                              # its own mask at once again
        assert os.sched_getaffinity(0) == mine
    finally:
        os.sched_setaffinity = set_affinity
        set_affinity(0, mine)
        for tid in os.listdir(f"/proc/{kernel.pid}/task"):
            try:
                set_affinity(int(tid), mine)
            except OSError:
                pass
        h.Close()
