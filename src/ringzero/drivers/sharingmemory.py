"""SharingMemory: a nonpaged page mapped into the calling program and refreshed
by the device's I/O timer with the local system time, once a second.

A port of the seed's Delphi driver.  The program sends IOCTL_GIVE_ME_YOUR_MEMORY;
the driver allocates one page, describes it with an MDL, maps it into the
caller (MmMapLockedPagesSpecifyCache with UserMode, inside __try as the seed
does) and returns the user address; TimerRoutine writes KeQuerySystemTime /
ExSystemTimeToLocalTime into the page every second; the program reads the time
straight from its own memory.  IRP_MJ_CLEANUP, which runs in the program's
context, unmaps the view and frees the MDL and the page.

The one design flaw of the seed, fixed: it keeps g_pSharedMemory, g_pMdl and
g_pUserAddress in globals, so a second program's request overwrites the
first's mapping (and the first's cleanup then unmaps the second's).  Here
those three live in a context per open file object (FsContext), and the timer
routine refreshes every live context, so any number of programs can each hold
a view at once.
"""

import struct

from ringzero.ddk import *

IOCTL_GIVE_ME_YOUR_MEMORY = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS)
SHARING_POOL_TAG = "ShMm"

g_usDeviceName = RtlInitUnicodeString(r"\Device\devSharingMemory")
g_usSymbolicLinkName = RtlInitUnicodeString(r"\??\slSharingMemory")


class SHARING_CONTEXT:
    """What the seed kept in globals, per open file object."""

    def __init__(self):
        self.g_pSharedMemory = None
        self.g_pMdl = None
        self.g_pUserAddress = None


g_Contexts = []              # every context with a live page, for the timer routine
g_ContextsLock = KSPIN_LOCK()
g_fTimerStarted = False


def UpdateTime(ctx):
    """Write the local system time (100 ns since 1601) into the shared page."""
    SysTime = LARGE_INTEGER()
    KeQuerySystemTime(SysTime)
    ExSystemTimeToLocalTime(SysTime, ctx.g_pSharedMemory)


def TimerRoutine(pDeviceObject, pContext):
    irql = KeAcquireSpinLock(g_ContextsLock)
    live = list(g_Contexts)
    KeReleaseSpinLock(g_ContextsLock, irql)
    for ctx in live:
        UpdateTime(ctx)


def Cleanup(pDeviceObject, ctx):
    global g_fTimerStarted
    irql = KeAcquireSpinLock(g_ContextsLock)
    if ctx in g_Contexts:
        g_Contexts.remove(ctx)
    stop = g_fTimerStarted and not g_Contexts
    if stop:
        g_fTimerStarted = False
    KeReleaseSpinLock(g_ContextsLock, irql)
    if stop:
        IoStopTimer(pDeviceObject)
        DbgPrint("SharingMemory: Timer stopped")
    if ctx.g_pUserAddress is not None and ctx.g_pMdl is not None:
        MmUnmapLockedPages(ctx.g_pUserAddress, ctx.g_pMdl)
        DbgPrint("SharingMemory: Memory at address %08X unmapped", ctx.g_pUserAddress)
        ctx.g_pUserAddress = None
    if ctx.g_pMdl is not None:
        IoFreeMdl(ctx.g_pMdl)
        DbgPrint("SharingMemory: MDL freed")
        ctx.g_pMdl = None
    if ctx.g_pSharedMemory is not None:
        ExFreePoolWithTag(ctx.g_pSharedMemory, SHARING_POOL_TAG)
        DbgPrint("SharingMemory: Memory released")
        ctx.g_pSharedMemory = None


def DispatchCleanup(pDeviceObject, p_Irp):
    DbgPrint("SharingMemory: Entering DispatchCleanup")
    ctx = IoGetCurrentIrpStackLocation(p_Irp).FileObject.FsContext
    if ctx is not None:
        Cleanup(pDeviceObject, ctx)
    p_Irp.IoStatus.Status = STATUS_SUCCESS
    p_Irp.IoStatus.Information = 0
    IofCompleteRequest(p_Irp, IO_NO_INCREMENT)
    DbgPrint("SharingMemory: Leaving DispatchCleanup")
    return STATUS_SUCCESS


def DispatchCreateClose(p_DeviceObject, p_Irp):
    psl = IoGetCurrentIrpStackLocation(p_Irp)
    if psl.MajorFunction == IRP_MJ_CREATE:
        psl.FileObject.FsContext = SHARING_CONTEXT()
    else:
        psl.FileObject.FsContext = None
    p_Irp.IoStatus.Status = STATUS_SUCCESS
    p_Irp.IoStatus.Information = 0
    IofCompleteRequest(p_Irp, IO_NO_INCREMENT)
    return STATUS_SUCCESS


def DispatchControl(p_DeviceObject, p_Irp):
    global g_fTimerStarted
    DbgPrint("SharingMemory: Entering DispatchControl")
    p_Irp.IoStatus.Status = STATUS_UNSUCCESSFUL
    p_Irp.IoStatus.Information = 0
    psl = IoGetCurrentIrpStackLocation(p_Irp)
    ctx = psl.FileObject.FsContext
    if psl.Parameters.DeviceIoControl.IoControlCode != IOCTL_GIVE_ME_YOUR_MEMORY:
        p_Irp.IoStatus.Status = STATUS_INVALID_DEVICE_REQUEST
    elif psl.Parameters.DeviceIoControl.OutputBufferLength < sizeof(PVOID):
        p_Irp.IoStatus.Status = STATUS_BUFFER_TOO_SMALL
    elif ctx.g_pUserAddress is not None:
        # this handle already has its view: hand back the same address
        struct.pack_into("<Q", p_Irp.AssociatedIrp.SystemBuffer, 0, ctx.g_pUserAddress)
        p_Irp.IoStatus.Information = sizeof(PVOID)
        p_Irp.IoStatus.Status = STATUS_SUCCESS
    else:
        ctx.g_pSharedMemory = ExAllocatePoolWithTag(NonPagedPool, PAGE_SIZE, SHARING_POOL_TAG)
        if ctx.g_pSharedMemory is not None:
            DbgPrint("SharingMemory: %X bytes of nonpaged memory allocated", PAGE_SIZE)
            ctx.g_pMdl = IoAllocateMdl(ctx.g_pSharedMemory, PAGE_SIZE, False, False, None)
            if ctx.g_pMdl is not None:
                DbgPrint("SharingMemory: MDL allocated")
                MmBuildMdlForNonPagedPool(ctx.g_pMdl)
                try:  # the seed's SEH block
                    ctx.g_pUserAddress = MmMapLockedPagesSpecifyCache(ctx.g_pMdl, UserMode, MmCached, None,
                                                                     False, NormalPagePriority)
                except NtException as e:
                    DbgPrint("SharingMemory: mapping into the process failed: %s", str(e))
                    ctx.g_pUserAddress = None
                if ctx.g_pUserAddress is not None:
                    DbgPrint("SharingMemory: Memory mapped into user space at address %08X", ctx.g_pUserAddress)
                    struct.pack_into("<Q", p_Irp.AssociatedIrp.SystemBuffer, 0, ctx.g_pUserAddress)
                    UpdateTime(ctx)
                    irql = KeAcquireSpinLock(g_ContextsLock)
                    g_Contexts.append(ctx)
                    start = not g_fTimerStarted
                    g_fTimerStarted = True
                    KeReleaseSpinLock(g_ContextsLock, irql)
                    if start:
                        IoStartTimer(p_DeviceObject)
                        DbgPrint("SharingMemory: Timer started")
                    p_Irp.IoStatus.Information = sizeof(PVOID)
                    p_Irp.IoStatus.Status = STATUS_SUCCESS
        if p_Irp.IoStatus.Status != STATUS_SUCCESS:
            Cleanup(p_DeviceObject, ctx)   # nothing may leak from a failed attempt
    status = p_Irp.IoStatus.Status
    IofCompleteRequest(p_Irp, IO_NO_INCREMENT)
    DbgPrint("SharingMemory: Leaving DispatchControl")
    return status


def DriverUnload(pDriverObject):
    IoDeleteSymbolicLink(g_usSymbolicLinkName)
    IoDeleteDevice(pDriverObject.DeviceObject)


def DriverEntry(pDriverObject, pusRegistryPath):
    status = STATUS_DEVICE_CONFIGURATION_ERROR
    KeInitializeSpinLock(g_ContextsLock)
    st_, pDeviceObject = IoCreateDevice(pDriverObject, 0, g_usDeviceName, FILE_DEVICE_UNKNOWN, 0, False)
    if st_ == STATUS_SUCCESS:
        if IoInitializeTimer(pDeviceObject, TimerRoutine, None) == STATUS_SUCCESS:
            if IoCreateSymbolicLink(g_usSymbolicLinkName, g_usDeviceName) == STATUS_SUCCESS:
                pDriverObject.MajorFunction[IRP_MJ_CREATE] = DispatchCreateClose
                pDriverObject.MajorFunction[IRP_MJ_CLOSE] = DispatchCreateClose
                pDriverObject.MajorFunction[IRP_MJ_CLEANUP] = DispatchCleanup
                pDriverObject.MajorFunction[IRP_MJ_DEVICE_CONTROL] = DispatchControl
                pDriverObject.DriverUnload = DriverUnload
                status = STATUS_SUCCESS
        if status != STATUS_SUCCESS:
            IoDeleteDevice(pDeviceObject)
    return status
