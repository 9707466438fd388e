"""What the Example driver and its programs share: the I/O control codes and
the QUERY result (the C project's public header, included by both sides).

    from ringzero.drivers.example_ioctl import *

IOCTL_EXAMPLE_SET_SIZE       in:  ULONG new ring-buffer size of this handle's
                                  context, 1 .. EXAMPLE_MAX_BUFFER_SIZE bytes;
                                  the queued bytes are kept (STATUS_BUFFER_TOO_SMALL
                                  if more are queued than the new size holds)
IOCTL_EXAMPLE_QUERY          in:  nothing, for this handle's context, or a name
                                  (UTF-16LE, "\\HELLO" or "HELLO") for that one
                             out: EXAMPLE_QUERY_INFORMATION
IOCTL_EXAMPLE_SET_BLOCKING   in:  ULONG flags for this handle: EXAMPLE_BLOCKING_READS
                                  makes a read of an empty buffer wait for data,
                                  EXAMPLE_BLOCKING_WRITES makes a write that does
                                  not fit wait until all of it is stored; 0 makes
                                  reads and writes return at once again
"""

from __future__ import annotations

import ctypes

from ringzero.nt.ioctl import CTL_CODE, FILE_ANY_ACCESS, FILE_DEVICE_UNKNOWN, FILE_READ_ACCESS, FILE_WRITE_ACCESS, METHOD_BUFFERED

__all__ = ["IOCTL_EXAMPLE_SET_SIZE", "IOCTL_EXAMPLE_QUERY", "IOCTL_EXAMPLE_SET_BLOCKING", "EXAMPLE_QUERY_INFORMATION",
           "EXAMPLE_BLOCKING_READS", "EXAMPLE_BLOCKING_WRITES", "EXAMPLE_DEFAULT_BUFFER_SIZE", "EXAMPLE_MAX_BUFFER_SIZE", "query_name"]

IOCTL_EXAMPLE_SET_SIZE = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x810, METHOD_BUFFERED, FILE_WRITE_ACCESS)
IOCTL_EXAMPLE_QUERY = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x811, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_EXAMPLE_SET_BLOCKING = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x812, METHOD_BUFFERED, FILE_READ_ACCESS)

EXAMPLE_BLOCKING_READS = 0x00000001
EXAMPLE_BLOCKING_WRITES = 0x00000002

EXAMPLE_DEFAULT_BUFFER_SIZE = 4096
EXAMPLE_MAX_BUFFER_SIZE = 16 * 1024 * 1024


class EXAMPLE_QUERY_INFORMATION(ctypes.LittleEndianStructure):
    """IOCTL_EXAMPLE_QUERY's output.  For a name that has no context, every
    field but ContextCount is 0: nothing references it and it has no buffer."""

    _fields_ = [
        ("BufferSize", ctypes.c_uint32),      # the context's ring-buffer size
        ("BytesQueued", ctypes.c_uint32),     # written and not yet read
        ("ReferenceCount", ctypes.c_uint32),  # uiRefCount: file objects open on the context
        ("ContextCount", ctypes.c_uint32),    # contexts on the device's list
        ("PendingReads", ctypes.c_uint32),    # blocking reads waiting for data
        ("Flags", ctypes.c_uint32),           # this handle's EXAMPLE_* flags (0 for a named query)
        ("PendingWrites", ctypes.c_uint32),   # blocking writes waiting for room
    ]

    def __repr__(self) -> str:
        return "EXAMPLE_QUERY_INFORMATION(" + ", ".join(f"{n}={getattr(self, n)}" for n, _ in self._fields_) + ")"


def query_name(name: str) -> bytes:
    """IOCTL_EXAMPLE_QUERY's input naming a context, as a C program passes a WCHAR string."""
    return name.encode("utf-16-le")
