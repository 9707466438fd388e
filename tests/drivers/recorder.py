"""A test driver that records what the I/O manager sends it.

\\Device\\Recorder (link \\??\\Recorder).  Every IRP_MJ_CREATE / CLEANUP / CLOSE is
counted per file object and in total; IOCTLs let a test steer completion:

IOCTL_COUNTS      -> "<IIII" creates, cleanups, closes, open file objects
IOCTL_FILL        in: "<IIB" information, status, fill byte; fills the whole
                  SystemBuffer with the byte, sets IoStatus to (status, information)
IOCTL_PEND        pends until cancelled (cancel routine) or IOCTL_COMPLETE_ALL; while
                  pending, the IRP's Tail.Overlay.DriverContext holds the driver's own values
IOCTL_COMPLETE_ALL completes every pended IRP with STATUS_SUCCESS, out "<I" count
IOCTL_WHOAMI      out "<QQ" PsGetCurrentProcessId, IoGetRequestorProcessId (and, given 24
                  bytes, "<QQQ" with PsGetCurrentThreadId)
IOCTL_SET_EVENT   in "<Q" a handle of the caller's; ObReferenceObjectByHandle(UserMode) + KeSetEvent
IOCTL_RAISE       the dispatch routine raises (a driver bug)
IOCTL_ANOMALIES   out "<III" file objects with more than one CLEANUP, with more than
                  one CLOSE, and closed without a CLEANUP
"""

import struct

from ringzero.ddk import *

DEV = FILE_DEVICE_UNKNOWN
IOCTL_COUNTS = CTL_CODE(DEV, 0x900, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_FILL = CTL_CODE(DEV, 0x901, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_PEND = CTL_CODE(DEV, 0x902, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_COMPLETE_ALL = CTL_CODE(DEV, 0x903, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_WHOAMI = CTL_CODE(DEV, 0x904, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_SET_EVENT = CTL_CODE(DEV, 0x905, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_RAISE = CTL_CODE(DEV, 0x906, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_NEEDS_WRITE = CTL_CODE(DEV, 0x907, METHOD_BUFFERED, FILE_WRITE_ACCESS)
IOCTL_ANOMALIES = CTL_CODE(DEV, 0x908, METHOD_BUFFERED, FILE_ANY_ACCESS)

counts = {"create": 0, "cleanup": 0, "close": 0}
per_file = {}          # the file object's serial (in FsContext2) -> [cleanups, closes]
pended = []
lock = KMUTEX()


def _complete(Irp, status, info=0):
    Irp.IoStatus.Status = status
    Irp.IoStatus.Information = info
    IoCompleteRequest(Irp, IO_NO_INCREMENT)
    return status


def DispatchCreate(DeviceObject, Irp):
    fo = IoGetCurrentIrpStackLocation(Irp).FileObject
    counts["create"] += 1
    fo.FsContext2 = counts["create"]
    per_file[fo.FsContext2] = [0, 0]
    return _complete(Irp, STATUS_SUCCESS)


def DispatchCleanup(DeviceObject, Irp):
    fo = IoGetCurrentIrpStackLocation(Irp).FileObject
    counts["cleanup"] += 1
    per_file[fo.FsContext2][0] += 1
    DbgPrint("recorder: cleanup pid %d", PsGetCurrentProcessId())
    return _complete(Irp, STATUS_SUCCESS)


def DispatchClose(DeviceObject, Irp):
    fo = IoGetCurrentIrpStackLocation(Irp).FileObject
    counts["close"] += 1
    per_file[fo.FsContext2][1] += 1
    return _complete(Irp, STATUS_SUCCESS)


def CancelPended(DeviceObject, Irp):
    IoReleaseCancelSpinLock(Irp.CancelIrql)
    KeWaitForMutexObject(lock, Executive, KernelMode, False, None)
    if Irp in pended:
        pended.remove(Irp)
    KeReleaseMutex(lock, False)
    DbgPrint("recorder: cancelled an IRP of pid %d at IRQL %d", IoGetRequestorProcessId(Irp), KeGetCurrentIrql())
    _complete(Irp, STATUS_CANCELLED)


def DispatchControl(DeviceObject, Irp):
    sl = IoGetCurrentIrpStackLocation(Irp)
    p = sl.Parameters.DeviceIoControl
    buf = Irp.AssociatedIrp.SystemBuffer
    code = p.IoControlCode
    if code == IOCTL_COUNTS:
        open_files = sum(1 for c in per_file.values() if c[1] == 0)
        struct.pack_into("<IIII", buf, 0, counts["create"], counts["cleanup"], counts["close"], open_files)
        return _complete(Irp, STATUS_SUCCESS, 16)
    if code == IOCTL_FILL:
        info, status, fill = struct.unpack_from("<IIB", buf)
        n = len(buf) if buf is not None else 0
        if n:
            buf[:] = bytes([fill]) * n
        return _complete(Irp, status, info)
    if code == IOCTL_PEND:
        KeWaitForMutexObject(lock, Executive, KernelMode, False, None)
        IoMarkIrpPending(Irp)
        IoSetCancelRoutine(Irp, CancelPended)
        if Irp.Cancel and IoSetCancelRoutine(Irp, None) is not None:
            KeReleaseMutex(lock, False)
            _complete(Irp, STATUS_CANCELLED)
            return STATUS_PENDING
        # while it owns the IRP, DriverContext is the driver's: keep our queue's
        # bookkeeping in all four entries, as a cancel-safe queue does
        Irp.Tail.Overlay.DriverContext[:] = [DeviceObject, "recorder queue", len(pended), CancelPended]
        pended.append(Irp)
        KeReleaseMutex(lock, False)
        return STATUS_PENDING
    if code == IOCTL_COMPLETE_ALL:
        KeWaitForMutexObject(lock, Executive, KernelMode, False, None)
        mine = [i for i in pended if IoSetCancelRoutine(i, None) is not None]
        pended.clear()
        KeReleaseMutex(lock, False)
        for i in mine:
            _complete(i, STATUS_SUCCESS)
        struct.pack_into("<I", buf, 0, len(mine))
        return _complete(Irp, STATUS_SUCCESS, 4)
    if code == IOCTL_WHOAMI:
        struct.pack_into("<QQ", buf, 0, PsGetCurrentProcessId(), IoGetRequestorProcessId(Irp))
        if p.OutputBufferLength >= 24:
            struct.pack_into("<Q", buf, 16, PsGetCurrentThreadId())
            return _complete(Irp, STATUS_SUCCESS, 24)
        return _complete(Irp, STATUS_SUCCESS, 16)
    if code == IOCTL_SET_EVENT:
        if p.InputBufferLength < 8:
            return _complete(Irp, STATUS_INVALID_BUFFER_SIZE)
        (handle,) = struct.unpack_from("<Q", buf)
        status, ev, _ = ObReferenceObjectByHandle(handle, EVENT_MODIFY_STATE, ExEventObjectType, UserMode)
        if NT_SUCCESS(status):
            KeSetEvent(ev, 0, False)
            ObDereferenceObject(ev)
        return _complete(Irp, status)
    if code == IOCTL_RAISE:
        raise ZeroDivisionError("a bug in the recorder driver")
    if code == IOCTL_ANOMALIES:
        files = list(per_file.values())
        struct.pack_into("<III", buf, 0, sum(1 for c in files if c[0] > 1), sum(1 for c in files if c[1] > 1),
                         sum(1 for c in files if c[1] and not c[0]))
        return _complete(Irp, STATUS_SUCCESS, 12)
    if code == IOCTL_NEEDS_WRITE:
        return _complete(Irp, STATUS_SUCCESS)
    return _complete(Irp, STATUS_INVALID_DEVICE_REQUEST)


def DriverUnload(DriverObject):
    IoDeleteSymbolicLink(r"\??\Recorder")
    IoDeleteDevice(DriverObject.DeviceObject)


def DriverEntry(DriverObject, RegistryPath):
    KeInitializeMutex(lock, 0)
    status, dev = IoCreateDevice(DriverObject, 0, r"\Device\Recorder", FILE_DEVICE_UNKNOWN, 0, False)
    if not NT_SUCCESS(status):
        return status
    IoCreateSymbolicLink(r"\??\Recorder", r"\Device\Recorder")
    DriverObject.MajorFunction[IRP_MJ_CREATE] = DispatchCreate
    DriverObject.MajorFunction[IRP_MJ_CLEANUP] = DispatchCleanup
    DriverObject.MajorFunction[IRP_MJ_CLOSE] = DispatchClose
    DriverObject.MajorFunction[IRP_MJ_DEVICE_CONTROL] = DispatchControl
    DriverObject.DriverUnload = DriverUnload
    return STATUS_SUCCESS
