"""Test driver whose DriverUnload forgets everything: a device, a symbolic link,
a pool block and a periodic timer with a DPC, all still there at unload."""

from ringzero.ddk import *

g_Timer = KTIMER()
g_Dpc = KDPC()
g_Block = None


def TimerDpc(Dpc, DeferredContext, SystemArgument1, SystemArgument2):
    pass


def DriverUnload(DriverObject):
    DbgPrint("Leaky: DriverUnload (cleaning up nothing)\n")


def DriverEntry(DriverObject, RegistryPath):
    global g_Block
    status, device = IoCreateDevice(DriverObject, 0, r"\Device\Leaky", FILE_DEVICE_UNKNOWN, 0, False)
    if not NT_SUCCESS(status):
        return status
    IoCreateSymbolicLink(r"\??\Leaky", r"\Device\Leaky")
    g_Block = ExAllocatePoolWithTag(NonPagedPool, 64, "Leak")
    KeInitializeTimer(g_Timer)
    KeInitializeDpc(g_Dpc, TimerDpc, None)
    KeSetTimerEx(g_Timer, -10_000_000, 1000, g_Dpc)
    DriverObject.DriverUnload = DriverUnload
    return STATUS_SUCCESS
