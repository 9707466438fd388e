"""A test driver with one bug per IOCTL, each one a driver-verifier check.

\\Device\\Misbehave (link \\??\\Misbehave).  Every IOCTL below breaks one rule
of NT's I/O contract, so a test can see the verifier's named error for it:

IOCTL_COMPLETE_TWICE     IoCompleteRequest, then IoCompleteRequest again
IOCTL_PENDING_UNMARKED   completes, then returns STATUS_PENDING without IoMarkIrpPending
IOCTL_MARKED_NOT_PENDING IoMarkIrpPending, completes, returns STATUS_SUCCESS
IOCTL_NOT_COMPLETED      returns STATUS_SUCCESS without completing the IRP
IOCTL_INFO_TOO_LARGE     completes with Information = output length + 100
IOCTL_TOUCH_AFTER        completes, then passes the IRP on with IoCallDriver
IOCTL_WAIT_IN_DPC        queues a DPC that waits (1 s timeout) at DISPATCH_LEVEL
IOCTL_LEAK_POOL          allocates a pool block tagged 'Mis!' and forgets it
IOCTL_WAIT_UNDER_LOCK    waits (1 s timeout) holding a spin lock
IOCTL_PING               completes properly (the driver still serves)
IOCTL_SYS_EXIT           calls sys.exit() in the dispatch routine (SystemExit, no Exception)
IOCTL_EXIT_IN_DPC        queues a DPC that raises KeyboardInterrupt
IOCTL_PEND_BAD_CANCEL    pends with a cancel routine that releases the cancel lock and raises
IOCTL_SLEEP              blocks in time.sleep (no Ke wait) for 3 s, then completes
IOCTL_KEEP_SPIN_LOCK     completes, then returns holding a spin lock of its own (at DISPATCH_LEVEL)
IOCTL_LEAK_MDL           allocates a page of pool tagged 'MisM' and an MDL over it, and forgets both
"""

from ringzero.ddk import *

DEV = FILE_DEVICE_UNKNOWN
IOCTL_COMPLETE_TWICE = CTL_CODE(DEV, 0xA00, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_PENDING_UNMARKED = CTL_CODE(DEV, 0xA01, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_MARKED_NOT_PENDING = CTL_CODE(DEV, 0xA02, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_NOT_COMPLETED = CTL_CODE(DEV, 0xA03, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_INFO_TOO_LARGE = CTL_CODE(DEV, 0xA04, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_TOUCH_AFTER = CTL_CODE(DEV, 0xA05, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_WAIT_IN_DPC = CTL_CODE(DEV, 0xA06, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_LEAK_POOL = CTL_CODE(DEV, 0xA07, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_PING = CTL_CODE(DEV, 0xA08, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_WAIT_UNDER_LOCK = CTL_CODE(DEV, 0xA09, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_SYS_EXIT = CTL_CODE(DEV, 0xA0A, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_EXIT_IN_DPC = CTL_CODE(DEV, 0xA0B, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_PEND_BAD_CANCEL = CTL_CODE(DEV, 0xA0C, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_SLEEP = CTL_CODE(DEV, 0xA0D, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_KEEP_SPIN_LOCK = CTL_CODE(DEV, 0xA0E, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_LEAK_MDL = CTL_CODE(DEV, 0xA0F, METHOD_BUFFERED, FILE_ANY_ACCESS)

g_Dpc = KDPC()
g_ExitDpc = KDPC()
g_Event = KEVENT()
g_Lock = KSPIN_LOCK()
g_KeptLock = KSPIN_LOCK()


def _complete(Irp, status, info=0):
    Irp.IoStatus.Status = status
    Irp.IoStatus.Information = info
    IoCompleteRequest(Irp, IO_NO_INCREMENT)
    return status


def WaitingDpc(Dpc, DeferredContext, SystemArgument1, SystemArgument2):
    timeout = LARGE_INTEGER(-10_000_000)
    status = KeWaitForSingleObject(g_Event, Executive, KernelMode, False, timeout)
    DbgPrint("Misbehave: the DPC's wait returned %08X", status)


def ExitingDpc(Dpc, DeferredContext, SystemArgument1, SystemArgument2):
    raise KeyboardInterrupt


def RaisingCancel(DeviceObject, Irp):
    IoReleaseCancelSpinLock(Irp.CancelIrql)
    raise RuntimeError("Misbehave: the cancel routine fails before completing the IRP")


def DispatchCreateClose(DeviceObject, Irp):
    return _complete(Irp, STATUS_SUCCESS)


def DispatchControl(DeviceObject, Irp):
    sl = IoGetCurrentIrpStackLocation(Irp)
    code = sl.Parameters.DeviceIoControl.IoControlCode
    out_len = sl.Parameters.DeviceIoControl.OutputBufferLength
    if code == IOCTL_COMPLETE_TWICE:
        _complete(Irp, STATUS_SUCCESS)
        return _complete(Irp, STATUS_SUCCESS)
    if code == IOCTL_PENDING_UNMARKED:
        _complete(Irp, STATUS_SUCCESS)
        return STATUS_PENDING
    if code == IOCTL_MARKED_NOT_PENDING:
        IoMarkIrpPending(Irp)
        return _complete(Irp, STATUS_SUCCESS)
    if code == IOCTL_NOT_COMPLETED:
        return STATUS_SUCCESS
    if code == IOCTL_INFO_TOO_LARGE:
        return _complete(Irp, STATUS_SUCCESS, out_len + 100)
    if code == IOCTL_TOUCH_AFTER:
        _complete(Irp, STATUS_SUCCESS)
        return IoCallDriver(DeviceObject, Irp)
    if code == IOCTL_WAIT_IN_DPC:
        KeInsertQueueDpc(g_Dpc, None, None)
        return _complete(Irp, STATUS_SUCCESS)
    if code == IOCTL_LEAK_POOL:
        ExAllocatePoolWithTag(NonPagedPool, 48, "Mis!")
        return _complete(Irp, STATUS_SUCCESS)
    if code == IOCTL_WAIT_UNDER_LOCK:
        irql = KeAcquireSpinLock(g_Lock)
        try:
            KeWaitForSingleObject(g_Event, Executive, KernelMode, False, LARGE_INTEGER(-10_000_000))
        finally:
            KeReleaseSpinLock(g_Lock, irql)
        return _complete(Irp, STATUS_SUCCESS)
    if code == IOCTL_PING:
        return _complete(Irp, STATUS_SUCCESS)
    if code == IOCTL_LEAK_MDL:
        block = ExAllocatePoolWithTag(NonPagedPool, PAGE_SIZE, "MisM")
        mdl = IoAllocateMdl(block, PAGE_SIZE, False, False, None)
        MmBuildMdlForNonPagedPool(mdl)
        return _complete(Irp, STATUS_SUCCESS)
    if code == IOCTL_KEEP_SPIN_LOCK:
        _complete(Irp, STATUS_SUCCESS)
        KeAcquireSpinLock(g_KeptLock)
        return STATUS_SUCCESS
    if code == IOCTL_SLEEP:
        import time
        DbgPrint("Misbehave: sleeping")
        time.sleep(3)
        return _complete(Irp, STATUS_SUCCESS)
    if code == IOCTL_SYS_EXIT:
        import sys
        sys.exit(3)
    if code == IOCTL_EXIT_IN_DPC:
        KeInsertQueueDpc(g_ExitDpc, None, None)
        return _complete(Irp, STATUS_SUCCESS)
    if code == IOCTL_PEND_BAD_CANCEL:
        IoMarkIrpPending(Irp)
        IoSetCancelRoutine(Irp, RaisingCancel)
        return STATUS_PENDING
    return _complete(Irp, STATUS_INVALID_DEVICE_REQUEST)


def DriverUnload(DriverObject):
    IoDeleteSymbolicLink(r"\??\Misbehave")
    IoDeleteDevice(DriverObject.DeviceObject)


def DriverEntry(DriverObject, RegistryPath):
    KeInitializeEvent(g_Event, NotificationEvent, False)
    KeInitializeDpc(g_Dpc, WaitingDpc, None)
    KeInitializeDpc(g_ExitDpc, ExitingDpc, None)
    KeInitializeSpinLock(g_Lock)
    KeInitializeSpinLock(g_KeptLock)
    status, dev = IoCreateDevice(DriverObject, 0, r"\Device\Misbehave", FILE_DEVICE_UNKNOWN, 0, False)
    if not NT_SUCCESS(status):
        return status
    IoCreateSymbolicLink(r"\??\Misbehave", r"\Device\Misbehave")
    DriverObject.MajorFunction[IRP_MJ_CREATE] = DispatchCreateClose
    DriverObject.MajorFunction[IRP_MJ_CLOSE] = DispatchCreateClose
    DriverObject.MajorFunction[IRP_MJ_DEVICE_CONTROL] = DispatchControl
    DriverObject.DriverUnload = DriverUnload
    return STATUS_SUCCESS
