"""Echo: the smallest useful driver, and the README's first example.

IOCTL_ECHO (METHOD_BUFFERED) returns its input; IOCTL_ECHO_NEITHER does the same
with the program's raw buffers (METHOD_NEITHER); IOCTL_WAIT pends until
IOCTL_RELEASE or a cancel; IOCTL_SIGNAL sets an event the program passed by
handle (and returns KeQueryPerformanceCounter taken just before KeSetEvent, so a
benchmark can time the wakeup).
"""

import struct

from ringzero.ddk import *

IOCTL_ECHO = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_ECHO_NEITHER = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x801, METHOD_NEITHER, FILE_ANY_ACCESS)
IOCTL_ECHO_DIRECT = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x802, METHOD_OUT_DIRECT, FILE_ANY_ACCESS)
IOCTL_WAIT = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x803, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_RELEASE = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x804, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_SIGNAL = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x805, METHOD_BUFFERED, FILE_ANY_ACCESS)

g_Waiting = []      # IRPs parked by IOCTL_WAIT, oldest first
g_Lock = KMUTEX()


def CancelWait(DeviceObject, Irp):
    IoReleaseCancelSpinLock(Irp.CancelIrql)
    KeWaitForMutexObject(g_Lock, Executive, KernelMode, False, None)
    if Irp in g_Waiting:
        g_Waiting.remove(Irp)
    KeReleaseMutex(g_Lock, False)
    Irp.IoStatus.Status = STATUS_CANCELLED
    Irp.IoStatus.Information = 0
    IoCompleteRequest(Irp, IO_NO_INCREMENT)


def DispatchCreateClose(DeviceObject, Irp):
    Irp.IoStatus.Status = STATUS_SUCCESS
    Irp.IoStatus.Information = 0
    IoCompleteRequest(Irp, IO_NO_INCREMENT)
    return STATUS_SUCCESS


def DispatchControl(DeviceObject, Irp):
    stack = IoGetCurrentIrpStackLocation(Irp)
    code = stack.Parameters.DeviceIoControl.IoControlCode
    inlen = stack.Parameters.DeviceIoControl.InputBufferLength
    outlen = stack.Parameters.DeviceIoControl.OutputBufferLength
    status, info = STATUS_SUCCESS, 0
    if code == IOCTL_ECHO:
        info = min(inlen, outlen)          # SystemBuffer already holds the input
    elif code == IOCTL_ECHO_DIRECT:
        out = MmGetSystemAddressForMdlSafe(Irp.MdlAddress, NormalPagePriority) if outlen else None
        info = min(inlen, outlen)
        if info:
            out[:info] = Irp.AssociatedIrp.SystemBuffer[:info]
    elif code == IOCTL_ECHO_NEITHER:
        try:
            ProbeForRead(stack.Parameters.DeviceIoControl.Type3InputBuffer, inlen, 1)
            ProbeForWrite(Irp.UserBuffer, outlen, 1)
            info = min(inlen, outlen)
            RtlCopyMemory(Irp.UserBuffer, stack.Parameters.DeviceIoControl.Type3InputBuffer, info)
        except NtException as e:
            status, info = e.status, 0
    elif code == IOCTL_WAIT:
        KeWaitForMutexObject(g_Lock, Executive, KernelMode, False, None)
        IoMarkIrpPending(Irp)
        IoSetCancelRoutine(Irp, CancelWait)
        if Irp.Cancel and IoSetCancelRoutine(Irp, None) is not None:
            KeReleaseMutex(g_Lock, False)
            Irp.IoStatus.Status = STATUS_CANCELLED
            IoCompleteRequest(Irp, IO_NO_INCREMENT)
            return STATUS_PENDING
        g_Waiting.append(Irp)
        KeReleaseMutex(g_Lock, False)
        return STATUS_PENDING
    elif code == IOCTL_RELEASE:
        KeWaitForMutexObject(g_Lock, Executive, KernelMode, False, None)
        released = []
        while g_Waiting:
            w = g_Waiting.pop(0)
            if IoSetCancelRoutine(w, None) is not None:
                released.append(w)
        KeReleaseMutex(g_Lock, False)
        for w in released:
            w.IoStatus.Status = STATUS_SUCCESS
            w.IoStatus.Information = 0
            IoCompleteRequest(w, IO_NO_INCREMENT)
        if outlen >= 4:
            struct.pack_into("<I", Irp.AssociatedIrp.SystemBuffer, 0, len(released))
            info = 4
    elif code == IOCTL_SIGNAL:
        if inlen < 8:
            status = STATUS_INVALID_BUFFER_SIZE
        else:
            (handle,) = struct.unpack_from("<Q", Irp.AssociatedIrp.SystemBuffer)
            status, event, _ = ObReferenceObjectByHandle(handle, EVENT_MODIFY_STATE, ExEventObjectType, UserMode)
            if NT_SUCCESS(status):
                if outlen >= 8:
                    struct.pack_into("<q", Irp.AssociatedIrp.SystemBuffer, 0, KeQueryPerformanceCounter())
                    info = 8
                KeSetEvent(event, 0, False)
                ObDereferenceObject(event)
    else:
        status = STATUS_INVALID_DEVICE_REQUEST
    Irp.IoStatus.Status = status
    Irp.IoStatus.Information = info
    IoCompleteRequest(Irp, IO_NO_INCREMENT)
    return status


def DriverUnload(DriverObject):
    IoDeleteSymbolicLink(r"\??\Echo")
    IoDeleteDevice(DriverObject.DeviceObject)


def DriverEntry(DriverObject, RegistryPath):
    status, device = IoCreateDevice(DriverObject, 0, r"\Device\Echo", FILE_DEVICE_UNKNOWN, 0, False)
    if not NT_SUCCESS(status):
        return status
    status = IoCreateSymbolicLink(r"\??\Echo", r"\Device\Echo")
    if not NT_SUCCESS(status):
        IoDeleteDevice(device)
        return status
    DriverObject.MajorFunction[IRP_MJ_CREATE] = DispatchCreateClose
    DriverObject.MajorFunction[IRP_MJ_CLOSE] = DispatchCreateClose
    DriverObject.MajorFunction[IRP_MJ_DEVICE_CONTROL] = DispatchControl
    DriverObject.DriverUnload = DriverUnload
    return STATUS_SUCCESS
