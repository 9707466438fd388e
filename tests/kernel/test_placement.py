"""A program about to spin on the CPU the kernel's ring thread runs on moves
itself to another CPU it may use, its affinity mask left as it was."""

import os
import struct

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
    try:
        for tid in os.listdir(f"/proc/{kernel.pid}/task"):     # the kernel's threads, its ring thread among them
            os.sched_setaffinity(int(tid), {home})
        os.sched_setaffinity(0, {home})                          # and this thread beside them...
        os.sched_setaffinity(0, mine)                            # ...free to go elsewhere, but there now
        assert rings.current_cpu() == home
        moved = False
        for _ in range(200):
            win32file.DeviceIoControl(h, IOCTL_ECHO, struct.pack("<Q", 7), 8)
            if conn.resp_ring.kernel_cpu() == home + 1 and rings.current_cpu() != home:
                moved = True
                break
        assert moved, "the program stayed on the kernel's CPU"
        assert os.sched_getaffinity(0) == mine                   # its own mask, as it was
    finally:
        os.sched_setaffinity(0, mine)
        for tid in os.listdir(f"/proc/{kernel.pid}/task"):
            try:
                os.sched_setaffinity(int(tid), mine)
            except OSError:
                pass
        h.Close()
