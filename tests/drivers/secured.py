"""A test driver whose devices carry the security descriptors drivers use.

\\Device\\SecShared   D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGW;;;WD)   everyone reads and writes
\\Device\\SecRead     D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GR;;;WD)     everyone reads, admins write
\\Device\\SecUser     D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGW;;;U:<uid of nobody>)
\\Device\\SecOpen     admins only, FILE_DEVICE_SECURE_OPEN: the check covers SecOpen\\anything
\\Device\\SecLoose    admins only, no FILE_DEVICE_SECURE_OPEN: SecLoose\\anything is the driver's call
\\Device\\SecExcl     everyone, Exclusive: one open file object at a time

Each has a link \\??\\<name>.  The create routine accepts every open; IOCTL_READ
needs FILE_READ_ACCESS, IOCTL_WRITE FILE_WRITE_ACCESS, IOCTL_ANY neither.
"""

import pwd

from ringzero.ddk import *

DEV = FILE_DEVICE_UNKNOWN
IOCTL_ANY = CTL_CODE(DEV, 0xB00, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_READ = CTL_CODE(DEV, 0xB01, METHOD_BUFFERED, FILE_READ_ACCESS)
IOCTL_WRITE = CTL_CODE(DEV, 0xB02, METHOD_BUFFERED, FILE_WRITE_ACCESS)

ADMINS = "(A;;GA;;;SY)(A;;GA;;;BA)"
DEVICES = [
    ("SecShared", "D:P" + ADMINS + "(A;;GRGW;;;WD)", 0, False),
    ("SecRead", "D:P" + ADMINS + "(A;;GR;;;WD)", 0, False),
    ("SecUser", "D:P" + ADMINS + f"(A;;GRGW;;;U:{pwd.getpwnam('nobody').pw_uid})", 0, False),
    ("SecOpen", "D:P" + ADMINS, FILE_DEVICE_SECURE_OPEN, False),
    ("SecLoose", "D:P" + ADMINS, 0, False),
    ("SecExcl", "D:P" + ADMINS + "(A;;GRGW;;;WD)", 0, True),
]


def _complete(Irp, status, info=0):
    Irp.IoStatus.Status = status
    Irp.IoStatus.Information = info
    IoCompleteRequest(Irp, IO_NO_INCREMENT)
    return status


def DispatchCreateClose(DeviceObject, Irp):
    return _complete(Irp, STATUS_SUCCESS)


def DispatchControl(DeviceObject, Irp):
    code = IoGetCurrentIrpStackLocation(Irp).Parameters.DeviceIoControl.IoControlCode
    if code in (IOCTL_ANY, IOCTL_READ, IOCTL_WRITE):
        return _complete(Irp, STATUS_SUCCESS)
    return _complete(Irp, STATUS_INVALID_DEVICE_REQUEST)


def DriverUnload(DriverObject):
    for name, _, _, _ in DEVICES:
        IoDeleteSymbolicLink("\\??\\" + name)
    while DriverObject.DeviceObject is not None:
        IoDeleteDevice(DriverObject.DeviceObject)


def DriverEntry(DriverObject, RegistryPath):
    for name, sddl, characteristics, exclusive in DEVICES:
        status, dev = IoCreateDeviceSecure(DriverObject, 0, "\\Device\\" + name, FILE_DEVICE_UNKNOWN,
                                           characteristics, exclusive, sddl, None)
        if not NT_SUCCESS(status):
            return status
        IoCreateSymbolicLink("\\??\\" + name, "\\Device\\" + name)
    DriverObject.MajorFunction[IRP_MJ_CREATE] = DispatchCreateClose
    DriverObject.MajorFunction[IRP_MJ_CLOSE] = DispatchCreateClose
    DriverObject.MajorFunction[IRP_MJ_DEVICE_CONTROL] = DispatchControl
    DriverObject.DriverUnload = DriverUnload
    return STATUS_SUCCESS
