"""A test driver with fast I/O routines, to check how the I/O manager calls them.

\\Device\\FastIo (link \\??\\FastIo), DO_BUFFERED_IO.  Its IRP_MJ_READ fills the
buffer with b"I" and its IRP_MJ_WRITE takes everything; its FastIoRead and
FastIoWrite do what the mode set by IOCTL_SET_MODE ("<II" mode, and whether
later opens set PrivateCacheMap) says.  Every call is logged, and IOCTL_LOG
returns the log (JSON) and clears it.

FAST      read fills Buffer with b"F", write takes it all: TRUE, STATUS_SUCCESS
DECLINE   FALSE
UNTAKEN   TRUE with STATUS_MORE_ENTRIES, a status the I/O manager does not take
RAISE     the routine raises (a driver bug)
EOF       TRUE with STATUS_END_OF_FILE
OVERFLOW  TRUE with STATUS_BUFFER_OVERFLOW, half the buffer filled
TOO_MUCH  TRUE with Information 100 bytes past the buffer
NOT_BOOL  returns None (forgot its return)
PEEK      read writes nothing and answers with what Buffer held (a driver bug:
          it shows what a driver may see in a fast read's Buffer); write as FAST
"""

import json
import struct

from ringzero.ddk import *

DEV = FILE_DEVICE_UNKNOWN
IOCTL_SET_MODE = CTL_CODE(DEV, 0x900, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_LOG = CTL_CODE(DEV, 0x901, METHOD_BUFFERED, FILE_ANY_ACCESS)
FAST, DECLINE, UNTAKEN, RAISE, EOF, OVERFLOW, TOO_MUCH, NOT_BOOL, PEEK = range(9)
STATUS_MORE_ENTRIES = 0x00000105

state = {"mode": FAST, "cache_map": 1}
log = []


def _shown(data) -> str:
    """Written data as the log shows it: whole when short, else its size and first byte."""
    data = bytes(data)
    return data.decode("latin-1") if len(data) < 64 else f"{len(data)} bytes, {data[:1]!r}..."


def _complete(Irp, status, info=0):
    Irp.IoStatus.Status = status
    Irp.IoStatus.Information = info
    IoCompleteRequest(Irp, IO_NO_INCREMENT)
    return status


def DispatchCreate(DeviceObject, Irp):
    if state["cache_map"]:
        IoGetCurrentIrpStackLocation(Irp).FileObject.PrivateCacheMap = 1
    return _complete(Irp, STATUS_SUCCESS)


def DispatchSimple(DeviceObject, Irp):
    return _complete(Irp, STATUS_SUCCESS)


def DispatchRead(DeviceObject, Irp):
    n = IoGetCurrentIrpStackLocation(Irp).Parameters.Read.Length
    Irp.AssociatedIrp.SystemBuffer[:n] = b"I" * n
    log.append(["irp-read", n])
    return _complete(Irp, STATUS_SUCCESS, n)


def DispatchWrite(DeviceObject, Irp):
    n = IoGetCurrentIrpStackLocation(Irp).Parameters.Write.Length
    log.append(["irp-write", _shown(Irp.AssociatedIrp.SystemBuffer[:n])])
    return _complete(Irp, STATUS_SUCCESS, n)


def FastRead(FileObject, FileOffset, Length, Wait, LockKey, Buffer, IoStatus, DeviceObject):
    mode = state["mode"]
    log.append(["fast-read", Length, Wait, KeGetCurrentIrql(), PsGetCurrentProcessId(), len(Buffer)])
    if mode == DECLINE:
        return FALSE
    if mode == RAISE:
        raise ZeroDivisionError("a bug in the fastio driver's FastIoRead")
    if mode == NOT_BOOL:
        return None
    n = Length // 2 if mode == OVERFLOW else Length
    if mode != PEEK:
        Buffer[:n] = b"F" * n
    IoStatus.Status = {UNTAKEN: STATUS_MORE_ENTRIES, EOF: STATUS_END_OF_FILE,
                       OVERFLOW: STATUS_BUFFER_OVERFLOW}.get(mode, STATUS_SUCCESS)
    IoStatus.Information = 0 if mode == EOF else n + 100 if mode == TOO_MUCH else n
    return TRUE


def FastWrite(FileObject, FileOffset, Length, Wait, LockKey, Buffer, IoStatus, DeviceObject):
    mode = state["mode"]
    log.append(["fast-write", _shown(Buffer[:Length]), Wait, KeGetCurrentIrql()])
    if mode == DECLINE:
        return FALSE
    if mode == RAISE:
        raise ZeroDivisionError("a bug in the fastio driver's FastIoWrite")
    if mode == NOT_BOOL:
        return None
    IoStatus.Status = STATUS_MORE_ENTRIES if mode == UNTAKEN else STATUS_SUCCESS
    IoStatus.Information = Length
    return TRUE


def DispatchControl(DeviceObject, Irp):
    p = IoGetCurrentIrpStackLocation(Irp).Parameters.DeviceIoControl
    buf = Irp.AssociatedIrp.SystemBuffer
    if p.IoControlCode == IOCTL_SET_MODE:
        state["mode"], state["cache_map"] = struct.unpack_from("<II", buf)
        return _complete(Irp, STATUS_SUCCESS)
    if p.IoControlCode == IOCTL_LOG:
        out = json.dumps(log).encode()
        log.clear()
        if len(out) > p.OutputBufferLength:
            return _complete(Irp, STATUS_BUFFER_TOO_SMALL)
        buf[:len(out)] = out
        return _complete(Irp, STATUS_SUCCESS, len(out))
    return _complete(Irp, STATUS_INVALID_DEVICE_REQUEST)


def DriverUnload(DriverObject):
    IoDeleteSymbolicLink(r"\??\FastIo")
    IoDeleteDevice(DriverObject.DeviceObject)


def DriverEntry(DriverObject, RegistryPath):
    status, dev = IoCreateDevice(DriverObject, 0, r"\Device\FastIo", FILE_DEVICE_UNKNOWN, 0, False)
    if not NT_SUCCESS(status):
        return status
    IoCreateSymbolicLink(r"\??\FastIo", r"\Device\FastIo")
    DriverObject.MajorFunction[IRP_MJ_CREATE] = DispatchCreate
    DriverObject.MajorFunction[IRP_MJ_CLEANUP] = DispatchSimple
    DriverObject.MajorFunction[IRP_MJ_CLOSE] = DispatchSimple
    DriverObject.MajorFunction[IRP_MJ_READ] = DispatchRead
    DriverObject.MajorFunction[IRP_MJ_WRITE] = DispatchWrite
    DriverObject.MajorFunction[IRP_MJ_DEVICE_CONTROL] = DispatchControl
    DriverObject.DriverUnload = DriverUnload
    fast = FAST_IO_DISPATCH()
    fast.SizeOfFastIoDispatch = sizeof(FAST_IO_DISPATCH)
    fast.FastIoRead = FastRead
    fast.FastIoWrite = FastWrite
    DriverObject.FastIoDispatch = fast
    dev.Flags |= DO_BUFFERED_IO
    dev.Flags &= ~DO_DEVICE_INITIALIZING
    return STATUS_SUCCESS
