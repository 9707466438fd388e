"""The Example driver's pipe as the kernel tests use it: a fixture-ready loader,
a handle on one name, and its IOCTLs."""

import struct

from ringzero.drivers.example_ioctl import (EXAMPLE_BLOCKING_READS, EXAMPLE_QUERY_INFORMATION, IOCTL_EXAMPLE_QUERY,
                                            IOCTL_EXAMPLE_SET_BLOCKING)
from ringzero.win32 import win32file


def load(kernel):
    kernel.load("ringzero.drivers.example", "Example")
    return kernel


def opener(path: str):
    """pipe(flags=0): a new handle, for reading and writing, on \\\\.\\Example\\NAME at `path`."""
    def pipe(flags: int = 0):
        return win32file.CreateFile(path, win32file.GENERIC_READ | win32file.GENERIC_WRITE, 0, None,
                                    win32file.OPEN_EXISTING, flags, None)
    return pipe


def set_blocking(h, flags: int = EXAMPLE_BLOCKING_READS) -> None:
    win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_BLOCKING, struct.pack("<I", flags), 0)


def query(h) -> EXAMPLE_QUERY_INFORMATION:
    out = win32file.DeviceIoControl(h, IOCTL_EXAMPLE_QUERY, None, 64)
    return EXAMPLE_QUERY_INFORMATION.from_buffer_copy(out)
