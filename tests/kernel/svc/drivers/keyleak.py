"""Test driver that opens its service key in DriverEntry and never closes it."""

from ringzero.ddk import *

g_Key = None


def DriverUnload(DriverObject):
    pass


def DriverEntry(DriverObject, RegistryPath):
    global g_Key
    oa = InitializeObjectAttributes(RegistryPath, OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE, None, None)
    status, g_Key = ZwOpenKey(KEY_READ, oa)
    if not NT_SUCCESS(status):
        return status
    DriverObject.DriverUnload = DriverUnload
    return STATUS_SUCCESS
