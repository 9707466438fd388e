"""The I/O manager's objects: DRIVER_OBJECT, DEVICE_OBJECT, FILE_OBJECT, IRP.

Field names are the DDK's, so a driver reads like its C original.
"""

from __future__ import annotations

import threading

from ringzero.kernel import dbg, verifier
from ringzero.kernel.ke.dispatcher import KEVENT, NotificationEvent, SynchronizationEvent
from ringzero.kernel.ob.object import ObjectHeader
from ringzero.nt import irp as irpc

IRP_MJ_MAXIMUM_FUNCTION = irpc.IRP_MJ_MAXIMUM_FUNCTION


class DRIVER_OBJECT(ObjectHeader):
    """Invariant: `DeviceObject` heads the singly linked list (through
    NextDevice) of every device this driver created and has not deleted."""

    type_name = "Driver"

    def __init__(self, name: str, module=None):
        self.DriverName = "\\Driver\\" + name
        self.service_name = name
        self.module = module
        self.DeviceObject = None
        self.all_devices: list = []   # every device ever created, for the deferred unload
        self.MajorFunction: list = [None] * (IRP_MJ_MAXIMUM_FUNCTION + 1)
        self.DriverUnload = None
        self.DriverStartIo = None
        self.FastIoDispatch = None    # a FAST_IO_DISPATCH, if the driver has fast I/O routines
        self.DriverExtension = None
        self.DriverSection = None
        self.Flags = 0
        self.permanent = True
        self.faults = 0
        self.fault_limit = verifier.fault_limit   # 0: never mark faulted
        self.faulted = False
        self.unloading = False
        self.counters = {"irps": 0, "fast_io": 0}

    @property
    def name(self) -> str:  # ObjectHeader's name is the namespace leaf
        return self.service_name

    @name.setter
    def name(self, value: str) -> None:
        self.service_name = value

    def devices(self) -> list:
        out, dev = [], self.DeviceObject
        while dev is not None:
            out.append(dev)
            dev = dev.NextDevice
        return out

    def note_fault(self) -> None:
        self.faults += 1
        if self.fault_limit and self.faults >= self.fault_limit and not self.faulted:
            self.faulted = True
            dbg.emit(f"{self.name}: {self.faults} faults (limit {self.fault_limit}); the driver is marked faulted "
                     "and refuses new opens", level="fault", source=self.name)


class FAST_IO_DISPATCH:
    """DRIVER_OBJECT.FastIoDispatch: routines the I/O manager calls instead of
    building an IRP.  ringzero calls the two a pipe's driver uses (NPFS's
    NpFastRead and NpFastWrite are such): NtReadFile and NtWriteFile on a file
    object opened for synchronous I/O whose PrivateCacheMap the driver has set
    (NPFS sets it to 1 so that they are called) first call

        FastIoRead(FileObject, FileOffset, Length, Wait, LockKey, Buffer, IoStatus, DeviceObject)
        FastIoWrite(FileObject, FileOffset, Length, Wait, LockKey, Buffer, IoStatus, DeviceObject)

    in the caller's context.  The routine moves the bytes itself, between its
    own state and `Buffer` (a writable buffer of `Length` bytes for a read, the
    data for a write), fills `IoStatus` and returns TRUE; or it returns FALSE
    having done nothing, and the request becomes an IRP as usual.  A result the
    I/O manager does not take as it is (a status other than STATUS_SUCCESS,
    or STATUS_BUFFER_OVERFLOW and STATUS_END_OF_FILE for a read) also goes the
    IRP way.  The routine keeps FileObject.CurrentByteOffset if the device has
    one (FsRtlCopyRead does); nothing is pending afterwards, so there is no
    cancel, no completion routine and no quota charge."""

    __slots__ = ("SizeOfFastIoDispatch", "FastIoRead", "FastIoWrite")
    _sizeof_ = 0xE0          # the x64 structure: a ULONG and 27 routine pointers

    def __init__(self):
        self.SizeOfFastIoDispatch = self._sizeof_
        self.FastIoRead = None
        self.FastIoWrite = None


class SHARE_ACCESS:
    __slots__ = ("OpenCount", "Readers", "Writers", "Deleters", "SharedRead", "SharedWrite", "SharedDelete")

    def __init__(self):
        self.OpenCount = self.Readers = self.Writers = self.Deleters = 0
        self.SharedRead = self.SharedWrite = self.SharedDelete = 0


class DeviceExtension(bytearray):
    """A device extension: DeviceExtensionSize writable bytes that also take
    attributes, so a driver keeps its device context's fields (a KMUTEX, a
    list head) on it as it would in the C structure the extension holds."""

    def __hash__(self) -> int:  # an identity, not a value
        return id(self)

    def __eq__(self, other) -> bool:
        return self is other


class DEVICE_OBJECT(ObjectHeader):
    """Invariant: `ReferenceCount` counts FILE_OBJECTs open on this device (an
    exclusive device allows one); `AttachedDevice` is the device above this one
    in its stack, None at the top."""

    type_name = "Device"
    parses_names = True

    def __init__(self, DriverObject, DeviceExtensionSize: int, DeviceType: int, Characteristics: int, Exclusive: bool):
        self.DriverObject = DriverObject
        self.NextDevice = None
        self.AttachedDevice = None
        self.lower_device = None
        self.DeviceType = DeviceType
        self.Characteristics = Characteristics
        self.Flags = irpc.DO_DEVICE_INITIALIZING | (irpc.DO_EXCLUSIVE if Exclusive else 0)
        self.StackSize = 1
        self.AlignmentRequirement = 0
        self.ReferenceCount = 0
        self.DeviceExtension = DeviceExtension(DeviceExtensionSize) if DeviceExtensionSize else None
        self.Timer = None
        self.DeviceQueue = None
        self.deleted = False
        self.permanent = True
        self.lock = threading.Lock()

    def top_of_stack(self) -> DEVICE_OBJECT:
        dev = self
        while dev.AttachedDevice is not None:
            dev = dev.AttachedDevice
        return dev


class FILE_OBJECT(ObjectHeader):
    """Invariant: every handle and every outstanding IRP holds a reference; the
    last handle's close sends IRP_MJ_CLEANUP, the last reference IRP_MJ_CLOSE.
    For a file object opened for synchronous I/O, `Busy` is held by the one
    request (or close) in progress on it, and `Waiters` threads wait on `Lock`
    for it (file.py, IopLockFileObject)."""

    type_name = "File"

    def __init__(self, DeviceObject, FileName: str):
        self.DeviceObject = DeviceObject
        self.FileName = FileName
        self.FsContext = None
        self.FsContext2 = None
        self.CurrentByteOffset = 0
        self.PrivateCacheMap = None   # set (to 1) by a driver whose FastIoRead/FastIoWrite should be called
        self.Flags = 0
        self.ReadAccess = self.WriteAccess = self.DeleteAccess = False
        self.SharedRead = self.SharedWrite = self.SharedDelete = False
        self.RelatedFileObject = None
        self.FinalStatus = 0
        self.Event = KEVENT(NotificationEvent, False)
        self.synchronous = True
        self.Busy = threading.Lock()  # NT's Busy flag, taken and let go with one atomic step each
        self.Waiters = 0
        self.Lock = KEVENT(SynchronizationEvent, False)
        self.opened = False       # IRP_MJ_CREATE succeeded
        self.cleaned_up = False
        self.closed = False
        self.process = None       # the process that opened it (for rundown bookkeeping)

    @property
    def dispatcher(self):
        return self.Event


class _Params:
    """Parameters.Create / Read / Write / DeviceIoControl: one object answers to
    all the unions' names, as the fields do not overlap in meaning."""

    __slots__ = ("IoControlCode", "InputBufferLength", "OutputBufferLength", "Type3InputBuffer",
                 "Length", "ByteOffset", "Key", "Options", "ShareAccess", "FileAttributes",
                 "EaLength", "SecurityContext")

    def __init__(self):
        self.IoControlCode = 0
        self.InputBufferLength = 0
        self.OutputBufferLength = 0
        self.Type3InputBuffer = None
        self.Length = 0
        self.ByteOffset = 0
        self.Key = 0
        self.Options = 0
        self.ShareAccess = 0
        self.FileAttributes = 0
        self.EaLength = 0
        self.SecurityContext = None

    @property
    def DeviceIoControl(self):
        return self

    Read = Write = Create = Others = DeviceIoControl


class IO_SECURITY_CONTEXT:
    __slots__ = ("DesiredAccess", "AccessState")

    def __init__(self, DesiredAccess: int):
        self.DesiredAccess = DesiredAccess
        self.AccessState = None


class IO_STACK_LOCATION:
    __slots__ = ("MajorFunction", "MinorFunction", "Flags", "Control", "Parameters", "DeviceObject",
                 "FileObject", "CompletionRoutine", "Context")

    def __init__(self):
        self.MajorFunction = 0
        self.MinorFunction = 0
        self.Flags = 0
        self.Control = 0
        self.Parameters = _Params()
        self.DeviceObject = None
        self.FileObject = None
        self.CompletionRoutine = None
        self.Context = None

    def copy_from(self, other: IO_STACK_LOCATION) -> None:
        self.MajorFunction = other.MajorFunction
        self.MinorFunction = other.MinorFunction
        self.Flags = other.Flags
        self.FileObject = other.FileObject
        p, q = self.Parameters, other.Parameters
        for f in _Params.__slots__:
            setattr(p, f, getattr(q, f))


class IO_STATUS_BLOCK:
    __slots__ = ("Status", "Information")

    def __init__(self):
        self.Status = 0
        self.Information = 0

    @property
    def Pointer(self):
        return self.Status


class _Associated:
    __slots__ = ("SystemBuffer", "MasterIrp", "IrpCount")

    def __init__(self):
        self.SystemBuffer = None
        self.MasterIrp = None
        self.IrpCount = 0


class _Tail:
    """Irp->Tail.Overlay: its fields live on this one object, which is also its
    own `Overlay`.  DriverContext is the owning driver's, as on NT: the I/O
    manager keeps nothing there."""

    __slots__ = ("Thread", "ListEntry", "DriverContext", "CurrentStackLocation")

    def __init__(self):
        self.Thread = 0
        self.ListEntry = None
        self.DriverContext = [None, None, None, None]
        self.CurrentStackLocation = None

    @property
    def Overlay(self):
        return self


class IRP:
    """Who owns an IRP: the I/O manager builds it and hands it to the top
    driver with IoCallDriver; from then the driver that holds it owns it until
    it calls IoCompleteRequest (or passes it down).  After completion nobody may
    touch it (`completed` is set and the verifier names the culprit).  While a
    cancel routine is set, IoCancelIrp may take it back at any moment."""

    __slots__ = ("Type", "StackCount", "CurrentLocation", "Stack", "IoStatus", "AssociatedIrp", "MdlAddress",
                 "UserBuffer", "RequestorMode", "PendingReturned", "Cancel", "CancelIrql", "CancelRoutine",
                 "Flags", "Tail", "UserEvent", "completed", "process", "file", "rid", "tid", "overlapped",
                 "on_complete", "reply_sent", "major", "user_event_obj", "out_length", "driver", "copy_back",
                 "io_kind", "io_reply", "io_device", "io_charge", "file_locked", "__weakref__")

    def __init__(self, StackSize: int):
        self.Type = 6
        self.StackCount = StackSize
        self.Stack = [IO_STACK_LOCATION()] if StackSize == 1 else [IO_STACK_LOCATION() for _ in range(StackSize)]
        self.CurrentLocation = -1   # index into Stack; -1 until IoCallDriver
        self.IoStatus = IO_STATUS_BLOCK()
        self.AssociatedIrp = _Associated()
        self.MdlAddress = None
        self.UserBuffer = None
        self.RequestorMode = 1
        self.PendingReturned = False
        self.Cancel = False
        self.CancelIrql = 0
        self.CancelRoutine = None
        self.Flags = 0
        self.Tail = _Tail()
        self.UserEvent = None
        self.completed = False
        self.process = None
        self.file = None
        self.rid = 0
        self.tid = 0
        self.overlapped = False
        self.on_complete = None
        self.reply_sent = False
        self.major = 0
        self.user_event_obj = None
        self.out_length = 0
        self.driver = None
        self.copy_back = None       # the program's buffer the copy-back goes straight into (a UserAddress)
        self.io_kind = 0            # the I/O manager's: how the buffers were passed (file.py's _KIND_*)
        self.io_reply = None        # the I/O manager's: where the answer goes (a file.Reply)
        self.io_device = None       # the I/O manager's: the top of the stack it was built for and sent to
        self.io_charge = 0          # the I/O manager's: bytes charged to the process's quota while it is outstanding
        self.file_locked = False    # the I/O manager's: the request holds its synchronous file object's lock

