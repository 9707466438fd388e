"""Test driver for the service control manager tests.

\\Device\\SvcProbe (link \\??\\SvcProbe).  DriverEntry and DriverUnload say so in
the debug log ("SvcProbe: DriverEntry <RegistryPath>", "SvcProbe: DriverUnload").
DriverEntry reads its Parameters key the two ways drivers do:

* ZwOpenKey + ZwQueryValueKey (size probe, then into a pool buffer): a REG_DWORD
  `EntryStatus`, which, if present and not 0, DriverEntry returns (a failing
  DriverEntry), and a REG_DWORD `Raise`, which, if not 0, makes it raise;
* RtlQueryRegistryValues with RTL_QUERY_REGISTRY_DIRECT: a REG_SZ `Greeting`
  with the default "hello", logged as "SvcProbe: Greeting=<value>".
"""

import struct

from ringzero.ddk import *


def _dword(hKey, name):
    status, info, needed = ZwQueryValueKey(hKey, name, KeyValuePartialInformation, None, 0)
    if status != STATUS_BUFFER_TOO_SMALL:
        return None
    buf = ExAllocatePoolWithTag(PagedPool, needed, "Prob")
    status, info, _ = ZwQueryValueKey(hKey, name, KeyValuePartialInformation, buf, needed)
    value = struct.unpack_from("<I", buf, 12)[0] if NT_SUCCESS(status) and info.Type == REG_DWORD else None
    ExFreePoolWithTag(buf, "Prob")
    return value


def DispatchCreateClose(DeviceObject, Irp):
    Irp.IoStatus.Status = STATUS_SUCCESS
    Irp.IoStatus.Information = 0
    IoCompleteRequest(Irp, IO_NO_INCREMENT)
    return STATUS_SUCCESS


def DriverUnload(DriverObject):
    IoDeleteSymbolicLink(r"\??\SvcProbe")
    IoDeleteDevice(DriverObject.DeviceObject)
    DbgPrint("SvcProbe: DriverUnload\n")


def DriverEntry(DriverObject, RegistryPath):
    DbgPrint("SvcProbe: DriverEntry %wZ\n", RegistryPath)
    oa = InitializeObjectAttributes(RegistryPath + "\\Parameters", OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE, None, None)
    status, hKey = ZwOpenKey(KEY_READ, oa)
    if not NT_SUCCESS(status):
        return status
    entry_status = _dword(hKey, "EntryStatus")
    must_raise = _dword(hKey, "Raise")
    ZwClose(hKey)
    table = [RTL_QUERY_REGISTRY_TABLE(None, RTL_QUERY_REGISTRY_DIRECT, "Greeting", None, REG_SZ, "hello", 0)]
    status = RtlQueryRegistryValues(RTL_REGISTRY_ABSOLUTE, RegistryPath + "\\Parameters", table, None, None)
    if not NT_SUCCESS(status):
        return status
    DbgPrint("SvcProbe: Greeting=%s\n", table[0].EntryContext)
    status, device = IoCreateDevice(DriverObject, 0, r"\Device\SvcProbe", FILE_DEVICE_UNKNOWN, 0, False)
    if not NT_SUCCESS(status):
        return status
    status = IoCreateSymbolicLink(r"\??\SvcProbe", r"\Device\SvcProbe")
    if not NT_SUCCESS(status):
        IoDeleteDevice(device)
        return status
    if must_raise:              # both after creating things: the kernel takes them back
        raise RuntimeError("SvcProbe was told to raise in DriverEntry")
    if entry_status:
        return entry_status
    DriverObject.MajorFunction[IRP_MJ_CREATE] = DispatchCreateClose
    DriverObject.MajorFunction[IRP_MJ_CLOSE] = DispatchCreateClose
    DriverObject.DriverUnload = DriverUnload
    return STATUS_SUCCESS
