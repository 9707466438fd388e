"""A test driver for the process manager's notify routines and process lookups.

\\Device\\<service> (link \\??\\<service>), so the module can be loaded twice
under two service names.  Everything a routine sees is kept per pid; a
command line holding MARK makes the routines also KdPrint each call, so a
test can tell from the log that a routine was (or was not) called.

IOCTL_REGISTER   in "<I" ROUTINE_* bits: PsSetCreateProcessNotifyRoutine(Ex); completes with its status
IOCTL_REMOVE     in "<I" ROUTINE_* bits: the same with Remove=TRUE
IOCTL_SEEN       in "<I" pid; out JSON: what the routines were told about it
IOCTL_LOOKUP     in "<I" pid; out JSON: PsLookupProcessByProcessId and the accessors (dereferenced after)
IOCTL_FAULT      in "<I" 1/0: the Ex routine raises on every call
IOCTL_DENY       in a UTF-8 token: the Ex routine denies creations whose command line holds it
IOCTL_FORGET     DriverUnload will leave the routines registered (a driver bug)
"""

import collections
import json
import struct

from ringzero.ddk import *

DEV = FILE_DEVICE_UNKNOWN
IOCTL_REGISTER = CTL_CODE(DEV, 0x900, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_REMOVE = CTL_CODE(DEV, 0x901, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_SEEN = CTL_CODE(DEV, 0x902, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_LOOKUP = CTL_CODE(DEV, 0x903, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_FAULT = CTL_CODE(DEV, 0x904, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_DENY = CTL_CODE(DEV, 0x905, METHOD_BUFFERED, FILE_ANY_ACCESS)
IOCTL_FORGET = CTL_CODE(DEV, 0x906, METHOD_BUFFERED, FILE_ANY_ACCESS)

ROUTINE_EX = 1
ROUTINE_PLAIN = 2
MARK = "rz-notify-mark"
KEEP = 20000

g_Lock = KMUTEX()
g_Seen = collections.OrderedDict()   # pid -> list of calls, at most KEEP pids
g_Marked = set()
g_Fault = False
g_Deny = None
g_Forget = False
g_Registered = 0
g_Name = ""


def _note(pid, entry):
    KeWaitForMutexObject(g_Lock, Executive, KernelMode, False, None)
    g_Seen.setdefault(pid, []).append(entry)
    while len(g_Seen) > KEEP:
        g_Seen.popitem(last=False)
    KeReleaseMutex(g_Lock, False)


def NotifyEx(Process, ProcessId, CreateInfo):
    if CreateInfo is not None:
        entry = {"kind": "ex-create", "ppid": CreateInfo.ParentProcessId,
                 "creating_thread": [CreateInfo.CreatingThreadId.UniqueProcess,
                                     CreateInfo.CreatingThreadId.UniqueThread],
                 "image": CreateInfo.ImageFileName, "command_line": CreateInfo.CommandLine,
                 "full_name": CreateInfo.FileOpenNameAvailable, "object": id(Process),
                 "pid_of_object": PsGetProcessId(Process), "irql": KeGetCurrentIrql(),
                 "context_pid": PsGetCurrentProcessId()}
        if MARK in (CreateInfo.CommandLine or ""):
            g_Marked.add(ProcessId)
            KdPrint(("%s: create %d\n", g_Name, ProcessId))
        if g_Deny and g_Deny in (CreateInfo.CommandLine or ""):
            CreateInfo.CreationStatus = STATUS_ACCESS_DENIED
    else:
        entry = {"kind": "ex-exit", "exit_status": PsGetProcessExitStatus(Process), "object": id(Process),
                 "image_file_name": PsGetProcessImageFileName(Process)}
        if ProcessId in g_Marked:
            g_Marked.discard(ProcessId)
            KdPrint(("%s: exit %d\n", g_Name, ProcessId))
    _note(ProcessId, entry)
    if g_Fault:
        raise RuntimeError("notifytest: a notify routine that raises")


def Notify(ParentId, ProcessId, Create):
    _note(ProcessId, {"kind": "plain", "ppid": ParentId, "create": bool(Create)})


def _complete(Irp, status, info=0):
    Irp.IoStatus.Status = status
    Irp.IoStatus.Information = info
    IoCompleteRequest(Irp, IO_NO_INCREMENT)
    return status


def _reply_json(Irp, outlen, obj):
    data = json.dumps(obj).encode()
    if len(data) > outlen:
        return _complete(Irp, STATUS_BUFFER_TOO_SMALL)
    Irp.AssociatedIrp.SystemBuffer[:len(data)] = data
    return _complete(Irp, STATUS_SUCCESS, len(data))


def _set(bits, remove):
    global g_Registered
    status = STATUS_SUCCESS
    if bits & ROUTINE_EX:
        status = PsSetCreateProcessNotifyRoutineEx(NotifyEx, remove)
        if NT_SUCCESS(status):
            g_Registered = (g_Registered & ~ROUTINE_EX) | (0 if remove else ROUTINE_EX)
    if NT_SUCCESS(status) and bits & ROUTINE_PLAIN:
        status = PsSetCreateProcessNotifyRoutine(Notify, remove)
        if NT_SUCCESS(status):
            g_Registered = (g_Registered & ~ROUTINE_PLAIN) | (0 if remove else ROUTINE_PLAIN)
    return status


def _lookup(pid):
    status, Process = PsLookupProcessByProcessId(pid)
    out = {"status": status}
    if NT_SUCCESS(status):
        out.update(pid=PsGetProcessId(Process), image_file_name=PsGetProcessImageFileName(Process),
                   ppid=PsGetProcessInheritedFromUniqueProcessId(Process),
                   create_time=PsGetProcessCreateTimeQuadPart(Process),
                   exit_status=PsGetProcessExitStatus(Process), object=id(Process))
        ObDereferenceObject(Process)
    return out


def DispatchControl(DeviceObject, Irp):
    global g_Fault, g_Deny, g_Forget
    stack = IoGetCurrentIrpStackLocation(Irp)
    code = stack.Parameters.DeviceIoControl.IoControlCode
    inlen = stack.Parameters.DeviceIoControl.InputBufferLength
    outlen = stack.Parameters.DeviceIoControl.OutputBufferLength
    buf = Irp.AssociatedIrp.SystemBuffer
    if code in (IOCTL_REGISTER, IOCTL_REMOVE, IOCTL_SEEN, IOCTL_LOOKUP, IOCTL_FAULT) and inlen < 4:
        return _complete(Irp, STATUS_INVALID_BUFFER_SIZE)
    if code == IOCTL_REGISTER:
        return _complete(Irp, _set(struct.unpack_from("<I", buf)[0], False))
    if code == IOCTL_REMOVE:
        return _complete(Irp, _set(struct.unpack_from("<I", buf)[0], True))
    if code == IOCTL_SEEN:
        (pid,) = struct.unpack_from("<I", buf)
        KeWaitForMutexObject(g_Lock, Executive, KernelMode, False, None)
        seen = list(g_Seen.get(pid, []))
        KeReleaseMutex(g_Lock, False)
        return _reply_json(Irp, outlen, seen)
    if code == IOCTL_LOOKUP:
        return _reply_json(Irp, outlen, _lookup(struct.unpack_from("<I", buf)[0]))
    if code == IOCTL_FAULT:
        g_Fault = bool(struct.unpack_from("<I", buf)[0])
        return _complete(Irp, STATUS_SUCCESS)
    if code == IOCTL_DENY:
        g_Deny = bytes(buf[:inlen]).decode() if inlen else None
        return _complete(Irp, STATUS_SUCCESS)
    if code == IOCTL_FORGET:
        g_Forget = True
        return _complete(Irp, STATUS_SUCCESS)
    return _complete(Irp, STATUS_INVALID_DEVICE_REQUEST)


def DispatchCreateClose(DeviceObject, Irp):
    return _complete(Irp, STATUS_SUCCESS)


def DriverUnload(DriverObject):
    if not g_Forget:
        _set(g_Registered, True)
    IoDeleteSymbolicLink("\\??\\" + g_Name)
    IoDeleteDevice(DriverObject.DeviceObject)


def DriverEntry(DriverObject, RegistryPath):
    global g_Name
    g_Name = str(RegistryPath).rsplit("\\", 1)[-1]
    status, device = IoCreateDevice(DriverObject, 0, "\\Device\\" + g_Name, FILE_DEVICE_UNKNOWN, 0, False)
    if not NT_SUCCESS(status):
        return status
    status = IoCreateSymbolicLink("\\??\\" + g_Name, "\\Device\\" + g_Name)
    if not NT_SUCCESS(status):
        IoDeleteDevice(device)
        return status
    DriverObject.MajorFunction[IRP_MJ_CREATE] = DispatchCreateClose
    DriverObject.MajorFunction[IRP_MJ_CLOSE] = DispatchCreateClose
    DriverObject.MajorFunction[IRP_MJ_DEVICE_CONTROL] = DispatchControl
    DriverObject.DriverUnload = DriverUnload
    return STATUS_SUCCESS
