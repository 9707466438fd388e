"""PRMonitor: tells programs about every process started and exited on the machine.

The seed (a 2009 tutorial on synchronising a driver with its program): the
program creates an event and passes its handle with IOCTL_STARTHOOK; the
driver references it with ObReferenceObjectByHandle and, wherever it observes
something (here: a process being created), calls KeSetEvent; the program
wakes from WaitForSingleObject, asks for the data with IOCTL_GETINFO, prints
it and resets the event.  The observation comes from a
PsSetCreateProcessNotifyRoutineEx routine, which ringzero feeds from the Linux
process-events connector.

The seed's defects, each fixed where the code is (search for "Seed:"):

1. It references the program's handle with KernelMode and no object type, so
   any handle value (a kernel handle, a file handle) is accepted without an
   access check, and KeSetEvent then writes into whatever object it named.
2. Its statuses are overwritten with STATUS_SUCCESS at the end of DevDispatch,
   so a short input buffer "succeeds".
3. It never dereferences the event object.
4. One global gpEventObject and one global output string serve every
   program: the next STARTHOOK replaces the event, the next process
   overwrites the text before the program read it.
5. GETINFO copies sizeof(output) bytes whatever OutputBufferLength is (an
   overflow of the system buffer) and reports OutputBufferLength as written.
6. It never removes its notify routine (after unload NT would call freed code).

Beyond the seed, IOCTL_WAITINFO is the inverted call: the program keeps
requests pending in the driver and each completes with a record, with no
event round trip.  Interface and record layout: prmonitor_ioctl.
"""

import collections
import struct

from ringzero.ddk import *
from ringzero.drivers.prmonitor_ioctl import (DEVICE_NAME, IOCTL_GETINFO, IOCTL_STARTHOOK, IOCTL_WAITINFO,
                                              PRM_DROPPED_OFFSET, PRM_FLAG_FULL_IMAGE_NAME, PRM_HEADER_SIZE,
                                              PRM_PROCESS_CREATE, PRM_PROCESS_EXIT, PRM_QUEUE_DEPTH,
                                              PRM_SEQUENCE_OFFSET, SYMBOLIC_LINK, build_record)

bProcMon = FALSE        # our notify routine is registered: while at least one handle monitors
g_HookLock = KMUTEX()   # serialises registering and removing the notify routine; taken before g_Lock
g_Lock = KMUTEX()       # guards g_Monitors and every MONITOR_CONTEXT's fields
g_Monitors = []         # contexts of the handles that monitor, in the order they started


class MONITOR_CONTEXT:
    """One per open handle (FileObject.FsContext).

    Seed: gpEventObject and the output text were globals shared by every
    program (defect 4).  Invariants, under g_Lock: `Queue` holds at most
    PRM_QUEUE_DEPTH (Sequence, record) pairs, oldest first; `PendingIrps`
    (WAITINFO requests, oldest first) is non-empty only while `Queue` is
    empty; `Sequence` counts every record offered to this handle; `Dropped`
    counts those discarded since the last one was returned."""

    def __init__(self):
        self.gpEventObject = NULL   # the program's event, referenced; set by IOCTL_STARTHOOK
        self.Monitoring = FALSE     # in g_Monitors
        self.Queue = collections.deque()
        self.Sequence = 0
        self.Dropped = 0
        self.PendingIrps = []


# -- the notify routine -----------------------------------------------------------

def ProcessNotifyEx(Process, ProcessId, CreateInfo):
    """Called by the process manager for each process created (CreateInfo set)
    and exited (CreateInfo None), at PASSIVE_LEVEL on a kernel thread."""
    if CreateInfo is not None:
        flags = PRM_FLAG_FULL_IMAGE_NAME if CreateInfo.FileOpenNameAvailable else 0
        record = build_record(PRM_PROCESS_CREATE, ProcessId, CreateInfo.ParentProcessId, 0,
                              PsGetProcessCreateTimeQuadPart(Process), CreateInfo.ImageFileName,
                              CreateInfo.CommandLine or "", flags)
    else:
        record = build_record(PRM_PROCESS_EXIT, ProcessId, PsGetProcessInheritedFromUniqueProcessId(Process),
                              PsGetProcessExitStatus(Process), KeQuerySystemTime(),
                              PsGetProcessImageFileName(Process), "")
    done = []
    KeWaitForMutexObject(g_Lock, Executive, KernelMode, FALSE, NULL)
    for ctx in g_Monitors:
        OfferRecord(ctx, record, done)
    KeReleaseMutex(g_Lock, FALSE)
    CompleteAll(done)


def OfferRecord(ctx, record, done):
    """With g_Lock held: hand `record` to the oldest pending WAITINFO that can
    take it, else queue it (dropping the oldest when full) and set the event.
    Seed: KeSetEvent on one global event, the text in one global buffer."""
    ctx.Sequence += 1
    if not ctx.Queue:
        while ctx.PendingIrps:
            Irp = ctx.PendingIrps.pop(0)
            if IoSetCancelRoutine(Irp, NULL) is None:
                continue        # IoCancelIrp has it; the cancel routine completes it
            status, info = CopyRecord(ctx, Irp, ctx.Sequence, record)
            done.append((Irp, status, info))
            if status == STATUS_SUCCESS:
                return
    if len(ctx.Queue) >= PRM_QUEUE_DEPTH:
        ctx.Queue.popleft()
        ctx.Dropped += 1
    ctx.Queue.append((ctx.Sequence, record))
    if ctx.gpEventObject is not NULL:
        KeSetEvent(ctx.gpEventObject, IO_NO_INCREMENT, FALSE)


def CopyRecord(ctx, Irp, Sequence, record):
    """Write `record` into the IRP's output buffer: (status, Information).

    Seed: RtlCopyMemory(pOutBuffer, output, sizeof(output)) whatever the
    buffer's size, and Information = OutputBufferLength (defect 5).  Here
    nothing beyond OutputBufferLength is written, Information is what was: a
    buffer shorter than the header gets STATUS_BUFFER_TOO_SMALL, one shorter
    than the record the header alone and STATUS_BUFFER_OVERFLOW (its Size says
    what is needed; the record is not consumed)."""
    outlen = IoGetCurrentIrpStackLocation(Irp).Parameters.DeviceIoControl.OutputBufferLength
    if outlen < PRM_HEADER_SIZE:
        return STATUS_BUFFER_TOO_SMALL, 0
    pOutBuffer = Irp.AssociatedIrp.SystemBuffer
    n = len(record) if outlen >= len(record) else PRM_HEADER_SIZE
    pOutBuffer[:n] = record[:n]
    struct.pack_into("<q", pOutBuffer, PRM_SEQUENCE_OFFSET, Sequence)
    struct.pack_into("<I", pOutBuffer, PRM_DROPPED_OFFSET, ctx.Dropped)
    if n < len(record):
        return STATUS_BUFFER_OVERFLOW, n
    ctx.Dropped = 0
    return STATUS_SUCCESS, n


def TakeOldest(ctx, Irp):
    """With g_Lock held: GETINFO / WAITINFO with a record queued."""
    Sequence, record = ctx.Queue[0]
    status, info = CopyRecord(ctx, Irp, Sequence, record)
    if status == STATUS_SUCCESS:
        ctx.Queue.popleft()
    return status, info


def CompleteAll(done):
    for Irp, status, info in done:
        Irp.IoStatus.Status = status
        Irp.IoStatus.Information = info
        IoCompleteRequest(Irp, IO_NO_INCREMENT)


# -- starting and stopping a handle's monitoring -------------------------------------

def StartMonitoring(ctx):
    """Register the notify routine if this is the first monitoring handle."""
    global bProcMon
    KeWaitForMutexObject(g_HookLock, Executive, KernelMode, FALSE, NULL)
    status = STATUS_SUCCESS
    if not bProcMon:
        status = PsSetCreateProcessNotifyRoutineEx(ProcessNotifyEx, FALSE)
        if NT_SUCCESS(status):
            bProcMon = TRUE
        else:
            KdPrint(("PRMonitor: PsSetCreateProcessNotifyRoutineEx failed: %08X\n", status))
    if NT_SUCCESS(status):
        KeWaitForMutexObject(g_Lock, Executive, KernelMode, FALSE, NULL)
        if not ctx.Monitoring:
            ctx.Monitoring = TRUE
            g_Monitors.append(ctx)
        KeReleaseMutex(g_Lock, FALSE)
    KeReleaseMutex(g_HookLock, FALSE)
    return status


def StopMonitoring(ctx):
    """IRP_MJ_CLEANUP: the handle's last close (or its program's death).

    Seed: the event was never dereferenced (defect 3) and the notify routine
    never removed (defect 6).  Removal waits for a notify call in progress, so
    it is done without g_Lock held (ProcessNotifyEx takes it)."""
    global bProcMon
    KeWaitForMutexObject(g_HookLock, Executive, KernelMode, FALSE, NULL)
    KeWaitForMutexObject(g_Lock, Executive, KernelMode, FALSE, NULL)
    if ctx.Monitoring:
        g_Monitors.remove(ctx)
        ctx.Monitoring = FALSE
    pending, ctx.PendingIrps = ctx.PendingIrps, []
    event, ctx.gpEventObject = ctx.gpEventObject, NULL
    ctx.Queue.clear()
    last = not g_Monitors
    KeReleaseMutex(g_Lock, FALSE)
    if last and bProcMon:
        PsSetCreateProcessNotifyRoutineEx(ProcessNotifyEx, TRUE)
        bProcMon = FALSE
    KeReleaseMutex(g_HookLock, FALSE)
    CompleteAll([(Irp, STATUS_CANCELLED, 0) for Irp in pending if IoSetCancelRoutine(Irp, NULL) is not None])
    if event is not NULL:
        ObDereferenceObject(event)


def CancelWaitInfo(DeviceObject, Irp):
    IoReleaseCancelSpinLock(Irp.CancelIrql)
    ctx = IoGetCurrentIrpStackLocation(Irp).FileObject.FsContext
    KeWaitForMutexObject(g_Lock, Executive, KernelMode, FALSE, NULL)
    if Irp in ctx.PendingIrps:
        ctx.PendingIrps.remove(Irp)
    KeReleaseMutex(g_Lock, FALSE)
    Irp.IoStatus.Status = STATUS_CANCELLED
    Irp.IoStatus.Information = 0
    IoCompleteRequest(Irp, IO_NO_INCREMENT)


# -- dispatch --------------------------------------------------------------------------

def StartHook(ctx, Irp, pInBuffer, pInbufferSize):
    if pInBuffer is NULL or pInbufferSize < sizeof(HANDLE):
        KdPrint(("Set Event Error\n"))
        return STATUS_INVALID_BUFFER_SIZE
    (hEvent,) = struct.unpack_from("<Q", pInBuffer)
    # Seed: ObReferenceObjectByHandle(hEvent, GENERIC_ALL, NULL, KernelMode, ...)
    # (defect 1).  The handle came from the program, so it is resolved with the
    # program's access mode (its own handle table, its granted access checked),
    # asking for only the right KeSetEvent needs, and for an event only: a bad
    # or closed handle gets STATUS_INVALID_HANDLE, another object's
    # STATUS_OBJECT_TYPE_MISMATCH, an event opened without EVENT_MODIFY_STATE
    # STATUS_ACCESS_DENIED.
    status, EventObject, objHandleInfo = ObReferenceObjectByHandle(hEvent, EVENT_MODIFY_STATE, ExEventObjectType,
                                                                   Irp.RequestorMode)
    KdPrint(("PRMonitor: STARTHOOK handle %#x: %08X, gpEventObject: %p\n", hEvent, status,
             EventObject if EventObject is not NULL else 0))
    if not NT_SUCCESS(status):
        return status
    status = StartMonitoring(ctx)
    if not NT_SUCCESS(status):
        ObDereferenceObject(EventObject)
        return status
    KeWaitForMutexObject(g_Lock, Executive, KernelMode, FALSE, NULL)
    old, ctx.gpEventObject = ctx.gpEventObject, EventObject
    waiting = bool(ctx.Queue)
    KeReleaseMutex(g_Lock, FALSE)
    if old is not NULL:
        ObDereferenceObject(old)
    if waiting:
        KeSetEvent(EventObject, IO_NO_INCREMENT, FALSE)
    return STATUS_SUCCESS


def WaitInfo(ctx, Irp):
    """STATUS_PENDING, or the (status, Information) to complete with now."""
    if IoGetCurrentIrpStackLocation(Irp).Parameters.DeviceIoControl.OutputBufferLength < PRM_HEADER_SIZE:
        return STATUS_BUFFER_TOO_SMALL, 0
    status = StartMonitoring(ctx)
    if not NT_SUCCESS(status):
        return status, 0
    KeWaitForMutexObject(g_Lock, Executive, KernelMode, FALSE, NULL)
    if ctx.Queue:
        result = TakeOldest(ctx, Irp)
        KeReleaseMutex(g_Lock, FALSE)
        return result
    IoMarkIrpPending(Irp)
    IoSetCancelRoutine(Irp, CancelWaitInfo)
    if Irp.Cancel and IoSetCancelRoutine(Irp, NULL) is not None:
        KeReleaseMutex(g_Lock, FALSE)
        CompleteAll([(Irp, STATUS_CANCELLED, 0)])
        return STATUS_PENDING
    ctx.PendingIrps.append(Irp)
    KeReleaseMutex(g_Lock, FALSE)
    return STATUS_PENDING


def DevDispatch(DeviceObject, Irp):
    ps = IoGetCurrentIrpStackLocation(Irp)
    ctx = ps.FileObject.FsContext
    status, info = STATUS_SUCCESS, 0
    # Seed: one routine switched on Parameters.DeviceIoControl.IoControlCode
    # for every major function; the major function is looked at first here.
    if ps.MajorFunction == IRP_MJ_CREATE:
        ps.FileObject.FsContext = MONITOR_CONTEXT()
    elif ps.MajorFunction == IRP_MJ_CLEANUP:
        StopMonitoring(ctx)
    elif ps.MajorFunction == IRP_MJ_CLOSE:
        ps.FileObject.FsContext = NULL
    elif ps.MajorFunction == IRP_MJ_DEVICE_CONTROL:
        code = ps.Parameters.DeviceIoControl.IoControlCode
        if code == IOCTL_STARTHOOK:
            status = StartHook(ctx, Irp, Irp.AssociatedIrp.SystemBuffer,
                               ps.Parameters.DeviceIoControl.InputBufferLength)
        elif code == IOCTL_GETINFO:
            KeWaitForMutexObject(g_Lock, Executive, KernelMode, FALSE, NULL)
            if not ctx.Monitoring:
                status = STATUS_INVALID_DEVICE_STATE       # no STARTHOOK or WAITINFO on this handle yet
            elif not ctx.Queue:
                status = STATUS_NO_MORE_ENTRIES
            else:
                status, info = TakeOldest(ctx, Irp)
            KeReleaseMutex(g_Lock, FALSE)
        elif code == IOCTL_WAITINFO:
            result = WaitInfo(ctx, Irp)
            if result == STATUS_PENDING:
                return STATUS_PENDING
            status, info = result
        else:
            status = STATUS_INVALID_DEVICE_REQUEST
    else:
        status = STATUS_INVALID_DEVICE_REQUEST
    # Seed: Irp->IoStatus.Status = STATUS_SUCCESS whatever happened (defect 2).
    Irp.IoStatus.Status = status
    Irp.IoStatus.Information = info
    IoCompleteRequest(Irp, IO_NO_INCREMENT)
    return status


def DriverUnload(DriverObject):
    """NT runs this once no handle is open, so every CLEANUP has already
    stopped its handle's monitoring; whatever is left is taken down here."""
    global bProcMon
    KeWaitForMutexObject(g_HookLock, Executive, KernelMode, FALSE, NULL)
    if bProcMon:
        PsSetCreateProcessNotifyRoutineEx(ProcessNotifyEx, TRUE)
        bProcMon = FALSE
    KeReleaseMutex(g_HookLock, FALSE)
    KeWaitForMutexObject(g_Lock, Executive, KernelMode, FALSE, NULL)
    events = [ctx.gpEventObject for ctx in g_Monitors if ctx.gpEventObject is not NULL]
    for ctx in g_Monitors:
        ctx.gpEventObject = NULL
        ctx.Monitoring = FALSE
    g_Monitors.clear()
    KeReleaseMutex(g_Lock, FALSE)
    for event in events:
        ObDereferenceObject(event)
    IoDeleteSymbolicLink(SYMBOLIC_LINK)
    IoDeleteDevice(DriverObject.DeviceObject)
    KdPrint(("PRMonitor: unloaded\n"))


def DriverEntry(DriverObject, RegistryPath):
    status, DeviceObject = IoCreateDevice(DriverObject, 0, DEVICE_NAME, FILE_DEVICE_UNKNOWN, 0, FALSE)
    if not NT_SUCCESS(status):
        return status
    status = IoCreateSymbolicLink(SYMBOLIC_LINK, DEVICE_NAME)
    if not NT_SUCCESS(status):
        IoDeleteDevice(DeviceObject)
        return status
    for major in (IRP_MJ_CREATE, IRP_MJ_CLEANUP, IRP_MJ_CLOSE, IRP_MJ_DEVICE_CONTROL):
        DriverObject.MajorFunction[major] = DevDispatch
    DriverObject.DriverUnload = DriverUnload
    KdPrint(("PRMonitor: loaded\n"))
    return STATUS_SUCCESS
