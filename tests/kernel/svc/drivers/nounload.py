"""Test driver with no DriverUnload: once started it cannot be stopped."""

from ringzero.ddk import *


def DriverEntry(DriverObject, RegistryPath):
    DbgPrint("NoUnload: DriverEntry\n")
    return STATUS_SUCCESS
