"""PRMonitor's interface, shared by the driver and the programs: device name,
IOCTL codes and the layout of the records GETINFO and WAITINFO return.

Programs import this without importing the driver (which needs a kernel).

IOCTL_STARTHOOK  in: the program's event HANDLE (8 bytes, as sizeof(HANDLE) on
                 x64).  From then on this handle's queue collects a record per
                 process created or exited, and the driver sets the event
                 each time it queues one.  A second STARTHOOK on the same
                 handle replaces the event.
IOCTL_GETINFO    out: the oldest queued record.  STATUS_NO_MORE_ENTRIES
                 (ERROR_NO_MORE_ITEMS) when the queue is empty; with a buffer
                 shorter than the record, STATUS_BUFFER_OVERFLOW
                 (ERROR_MORE_DATA) and the header alone, whose Size says how
                 much room the record needs; it stays queued.
IOCTL_WAITINFO   out: like GETINFO, but when the queue is empty the request
                 pends until a record arrives (the inverted call).  Any
                 number may be outstanding; they complete oldest first.
                 The first WAITINFO on a handle starts its monitoring, as
                 STARTHOOK does.

A record (little-endian):

    offset size  field
     0     4     Size                   bytes in the whole record
     4     4     Type                   PRM_PROCESS_CREATE or PRM_PROCESS_EXIT
     8     4     Flags                  PRM_FLAG_*
    12     4     ProcessId
    16     4     ParentProcessId
    20     4     ExitStatus             exit: the exit code, or minus the killing signal
    24     8     Time                   create: when the process was created (its fork);
                                        exit: when the driver was told; NT system time
                                        (100 ns units since 1601-01-01 UTC)
    32     8     Sequence               this handle's record number, from 1; every record
                                        the handle was offered counts, kept or dropped
    40     4     Dropped                records this handle lost to a full queue between
                                        the record returned before this one and this one
    44     2     ImageFileNameLength    bytes
    46     2     CommandLineLength      bytes
    48     ...   ImageFileName, then CommandLine: UTF-8, no terminating NUL

A handle's queue holds PRM_QUEUE_DEPTH records; when it is full the oldest is
dropped, so Sequence numbers of the records a program reads are consecutive
except where Dropped says how many are missing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ringzero.nt.ioctl import CTL_CODE, FILE_DEVICE_UNKNOWN, FILE_READ_ACCESS, METHOD_BUFFERED

DEVICE_NAME = r"\Device\PRMonitor"
SYMBOLIC_LINK = r"\??\PRMonitor"
DOS_NAME = r"\\.\PRMonitor"
SERVICE_NAME = "PRMonitor"
DRIVER_MODULE = "ringzero.drivers.prmonitor"

IOCTL_STARTHOOK = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS)
IOCTL_GETINFO = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x801, METHOD_BUFFERED, FILE_READ_ACCESS)
IOCTL_WAITINFO = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x802, METHOD_BUFFERED, FILE_READ_ACCESS)

PRM_PROCESS_CREATE = 1
PRM_PROCESS_EXIT = 2

PRM_FLAG_FULL_IMAGE_NAME = 0x1      # ImageFileName is the executable's full path (else its task name)
PRM_FLAG_IMAGE_TRUNCATED = 0x2
PRM_FLAG_COMMAND_LINE_TRUNCATED = 0x4

PRM_HEADER = struct.Struct("<IIIIIiqqIHH")
PRM_HEADER_SIZE = PRM_HEADER.size           # 48
PRM_SEQUENCE_OFFSET = 32
PRM_DROPPED_OFFSET = 40
PRM_MAX_IMAGE = 1024
PRM_MAX_COMMAND_LINE = 4096
PRM_MAX_RECORD = PRM_HEADER_SIZE + PRM_MAX_IMAGE + PRM_MAX_COMMAND_LINE
PRM_QUEUE_DEPTH = 256
HANDLE_SIZE = 8

assert PRM_HEADER_SIZE == 48


def pack_handle(handle) -> bytes:
    """STARTHOOK's input: the event handle as a HANDLE-sized value."""
    return struct.pack("<Q", int(handle))


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    size: int
    type: int
    flags: int
    pid: int
    parent_pid: int
    exit_status: int
    time: int
    sequence: int
    dropped: int
    image: str
    command_line: str

    @property
    def created(self) -> bool:
        return self.type == PRM_PROCESS_CREATE

    @property
    def exited(self) -> bool:
        return self.type == PRM_PROCESS_EXIT


def parse_header(data) -> tuple:
    """The header's fields, in the order of the layout above."""
    if len(data) < PRM_HEADER_SIZE:
        raise ValueError(f"a PRMonitor record is at least {PRM_HEADER_SIZE} bytes, got {len(data)}")
    return PRM_HEADER.unpack_from(data)


def parse_record(data) -> ProcessRecord:
    """A whole record as GETINFO/WAITINFO returned it."""
    (size, type_, flags, pid, ppid, exit_status, time_, seq, dropped,
     image_len, cmd_len) = parse_header(data)
    if len(data) < size or size != PRM_HEADER_SIZE + image_len + cmd_len:
        raise ValueError(f"truncated PRMonitor record: {len(data)} of {size} bytes")
    view = bytes(data[PRM_HEADER_SIZE:size])
    image = view[:image_len].decode("utf-8", "replace")
    command_line = view[image_len:].decode("utf-8", "replace")
    return ProcessRecord(size, type_, flags, pid, ppid, exit_status, time_, seq, dropped, image, command_line)


def build_record(type_: int, pid: int, parent_pid: int, exit_status: int, time_: int, image: str,
                 command_line: str, flags: int = 0) -> bytearray:
    """A record with Sequence and Dropped left 0 (the driver fills them per
    handle); strings cut to their limits on a character boundary."""
    image_b, cut_image = _cut(image, PRM_MAX_IMAGE)
    cmd_b, cut_cmd = _cut(command_line, PRM_MAX_COMMAND_LINE)
    flags |= (PRM_FLAG_IMAGE_TRUNCATED if cut_image else 0) | (PRM_FLAG_COMMAND_LINE_TRUNCATED if cut_cmd else 0)
    size = PRM_HEADER_SIZE + len(image_b) + len(cmd_b)
    out = bytearray(size)
    PRM_HEADER.pack_into(out, 0, size, type_, flags, pid & 0xFFFFFFFF, parent_pid & 0xFFFFFFFF, exit_status,
                         time_, 0, 0, len(image_b), len(cmd_b))
    out[PRM_HEADER_SIZE:] = image_b + cmd_b
    return out


def _cut(text: str, limit: int) -> tuple[bytes, bool]:
    raw = (text or "").encode("utf-8", "replace")
    if len(raw) <= limit:
        return raw, False
    return raw[:limit].decode("utf-8", "ignore").encode("utf-8"), True
