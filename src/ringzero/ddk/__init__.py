"""What a driver imports: the kernel's routines, structures and constants by
their DDK names.

    from ringzero.ddk import *

Translation rules from C (see README, "Writing a driver"):

* A driver module defines ``DriverEntry(DriverObject, RegistryPath)`` and
  returns an NTSTATUS.  Dispatch routines take ``(DeviceObject, Irp)``.
* UNICODE_STRING parameters take ``str``; ``RtlInitUnicodeString(s)`` returns
  the string (a ``UNICODE_STRING``, which is a ``str`` with Length/Buffer).
* C out-parameters are returned after the status:
  ``status, DeviceObject = IoCreateDevice(DriverObject, 0, name, FILE_DEVICE_UNKNOWN, 0, False)``.
* Buffers (``Irp.AssociatedIrp.SystemBuffer``, an MDL's system view, pool
  blocks) are writable buffers: slice them, ``struct.pack_into`` them.
* Structures use their DDK field names: ``Irp.IoStatus.Status``,
  ``IoGetCurrentIrpStackLocation(Irp).Parameters.DeviceIoControl.IoControlCode``.
* ``__try / __except`` is ``try / except NtException``.
"""

from __future__ import annotations

import ctypes as _ctypes

from ringzero.kernel.context import APC_LEVEL, DISPATCH_LEVEL, PASSIVE_LEVEL
from ringzero.kernel.dbg import DbgPrint, KdPrint
from ringzero.kernel.io.device import (IoAttachDeviceToDeviceStack, IoCheckShareAccess, IoCreateDevice,
                                       IoCreateDeviceSecure, IoCreateSymbolicLink, IoDeleteDevice,
                                       IoDeleteSymbolicLink, IoDetachDevice, IoGetAttachedDeviceReference,
                                       IoGetCurrentProcess, IoGetDeviceObjectPointer, IoGetRequestorProcess,
                                       IoGetRequestorProcessId, IoRemoveShareAccess, IoSetShareAccess,
                                       KeGetCurrentIrql, PsGetCurrentProcess, PsGetCurrentProcessId,
                                       PsGetCurrentThreadId, PsGetProcessId)
from ringzero.kernel.io.irp import (IoAcquireCancelSpinLock, IoAllocateIrp, IoCallDriver, IoCancelIrp,
                                    IoCompleteRequest, IoCopyCurrentIrpStackLocationToNext, IoFreeIrp,
                                    IoGetCurrentIrpStackLocation, IoGetNextIrpStackLocation,
                                    IoIsOperationSynchronous, IoMarkIrpPending, IoReleaseCancelSpinLock,
                                    IoSetCancelRoutine, IoSetCompletionRoutine, IoSetNextIrpStackLocation,
                                    IoSkipCurrentIrpStackLocation)
from ringzero.kernel.io.objects import (DEVICE_OBJECT, DRIVER_OBJECT, FAST_IO_DISPATCH, FILE_OBJECT,
                                        IO_STACK_LOCATION, IO_STATUS_BLOCK, IRP, SHARE_ACCESS)
from ringzero.kernel.ke.clock import (LARGE_INTEGER, ExLocalTimeToSystemTime, ExSystemTimeToLocalTime,
                                      KeQueryInterruptTime, KeQueryPerformanceCounter, KeQuerySystemTime)
from ringzero.kernel.ke.dispatcher import (KEVENT, KMUTEX, KSEMAPHORE, MAXIMUM_WAIT_OBJECTS, KeClearEvent,
                                           KeDelayExecutionThread, KeInitializeEvent, KeInitializeMutex,
                                           KeInitializeSemaphore, KePulseEvent, KeReadStateEvent,
                                           KeReadStateMutex, KeReadStateSemaphore, KeReleaseMutex,
                                           KeReleaseSemaphore, KeResetEvent, KeSetEvent, KeWaitForMultipleObjects,
                                           KeWaitForMutexObject, KeWaitForSingleObject, NotificationEvent,
                                           SynchronizationEvent, WaitAll, WaitAny)
from ringzero.kernel.ke.spinlock import (KSPIN_LOCK, KeAcquireSpinLock, KeAcquireSpinLockAtDpcLevel,
                                         KeInitializeSpinLock, KeReleaseSpinLock, KeReleaseSpinLockFromDpcLevel)
from ringzero.kernel.ke.timer import (IO_TIMER, KDPC, KTIMER, IoInitializeTimer, IoStartTimer, IoStopTimer,
                                      KeCancelTimer, KeInitializeDpc, KeInitializeTimer, KeInitializeTimerEx,
                                      KeInsertQueueDpc, KeReadStateTimer, KeRemoveQueueDpc, KeSetTimer,
                                      KeSetTimerEx)
from ringzero.kernel.mm.mdl import (MDL, IoAllocateMdl, IoFreeMdl, MmBuildMdlForNonPagedPool,
                                    MmGetMdlByteCount, MmGetMdlVirtualAddress, MmGetSystemAddressForMdl,
                                    MmGetSystemAddressForMdlSafe, MmMapLockedPages, MmMapLockedPagesSpecifyCache,
                                    MmProbeAndLockPages, MmUnlockPages, MmUnmapLockedPages)
from ringzero.kernel.mm.pool import (PAGE_SIZE, ExAllocatePool, ExAllocatePool2, ExAllocatePoolWithTag, ExFreePool,
                                     ExFreePoolWithTag)
from ringzero.kernel.mm.user import (AccessViolation, ExRaiseStatus, NtException, ProbeForRead, ProbeForWrite,
                                     RtlCompareMemory, RtlCopyMemory, RtlFillMemory, RtlMoveMemory, RtlZeroMemory,
                                     UserAddress)
from ringzero.kernel.ob.events import (ExEventObjectType, ExMutantObjectType, ExSemaphoreObjectType, IoFileObjectType,
                                       OBJECT_HANDLE_INFORMATION, ObDereferenceObject, ObfDereferenceObject,
                                       ObReferenceObject, ObReferenceObjectByHandle, PsProcessType)
from ringzero.kernel.mm.physical import MmGetPhysicalAddress, PhysicalAddressUnavailable
from ringzero.kernel.svc.registry import (KEY_VALUE_INFORMATION, OBJECT_ATTRIBUTES, RTL_QUERY_REGISTRY_TABLE,
                                          InitializeObjectAttributes, RtlQueryRegistryValues, ZwClose, ZwOpenKey,
                                          ZwQueryValueKey)
from ringzero.kernel.ps.lookup import (PsGetProcessCreateTimeQuadPart, PsGetProcessExitStatus,
                                      PsGetProcessImageFileName, PsGetProcessInheritedFromUniqueProcessId,
                                      PsLookupProcessByProcessId)
from ringzero.kernel.ps.notify import (CLIENT_ID, PS_CREATE_NOTIFY_INFO, PsSetCreateProcessNotifyRoutine,
                                      PsSetCreateProcessNotifyRoutineEx)
from ringzero.kernel.verifier import DriverBugcheck
from ringzero.nt.access import *  # noqa: F401,F403
from ringzero.nt.ioctl import *  # noqa: F401,F403
from ringzero.nt.strings import upcase as _upcase
from ringzero.nt.irp import *  # noqa: F401,F403
from ringzero.nt.registry import *  # noqa: F401,F403
from ringzero.nt.status import *  # noqa: F401,F403

IofCompleteRequest = IoCompleteRequest
IofCallDriver = IoCallDriver

TRUE = True
FALSE = False
NULL = None
EXCEPTION_EXECUTE_HANDLER = 1


def sizeof(t) -> int:
    """sizeof for ctypes types and instances, and the pointer-sized names."""
    if isinstance(t, int):
        return t
    size = getattr(t, "_sizeof_", None)      # a structure kept as a Python class (FAST_IO_DISPATCH)
    return size if size is not None else _ctypes.sizeof(t)


PVOID = _ctypes.c_void_p
HANDLE = _ctypes.c_void_p
ULONG = _ctypes.c_uint32
LONG = _ctypes.c_int32
DWORD = _ctypes.c_uint32
USHORT = _ctypes.c_uint16
UCHAR = _ctypes.c_uint8
ULONG_PTR = _ctypes.c_size_t
ULONGLONG = _ctypes.c_uint64
LONGLONG = _ctypes.c_int64
PHYSICAL_ADDRESS = _ctypes.c_int64


class UNICODE_STRING(str):
    """A counted string that is also a ``str``."""

    @property
    def Buffer(self) -> str:
        return str(self)

    @property
    def Length(self) -> int:
        return 2 * len(self)

    @property
    def MaximumLength(self) -> int:
        return 2 * len(self) + 2


def RtlInitUnicodeString(DestinationString, SourceString=None) -> UNICODE_STRING:
    """``us = RtlInitUnicodeString("...")``: Python strings are immutable, so the
    initialised string is returned (a one-argument form is accepted too)."""
    return UNICODE_STRING(DestinationString if SourceString is None else SourceString)


def RtlCompareUnicodeString(String1, String2, CaseInSensitive: bool) -> int:
    a, b = str(String1), str(String2)
    if CaseInSensitive:
        a, b = _upcase(a), _upcase(b)
    return (a > b) - (a < b)


def RtlEqualUnicodeString(String1, String2, CaseInSensitive: bool) -> bool:
    return RtlCompareUnicodeString(String1, String2, CaseInSensitive) == 0


def RtlCopyUnicodeString(DestinationString, SourceString) -> UNICODE_STRING:
    return UNICODE_STRING(SourceString or "")


def RtlUpcaseUnicodeString(DestinationString, SourceString, AllocateDestinationString: bool = False):
    return STATUS_SUCCESS, UNICODE_STRING(_upcase(str(SourceString)))  # noqa: F405


def RtlFreeUnicodeString(UnicodeString) -> None:
    pass


def NT_SUCCESS(Status: int) -> bool:  # noqa: F811 (the status module's, spelled here for readers)
    from ringzero.nt.status import NT_SUCCESS as _ok
    return _ok(Status)
