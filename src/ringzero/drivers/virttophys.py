"""VirtToPhys: virtual to physical address translation for the calling program.

A port of the seed's driver (unit VirtToPhys, 001): it creates
\\Device\\devVirtToPhys and the link \\??\\slVirtToPhys, completes IRP_MJ_CREATE
and IRP_MJ_CLOSE, and answers IOCTL_GET_PHYS_ADDRESS by replacing each virtual
address in the buffer with its physical address.  DispatchControl runs in the
context of the program that called DeviceIoControl, so MmGetPhysicalAddress
translates that program's addresses.

Unlike the 32-bit original, entries are pointer-sized (8 bytes) and physical
addresses 64-bit (the seed's DWORD and LowPart are 32-bit artifacts), and a
request carries any number of entries: InputBufferLength / 8.  A kernel that
cannot read frame numbers (not root) fails the request with
STATUS_PRIVILEGE_NOT_HELD instead of answering.
"""

import struct

from ringzero.ddk import *

ENTRY_SIZE = 8          # sizeof(PVOID): one virtual address in, one physical address out

IOCTL_GET_PHYS_ADDRESS = CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_READ_ACCESS + FILE_WRITE_ACCESS)

g_usDeviceName = None
g_usSymbolicLinkName = None


def DispatchCreateClose(p_DeviceObject, p_Irp):
    p_Irp.IoStatus.Status = STATUS_SUCCESS
    p_Irp.IoStatus.Information = 0
    IofCompleteRequest(p_Irp, IO_NO_INCREMENT)
    return STATUS_SUCCESS


def DispatchControl(p_DeviceObject, p_Irp):
    dwBytesReturned = 0
    psl = IoGetCurrentIrpStackLocation(p_Irp)
    if psl.Parameters.DeviceIoControl.IoControlCode == IOCTL_GET_PHYS_ADDRESS:
        InputBufferLength = psl.Parameters.DeviceIoControl.InputBufferLength
        OutputBufferLength = psl.Parameters.DeviceIoControl.OutputBufferLength
        if InputBufferLength >= ENTRY_SIZE and OutputBufferLength >= InputBufferLength:
            if InputBufferLength % ENTRY_SIZE == 0:
                pSystemBuffer = p_Irp.AssociatedIrp.SystemBuffer
                status = STATUS_SUCCESS
                for iCnt in range(InputBufferLength // ENTRY_SIZE):
                    (va,) = struct.unpack_from("<Q", pSystemBuffer, iCnt * ENTRY_SIZE)
                    try:
                        liPhysicalAddress = MmGetPhysicalAddress(va)
                    except PhysicalAddressUnavailable as e:
                        DbgPrint("VirtToPhys: %s\n", str(e))
                        status = STATUS_PRIVILEGE_NOT_HELD
                        break
                    struct.pack_into("<Q", pSystemBuffer, iCnt * ENTRY_SIZE, liPhysicalAddress.QuadPart)
                    DbgPrint("VirtToPhys: pid %d %016X -> %016X\n", PsGetCurrentProcessId(), va,
                             liPhysicalAddress.QuadPart)
                if status == STATUS_SUCCESS:
                    dwBytesReturned = InputBufferLength
            else:
                status = STATUS_INVALID_PARAMETER
        else:
            status = STATUS_BUFFER_TOO_SMALL
    else:
        status = STATUS_INVALID_DEVICE_REQUEST
    p_Irp.IoStatus.Status = status
    p_Irp.IoStatus.Information = dwBytesReturned
    IofCompleteRequest(p_Irp, IO_NO_INCREMENT)
    return status


def DriverUnload(p_DriverObject):
    IoDeleteSymbolicLink(g_usSymbolicLinkName)
    IoDeleteDevice(p_DriverObject.DeviceObject)
    DbgPrint("VirtToPhys: unloaded\n")


def DriverEntry(pDriverObject, pusRegistryPath):
    global g_usDeviceName, g_usSymbolicLinkName
    status = STATUS_DEVICE_CONFIGURATION_ERROR
    g_usDeviceName = RtlInitUnicodeString(r"\Device\devVirtToPhys")
    g_usSymbolicLinkName = RtlInitUnicodeString(r"\??\slVirtToPhys")
    result, pDeviceObject = IoCreateDevice(pDriverObject, 0, g_usDeviceName, FILE_DEVICE_UNKNOWN, 0, FALSE)
    if result == STATUS_SUCCESS:
        if IoCreateSymbolicLink(g_usSymbolicLinkName, g_usDeviceName) == STATUS_SUCCESS:
            pDriverObject.MajorFunction[IRP_MJ_CREATE] = DispatchCreateClose
            pDriverObject.MajorFunction[IRP_MJ_CLOSE] = DispatchCreateClose
            pDriverObject.MajorFunction[IRP_MJ_DEVICE_CONTROL] = DispatchControl
            pDriverObject.DriverUnload = DriverUnload
            status = STATUS_SUCCESS
            DbgPrint("VirtToPhys: DriverEntry, registry path %wZ\n", pusRegistryPath)
        else:
            IoDeleteDevice(pDeviceObject)
    return status
