"""Devices, symbolic links, device stacks and share access."""

from __future__ import annotations

from ringzero.kernel import system
from ringzero.kernel.context import current
from ringzero.kernel.io.objects import DEVICE_OBJECT, DRIVER_OBJECT, FILE_OBJECT, SHARE_ACCESS
from ringzero.kernel.ob import object as ob
from ringzero.kernel.ob.namespace import ObjectError, SymbolicLink
from ringzero.kernel.se import security as se
from ringzero.nt import access as acc
from ringzero.nt import irp as irpc
from ringzero.nt import status as st


def _unicode(s) -> str:
    return s if isinstance(s, str) or s is None else s.Buffer


def IoCreateDevice(DriverObject: DRIVER_OBJECT, DeviceExtensionSize: int, DeviceName, DeviceType: int,
                   DeviceCharacteristics: int, Exclusive: bool):
    """(status, DeviceObject).  A named device goes into the namespace with NT's
    default security for named devices."""
    return _create_device(DriverObject, DeviceExtensionSize, _unicode(DeviceName), DeviceType,
                          DeviceCharacteristics, Exclusive, se.default_device_descriptor())


def IoCreateDeviceSecure(DriverObject: DRIVER_OBJECT, DeviceExtensionSize: int, DeviceName, DeviceType: int,
                         DeviceCharacteristics: int, Exclusive: bool, DefaultSDDLString: str, DeviceClassGuid=None):
    try:
        sd = se.from_sddl(_unicode(DefaultSDDLString))
    except se.SddlError:
        return st.STATUS_INVALID_PARAMETER, None
    return _create_device(DriverObject, DeviceExtensionSize, _unicode(DeviceName), DeviceType,
                          DeviceCharacteristics, Exclusive, sd)


def _create_device(driver, ext_size, name, dev_type, characteristics, exclusive, sd):
    dev = DEVICE_OBJECT(driver, ext_size, dev_type, characteristics, exclusive)
    dev.security = sd
    ob.reference(dev)  # the driver's reference, dropped by IoDeleteDevice
    if name:
        try:
            system.get().namespace.insert(name, dev)
        except ObjectError as e:
            return e.status, None
    dev.NextDevice = driver.DeviceObject
    driver.DeviceObject = dev
    driver.all_devices.append(dev)
    return st.STATUS_SUCCESS, dev


def IoDeleteDevice(DeviceObject: DEVICE_OBJECT) -> None:
    """Unname the device and drop the driver's reference; file objects still
    open on it keep it alive until they close."""
    if DeviceObject.deleted:
        return
    DeviceObject.deleted = True
    ob.remove_name(DeviceObject)
    driver = DeviceObject.DriverObject
    prev, dev = None, driver.DeviceObject
    while dev is not None:
        if dev is DeviceObject:
            if prev is None:
                driver.DeviceObject = dev.NextDevice
            else:
                prev.NextDevice = dev.NextDevice
            break
        prev, dev = dev, dev.NextDevice
    if DeviceObject.Timer is not None:
        DeviceObject.Timer.token = None
    ob.dereference(DeviceObject)


def IoCreateSymbolicLink(SymbolicLinkName, DeviceName) -> int:
    link = SymbolicLink(_unicode(DeviceName))
    link.permanent = True
    link.creator = current.driver
    try:
        system.get().namespace.insert(_unicode(SymbolicLinkName), link)
    except ObjectError as e:
        return e.status
    return st.STATUS_SUCCESS


def IoDeleteSymbolicLink(SymbolicLinkName) -> int:
    try:
        obj, _ = system.get().namespace.lookup(_unicode(SymbolicLinkName), parse=False, follow_last=False)
    except ObjectError as e:
        return e.status
    if not isinstance(obj, SymbolicLink):
        return st.STATUS_OBJECT_TYPE_MISMATCH
    ob.remove_name(obj)
    return st.STATUS_SUCCESS


def IoAttachDeviceToDeviceStack(SourceDevice: DEVICE_OBJECT, TargetDevice: DEVICE_OBJECT) -> DEVICE_OBJECT | None:
    top = TargetDevice.top_of_stack()
    if top.deleted:
        return None
    top.AttachedDevice = SourceDevice
    SourceDevice.lower_device = top
    SourceDevice.StackSize = top.StackSize + 1
    return top


def IoDetachDevice(TargetDevice: DEVICE_OBJECT) -> None:
    above = TargetDevice.AttachedDevice
    if above is not None:
        above.lower_device = None
    TargetDevice.AttachedDevice = None


def IoGetAttachedDeviceReference(DeviceObject: DEVICE_OBJECT) -> DEVICE_OBJECT:
    return ob.reference(DeviceObject.top_of_stack())


def IoGetDeviceObjectPointer(ObjectName, DesiredAccess: int):
    """(status, FileObject, DeviceObject) for a device by name, for kernel callers."""
    try:
        obj, _ = system.get().namespace.lookup(_unicode(ObjectName))
    except ObjectError as e:
        return e.status, None, None
    if not isinstance(obj, DEVICE_OBJECT):
        return st.STATUS_OBJECT_TYPE_MISMATCH, None, None
    fo = FILE_OBJECT(obj, "")
    ob.reference(fo)
    return st.STATUS_SUCCESS, fo, obj.top_of_stack()


# -- share access (IoCheckShareAccess & co.), as NT's rules ------------------

_READ = acc.FILE_READ_DATA | acc.FILE_EXECUTE
_WRITE = acc.FILE_WRITE_DATA | acc.FILE_APPEND_DATA
_DELETE = acc.DELETE


def IoSetShareAccess(DesiredAccess: int, DesiredShareAccess: int, FileObject: FILE_OBJECT, ShareAccess: SHARE_ACCESS) -> None:
    r, w, d = bool(DesiredAccess & _READ), bool(DesiredAccess & _WRITE), bool(DesiredAccess & _DELETE)
    FileObject.ReadAccess, FileObject.WriteAccess, FileObject.DeleteAccess = r, w, d
    if not (r or w or d):
        FileObject.SharedRead = FileObject.SharedWrite = FileObject.SharedDelete = False
        return
    sr = bool(DesiredShareAccess & irpc.FILE_SHARE_READ)
    sw = bool(DesiredShareAccess & irpc.FILE_SHARE_WRITE)
    sd = bool(DesiredShareAccess & irpc.FILE_SHARE_DELETE)
    FileObject.SharedRead, FileObject.SharedWrite, FileObject.SharedDelete = sr, sw, sd
    ShareAccess.OpenCount += 1
    ShareAccess.Readers += r
    ShareAccess.Writers += w
    ShareAccess.Deleters += d
    ShareAccess.SharedRead += sr
    ShareAccess.SharedWrite += sw
    ShareAccess.SharedDelete += sd


def IoCheckShareAccess(DesiredAccess: int, DesiredShareAccess: int, FileObject: FILE_OBJECT,
                       ShareAccess: SHARE_ACCESS, Update: bool = True) -> int:
    r, w, d = bool(DesiredAccess & _READ), bool(DesiredAccess & _WRITE), bool(DesiredAccess & _DELETE)
    if not (r or w or d):
        FileObject.ReadAccess = FileObject.WriteAccess = FileObject.DeleteAccess = False
        return st.STATUS_SUCCESS
    sr = bool(DesiredShareAccess & irpc.FILE_SHARE_READ)
    sw = bool(DesiredShareAccess & irpc.FILE_SHARE_WRITE)
    sd = bool(DesiredShareAccess & irpc.FILE_SHARE_DELETE)
    n = ShareAccess.OpenCount
    if ((r and ShareAccess.SharedRead < n) or (w and ShareAccess.SharedWrite < n)
            or (d and ShareAccess.SharedDelete < n)
            or (ShareAccess.Readers and not sr) or (ShareAccess.Writers and not sw)
            or (ShareAccess.Deleters and not sd)):
        return st.STATUS_SHARING_VIOLATION
    if Update:
        IoSetShareAccess(DesiredAccess, DesiredShareAccess, FileObject, ShareAccess)
    else:
        FileObject.ReadAccess, FileObject.WriteAccess, FileObject.DeleteAccess = r, w, d
        FileObject.SharedRead, FileObject.SharedWrite, FileObject.SharedDelete = sr, sw, sd
    return st.STATUS_SUCCESS


def IoRemoveShareAccess(FileObject: FILE_OBJECT, ShareAccess: SHARE_ACCESS) -> None:
    r, w, d = FileObject.ReadAccess, FileObject.WriteAccess, FileObject.DeleteAccess
    if not (r or w or d):
        return
    ShareAccess.OpenCount -= 1
    ShareAccess.Readers -= r
    ShareAccess.Writers -= w
    ShareAccess.Deleters -= d
    ShareAccess.SharedRead -= FileObject.SharedRead
    ShareAccess.SharedWrite -= FileObject.SharedWrite
    ShareAccess.SharedDelete -= FileObject.SharedDelete


# -- who is asking -----------------------------------------------------------

def IoGetCurrentProcess():
    return current.process


def PsGetCurrentProcess():
    return current.process


def PsGetCurrentProcessId() -> int:
    p = current.process
    return p.pid if p is not None else 0


def PsGetCurrentThreadId() -> int:
    return current.program_thread


def IoGetRequestorProcessId(Irp) -> int:
    p = Irp.process
    return p.pid if p is not None else 0


def IoGetRequestorProcess(Irp):
    return Irp.process


def PsGetProcessId(Process) -> int:
    return Process.pid


def KeGetCurrentIrql() -> int:
    return current.irql
