"""The I/O manager's side of the program calls: open, close, read, write,
device control and cancel, each turned into an IRP sent to the device stack.

Every request completes through `_complete`, NT's IopCompleteRequest: the
buffered copy-back (only `min(Information, length)` bytes, and nothing when
the status is an error), the OVERLAPPED event, the IRP's reference on the file
object, and the program's reply.
"""

from __future__ import annotations

import threading

from ringzero.kernel import dbg, system, verifier
from ringzero.kernel.context import PASSIVE_LEVEL, calling_driver, current
from ringzero.kernel.io.irp import IoCallDriver, IoCancelIrp, IoCompleteRequest
from ringzero.kernel.io.objects import DEVICE_OBJECT, FILE_OBJECT, IO_SECURITY_CONTEXT, IO_STATUS_BLOCK, IRP
from ringzero.kernel.ke import dispatcher as ke
from ringzero.kernel.mm.mdl import mdl_for_buffer
from ringzero.kernel.mm.user import AccessViolation, NtException, UserAddress, read_into, write_from
from ringzero.kernel.ob import object as ob
from ringzero.kernel.ob.handles import HandleError, release_entry
from ringzero.kernel.ob.namespace import ObjectError, dos_to_nt
from ringzero.kernel.ps import procinfo
from ringzero.kernel.se import security as se
from ringzero.nt import access as acc
from ringzero.nt import ioctl as ioc
from ringzero.nt import irp as irpc
from ringzero.nt import status as st

FILE_MAPPING = acc.FILE_GENERIC_MAPPING
IRP_MJ_CREATE = irpc.IRP_MJ_CREATE
IRP_MJ_CLOSE = irpc.IRP_MJ_CLOSE
IRP_MJ_CLEANUP = irpc.IRP_MJ_CLEANUP
IRP_MJ_READ = irpc.IRP_MJ_READ
IRP_MJ_WRITE = irpc.IRP_MJ_WRITE
IRP_MJ_DEVICE_CONTROL = irpc.IRP_MJ_DEVICE_CONTROL

_KIND_BUFFERED, _KIND_DIRECT, _KIND_NEITHER, _KIND_CREATE, _KIND_INTERNAL, _KIND_CLOSE = range(6)

# The largest system buffer the I/O manager allocates for one request (NT's
# quota-charged pool allocation failing): no reply can carry more anyway.
MAX_SYSTEM_BUFFER = 16 * 1024 * 1024

# An outstanding request's IRP and system buffers are charged to its process's
# quota (ps/process.py).  What it costs this kernel besides its buffers, as NT
# charges sizeof(IRP) and its stack locations (0xD0 + 0x48 on x64): the IRP,
# its stack location, the reply and the bookkeeping, measured at about 1.3 KiB
# a pending read (the kernel's RSS over 20 000 of them; a test checks it stays
# under this), so that the quota bounds the kernel's memory and not a number.
IRP_CHARGE = 2048


class Reply:
    """Where a request's answer goes.  The host implements it for programs;
    `Waiter` below serves the kernel's own synchronous IRPs."""

    def complete(self, irp: IRP, status: int, information: int, data) -> None:
        """Answer the request; `data` is not used after this returns (what is
        kept of it is copied), so its buffer may be used again."""
        raise NotImplementedError

    def pending(self, irp: IRP) -> None:
        pass

    def read_buffer(self, length: int):
        """Writable room for up to `length` bytes of the answer's data where the
        requester will find them (a fast read's Buffer), to be passed to
        complete() as `data` (a slice of it); None when there is none.  Until
        complete() or release_buffer(), nothing else reaches the requester."""
        return None

    def release_buffer(self) -> None:
        """Give up the room read_buffer() gave, unanswered (nothing if answered)."""


class Waiter(Reply):
    __slots__ = ("event", "status", "information")

    def __init__(self):
        self.event = ke.KEVENT(ke.NotificationEvent, False)
        self.status = st.STATUS_PENDING
        self.information = 0

    def complete(self, irp, status, information, data):
        self.status, self.information = status, information
        ke.KeSetEvent(self.event)

    def wait(self) -> int:
        ke.wait([self.event], False, None)
        return self.status


# -- building and sending IRPs -----------------------------------------------

def _new_irp(fo: FILE_OBJECT, major: int, process, reply: Reply, rid: int = 0, tid: int = 0,
             overlapped: bool = False) -> IRP:
    dev = fo.DeviceObject.top_of_stack()
    irp = IRP(dev.StackSize)
    irp.io_device = dev
    irp.major = major
    irp.process = process
    irp.file = fo
    irp.rid = rid
    irp.tid = tid
    irp.overlapped = overlapped
    irp.Tail.Overlay.Thread = tid
    irp.RequestorMode = 0 if process is None or process.is_system else 1
    irp.on_complete = _complete
    irp.io_reply = reply
    loc = irp.Stack[0]
    loc.MajorFunction = major
    loc.FileObject = fo
    return irp


def _send(irp: IRP) -> None:
    """Hand `irp` to the top of its device stack and enforce NT's contract on
    what the dispatch routine returns."""
    fo = irp.file
    dev = irp.io_device
    proc = irp.process
    if proc is not None:
        charge = irp.io_charge
        with proc.lock:
            over = charge and not proc.charge_locked(charge)
            if not over:
                proc.pending.add(irp)
        if over:
            # the quota-charged allocation failing at issue: no driver sees the request
            if irp.user_event_obj is not None:
                ob.dereference(irp.user_event_obj)
            irp.io_reply.complete(None, st.STATUS_QUOTA_EXCEEDED, 0, b"")
            if irp.file_locked:
                _unlock_file(fo)
            return
    ob.reference(fo)  # the IRP's reference, dropped in _complete
    try:
        status = IoCallDriver(dev, irp)
    except BaseException as exc:
        status = _dispatch_fault(irp, exc)
    if irp.completed:
        if status == st.STATUS_PENDING and verifier.enabled and not irp.PendingReturned:
            verifier.violation(verifier.IRP_NOT_MARKED_PENDING, driver=dev.DriverObject, raise_it=False)
        elif status != st.STATUS_PENDING and verifier.enabled and irp.PendingReturned:
            verifier.violation(verifier.IRP_MARKED_PENDING_NOT_RETURNED, f"returned {st.status_name(status)}",
                               driver=dev.DriverObject, raise_it=False)
        return
    if status != st.STATUS_PENDING:
        verifier.violation(verifier.IRP_NOT_COMPLETED, f"returned {st.status_name(status)}",
                           driver=dev.DriverObject, raise_it=False)
        irp.IoStatus.Status = status
        irp.CancelRoutine = None
        IoCompleteRequest(irp)
        return
    if verifier.enabled and irp.CurrentLocation >= 0 and not (irp.Stack[irp.CurrentLocation].Control & irpc.SL_PENDING_RETURNED):
        verifier.violation(verifier.IRP_NOT_MARKED_PENDING, driver=dev.DriverObject, raise_it=False)
    irp.io_reply.pending(irp)


def _fault_status(driver, where: str, what: str, exc: Exception) -> int:
    """Report an exception that escaped a driver routine; the status its
    request fails with (the NtException's own, else STATUS_DRIVER_INTERNAL_ERROR)."""
    if isinstance(exc, NtException):
        dbg.emit(f"{getattr(driver, 'name', '?')}: unhandled exception {st.status_name(exc.status)} in {where}: {exc}",
                 level="fault", source=getattr(driver, "name", "kernel"))
        if driver is not None:
            driver.note_fault()
        return exc.status
    dbg.fault(what, exc, driver)
    return st.STATUS_DRIVER_INTERNAL_ERROR


def _dispatch_fault(irp: IRP, exc: Exception) -> int:
    status = _fault_status(irp.driver, "dispatch", f"dispatch routine for {irpc.IRP_MJ_NAMES[irp.major]}", exc)
    if not irp.completed:
        irp.CancelRoutine = None
        irp.IoStatus.Status = status
        irp.IoStatus.Information = 0
        try:
            IoCompleteRequest(irp)
        except verifier.DriverBugcheck:
            pass
    return status


def _complete(irp: IRP) -> None:
    """IopCompleteRequest: runs once per IRP, in whatever thread completed it."""
    status = irp.IoStatus.Status & 0xFFFFFFFF
    info = irp.IoStatus.Information
    kind = irp.io_kind
    data = b""
    if kind == _KIND_BUFFERED or kind == _KIND_DIRECT:
        n = irp.out_length
        if info > n and verifier.enabled:
            verifier.violation(verifier.INFORMATION_TOO_LARGE, f"Information {info} > buffer {n}",
                               driver=irp.driver, raise_it=False)
        if status < 0xC0000000 and n:               # not NT_ERROR (status is a u32 here)
            info = min(info, n)
            src = irp.AssociatedIrp.SystemBuffer if kind == _KIND_BUFFERED else irp.MdlAddress.MappedSystemVa
            target = irp.copy_back
            if src is None:
                pass
            elif target is None:
                data = memoryview(src)[:info]      # copied once, into the reply
            elif info and not irp.process.exiting:
                try:
                    write_from(target.pid, int(target), memoryview(src)[:info])
                except AccessViolation:
                    status, info = st.STATUS_ACCESS_VIOLATION, 0
        elif status < 0xC0000000:
            info = 0 if irp.major in (IRP_MJ_READ, IRP_MJ_DEVICE_CONTROL) else info
    fo = irp.file
    if irp.major in (IRP_MJ_READ, IRP_MJ_WRITE) and fo.synchronous and status < 0x80000000:
        fo.CurrentByteOffset = irp.Stack[0].Parameters.ByteOffset + info
    proc = irp.process
    if proc is not None:
        with proc.lock:
            proc.pending.discard(irp)
            proc.io_charged -= irp.io_charge
    try:
        _answer(irp.io_reply, irp, irp.user_event_obj, status, info, data)
    finally:
        if irp.file_locked:
            _unlock_file(fo)
        if kind != _KIND_CLOSE:  # the object is already on its way out
            ob.dereference(fo)


def _answer(reply: Reply, irp: IRP | None, ev, status: int, info: int, data) -> None:
    """Send a request's answer, then signal its event (and let it go)."""
    if ev is None:
        reply.complete(irp, status, info, data)
        return
    try:
        reply.complete(irp, status, info, data)
    finally:
        ke.KeSetEvent(ev)
        ob.dereference(ev)


# -- open ----------------------------------------------------------------------

class _CreateReply(Reply):
    """Turns the create IRP's completion into a handle in the program's table."""

    __slots__ = ("outer", "access", "inherit")

    def __init__(self, outer: Reply, access: int, inherit: bool):
        self.outer, self.access, self.inherit = outer, access, inherit

    def complete(self, irp, status, information, data):
        fo = irp.file
        handle = 0
        if st.NT_SUCCESS(status):
            fo.opened = True
            try:
                handle = irp.process.handles.insert(fo, self.access, self.inherit)
            except HandleError as e:
                status = e.status
                # the driver accepted the open: it gets its cleanup now, its close
                # when the IRP's reference goes
                _file_last_handle(fo, irp.process)
        self.outer.complete(irp, status, handle, b"")

    def pending(self, irp):
        self.outer.pending(irp)


def open_file(process, path: str, desired_access: int, share: int, disposition: int, flags: int,
              reply: Reply, rid: int = 0, tid: int = 0) -> None:
    """NtCreateFile on a device: look up, check access, send IRP_MJ_CREATE."""
    try:
        nt_path = dos_to_nt(path)
        obj, rest = system.get().namespace.lookup(nt_path)
    except ObjectError as e:
        reply.complete(None, e.status, 0, b"")
        return
    if not isinstance(obj, DEVICE_OBJECT):
        reply.complete(None, st.STATUS_OBJECT_TYPE_MISMATCH if not rest else st.STATUS_OBJECT_PATH_NOT_FOUND, 0, b"")
        return
    device = obj
    driver = device.DriverObject
    if device.deleted or driver.unloading:
        reply.complete(None, st.STATUS_DELETE_PENDING, 0, b"")
        return
    if driver.faulted:
        reply.complete(None, st.STATUS_DRIVER_INTERNAL_ERROR, 0, b"")
        return
    if device.Flags & irpc.DO_DEVICE_INITIALIZING:
        reply.complete(None, st.STATUS_NO_SUCH_DEVICE, 0, b"")
        return
    check = not rest or device.Characteristics & ioc.FILE_DEVICE_SECURE_OPEN
    try:
        if check:
            granted = se.access_check(device.security, process, desired_access, FILE_MAPPING)
        else:
            granted = acc.map_generic(desired_access & ~acc.MAXIMUM_ALLOWED, FILE_MAPPING) | (
                acc.FILE_ALL_ACCESS if desired_access & acc.MAXIMUM_ALLOWED else 0)
    except se.AccessDenied:
        reply.complete(None, st.STATUS_ACCESS_DENIED, 0, b"")
        return
    with device.lock:
        if device.Flags & irpc.DO_EXCLUSIVE and device.ReferenceCount:
            reply.complete(None, st.STATUS_ACCESS_DENIED, 0, b"")
            return
        device.ReferenceCount += 1
    ob.reference(device)
    fo = FILE_OBJECT(device, rest)
    fo.process = process
    fo.synchronous = not (flags & irpc.FILE_FLAG_OVERLAPPED)
    fo.granted = granted
    ob.reference(fo)  # the creator's reference, dropped below once the handle holds one
    irp = _new_irp(fo, IRP_MJ_CREATE, process, _CreateReply(reply, granted, False), rid, tid)
    irp.io_kind = _KIND_CREATE
    p = irp.Stack[0].Parameters
    p.SecurityContext = IO_SECURITY_CONTEXT(granted)
    p.ShareAccess = share
    p.Options = (_disposition(disposition) << 24) | (flags & 0x00FFFFFF & ~irpc.FILE_FLAG_OVERLAPPED)
    p.FileAttributes = flags & 0xFFFF
    _send(irp)
    ob.dereference(fo)


def _disposition(win32: int) -> int:
    return {irpc.CREATE_NEW: irpc.FILE_CREATE, irpc.CREATE_ALWAYS: irpc.FILE_OVERWRITE_IF,
            irpc.OPEN_EXISTING: irpc.FILE_OPEN, irpc.OPEN_ALWAYS: irpc.FILE_OPEN_IF,
            irpc.TRUNCATE_EXISTING: irpc.FILE_OVERWRITE}.get(win32, irpc.FILE_OPEN)


def _file_last_handle(fo: FILE_OBJECT, process) -> None:
    """IRP_MJ_CLEANUP, in the context of the process closing the last handle:
    for a synchronous file object once the request in progress on it is done
    (its lock), except in a program's rundown, which has cancelled what it could
    and may not wait for a request that never completes."""
    if not fo.opened or fo.cleaned_up:
        return
    fo.cleaned_up = True
    locked = fo.synchronous and not (process is not None and process.exiting) and _lock_file(fo, process) == st.STATUS_SUCCESS
    try:
        w = Waiter()
        irp = _new_irp(fo, IRP_MJ_CLEANUP, process, w)
        irp.io_kind = _KIND_INTERNAL
        _send(irp)
        w.wait()
    finally:
        if locked:
            _unlock_file(fo)


def _file_delete(fo: FILE_OBJECT) -> None:
    """IRP_MJ_CLOSE when the last reference goes; then the device's count."""
    device = fo.DeviceObject
    try:
        if fo.opened and not fo.closed:
            fo.closed = True
            w = Waiter()
            irp = _new_irp(fo, IRP_MJ_CLOSE, None, w)
            irp.io_kind = _KIND_CLOSE
            with calling_driver(device.DriverObject):
                _send_close(irp)
            w.wait()
    finally:
        with device.lock:
            device.ReferenceCount -= 1
        ob.dereference(device)
        _maybe_finish_unload(device.DriverObject)


def _send_close(irp: IRP) -> None:
    dev = irp.io_device
    try:
        status = IoCallDriver(dev, irp)
    except BaseException as exc:
        status = _dispatch_fault(irp, exc)
    if not irp.completed and status != st.STATUS_PENDING:
        verifier.violation(verifier.IRP_NOT_COMPLETED, "IRP_MJ_CLOSE", driver=dev.DriverObject, raise_it=False)
        irp.IoStatus.Status = status
        IoCompleteRequest(irp)


def _maybe_finish_unload(driver) -> None:
    hook = getattr(driver, "on_last_reference", None)
    if hook is not None and driver.unloading:
        hook()


FILE_OBJECT.on_last_handle = lambda self, process: _file_last_handle(self, process)
FILE_OBJECT.on_delete = lambda self: _file_delete(self)


# -- handles --------------------------------------------------------------------

def close_handle(process, handle: int) -> int:
    try:
        entry = process.handles.remove(handle)
    except HandleError as e:
        return e.status
    release_entry(entry, process)
    return st.STATUS_SUCCESS


def reference_handle(process, handle: int, type_name: str | None, desired: int = 0):
    """ObReferenceObjectByHandle for a program's handle: (object, granted)."""
    try:
        e = process.handles.get(handle)
    except HandleError as err:
        raise NtException(err.status, str(err)) from None
    if type_name is not None and e.obj.type_name != type_name:
        raise NtException(st.STATUS_OBJECT_TYPE_MISMATCH, f"handle {handle:#x} is a {e.obj.type_name}, not a {type_name}")
    if desired and desired & ~e.access:
        raise NtException(st.STATUS_ACCESS_DENIED, f"handle {handle:#x} was not opened for access {desired & ~e.access:#x}")
    return ob.reference(e.obj), e.access


# -- the file object lock (IopLockFileObject) ---------------------------------------
#
# NT serialises what reaches the driver through a file object opened for
# synchronous I/O: NtReadFile, NtWriteFile and NtDeviceIoControlFile take the
# file object's lock before the driver sees anything (fast I/O included) and
# hold it until the request is done, and the close of its last handle takes it
# before IRP_MJ_CLEANUP.  So on one synchronous handle a second thread's request
# waits for the first: a ReadFile pending in one thread holds off a WriteFile,
# a DeviceIoControl or the CloseHandle of another until it completes (or
# CancelIoEx ends it).  A request that finds the lock busy waits in a kernel
# wait, as the NT thread does; the thread's other duties move on meanwhile (the
# ring poller's, a connection reader's), and the program's rundown ends the wait.

# Each waiting request holds a kernel thread (NT's holds the program's own), so
# one program may have this many waiting at once; past it a request fails with
# STATUS_INSUFFICIENT_RESOURCES rather than let a program that sends request
# after request on a handle it keeps busy make the kernel a thread for each.
MAX_LOCK_WAITS = 64

_waiters_lock = threading.Lock()


def _lock_file(fo: FILE_OBJECT, process=None) -> int:
    """IopLockFileObject: STATUS_SUCCESS once the caller holds `fo`'s lock, or
    the status its wait ended with (STATUS_ALERTED: the program is going away),
    or STATUS_INSUFFICIENT_RESOURCES if `process` has MAX_LOCK_WAITS waiting."""
    return st.STATUS_SUCCESS if fo.Busy.acquire(False) else _wait_for_file_lock(fo, process)


def _wait_for_file_lock(fo: FILE_OBJECT, process) -> int:
    """_lock_file's wait, once the lock was found busy."""
    with _waiters_lock:
        if process is not None:
            if process.lock_waits >= MAX_LOCK_WAITS:
                return st.STATUS_INSUFFICIENT_RESOURCES
            process.lock_waits += 1
        fo.Waiters += 1        # before the second look, so the holder's unlock sees it (or this look the unlock)
    try:
        while not fo.Busy.acquire(False):
            status = ke.KeWaitForSingleObject(fo.Lock)
            if status != st.STATUS_WAIT_0:
                return status
        return st.STATUS_SUCCESS
    finally:
        with _waiters_lock:
            fo.Waiters -= 1
            if process is not None:
                process.lock_waits -= 1


def _unlock_file(fo: FILE_OBJECT) -> None:
    """IopUnlockFileObject: let the lock go and wake a waiter, if there is one."""
    fo.Busy.release()
    if fo.Waiters:
        ke.KeSetEvent(fo.Lock)


def _begin(process, fo: FILE_OBJECT, event: int, reply: Reply):
    """What NtReadFile, NtWriteFile and NtDeviceIoControlFile do before the
    request proper: reference (and reset) the OVERLAPPED event, then take a
    synchronous file object's lock.  (True, the event or None, whether the lock
    was taken); (False, None, False) when the request was answered here."""
    ev = None
    if event:
        ok, ev = _user_event(process, event, reply)
        if not ok:
            return False, None, False
    if not fo.synchronous:
        return True, ev, False
    if fo.Busy.acquire(False):
        return True, ev, True
    status = _wait_for_file_lock(fo, process)
    if status == st.STATUS_SUCCESS:
        return True, ev, True
    if ev is not None:
        ob.dereference(ev)
    reply.complete(None, status, 0, b"")
    return False, None, False


# -- read, write, device control ------------------------------------------------------

def _file_entry_status(process, handle: int, need: int):
    """(the handle's entry, STATUS_SUCCESS) if it is a file handle granted
    `need` (any of its bits); else (None, the status to fail the request with)."""
    e = process.handles.lookup(handle)
    if e is None:
        return None, st.STATUS_INVALID_HANDLE
    if e.obj.type_name != "File":
        return None, st.STATUS_OBJECT_TYPE_MISMATCH
    if need and not e.access & need:
        return None, st.STATUS_ACCESS_DENIED
    return e, st.STATUS_SUCCESS


def _file_entry(process, handle: int, need: int, reply: Reply):
    """The handle's entry, as _file_entry_status; else the request is answered
    here and None returned."""
    e, status = _file_entry_status(process, handle, need)
    if e is None:
        reply.complete(None, status, 0, b"")
    return e


def _user_event(process, event_handle: int, reply: Reply):
    """The OVERLAPPED event: referenced, and reset, as the I/O manager does at issue."""
    try:
        ev, _ = reference_handle(process, event_handle, "Event", acc.EVENT_MODIFY_STATE)
    except NtException as e:
        reply.complete(None, e.status, 0, b"")
        return False, None
    ke.KeClearEvent(ev)
    return True, ev


def device_io_control(process, handle: int, code: int, in_data, out_length: int, in_addr: int, out_addr: int,
                      event: int, reply: Reply, rid: int = 0, tid: int = 0, overlapped: bool = False,
                      out_data=None) -> None:
    entry = _file_entry(process, handle, 0, reply)
    if entry is None:
        return
    fo = entry.obj
    need = (code >> 14) & 3           # ACCESS_FROM_CTL_CODE
    if need:
        granted = entry.access
        if ((need & ioc.FILE_READ_ACCESS and not granted & acc.FILE_READ_DATA)
                or (need & ioc.FILE_WRITE_ACCESS and not granted & acc.FILE_WRITE_DATA)):
            reply.complete(None, st.STATUS_ACCESS_DENIED, 0, b"")
            return
    if out_length > MAX_SYSTEM_BUFFER and code & 3 != ioc.METHOD_NEITHER:
        reply.complete(None, st.STATUS_INSUFFICIENT_RESOURCES, 0, b"")
        return
    ok, ev, locked = _begin(process, fo, event, reply)
    if not ok:
        return
    sent = False
    try:
        irp = _new_irp(fo, IRP_MJ_DEVICE_CONTROL, process, reply, rid, tid, overlapped)
        irp.file_locked = locked
        irp.user_event_obj = ev
        in_length = len(in_data) if in_addr == 0 or in_data else 0
        method = code & 3
        irp.io_charge = IRP_CHARGE + (0 if method == ioc.METHOD_NEITHER else max(in_length, out_length)
                                      if method == ioc.METHOD_BUFFERED else in_length + out_length)
        p = irp.Stack[0].Parameters
        p.IoControlCode = code
        p.OutputBufferLength = out_length
        irp.out_length = out_length
        if method == ioc.METHOD_NEITHER:
            irp.io_kind = _KIND_NEITHER
            pid = process.pid
            p.InputBufferLength = len(in_data) if in_data is not None else 0
            p.Type3InputBuffer = UserAddress(in_addr, pid, p.InputBufferLength) if in_addr else None
            irp.UserBuffer = UserAddress(out_addr, pid, out_length) if out_addr else None
        elif method == ioc.METHOD_BUFFERED:
            irp.io_kind = _KIND_BUFFERED
            p.InputBufferLength = in_length
            size = max(in_length, out_length)
            if size:
                buf = bytearray(size)
                buf[:in_length] = in_data
                irp.AssociatedIrp.SystemBuffer = buf
        else:
            irp.io_kind = _KIND_DIRECT
            p.InputBufferLength = in_length
            if in_length:
                irp.AssociatedIrp.SystemBuffer = bytearray(in_data)
            if out_length:
                out = bytearray(out_length)
                if method == ioc.METHOD_IN_DIRECT and out_data:
                    out[:len(out_data)] = out_data
                irp.MdlAddress = mdl_for_buffer(out)
        sent = True
        _send(irp)
    finally:
        if locked and not sent:      # (an IRP's holds the lock until its completion)
            _unlock_file(fo)


# -- fast I/O (objects.FAST_IO_DISPATCH) -----------------------------------------

_FAST_READ_TAKEN = (st.STATUS_SUCCESS, st.STATUS_BUFFER_OVERFLOW, st.STATUS_END_OF_FILE)
_FAST_WRITE_TAKEN = (st.STATUS_SUCCESS,)


def _fast_routine(fo: FILE_OBJECT, name: str):
    """(the FAST_IO_DISPATCH routine `name` NtReadFile/NtWriteFile would call
    for `fo`, its device), or None: only for a file object opened for
    synchronous I/O whose PrivateCacheMap its driver set."""
    if fo.PrivateCacheMap is None or not fo.synchronous:
        return None
    dev = fo.DeviceObject.top_of_stack()
    routine = getattr(dev.DriverObject.FastIoDispatch, name, None)
    return (routine, dev) if routine is not None else None


def _fast_io(routine, fo: FILE_OBJECT, dev: DEVICE_OBJECT, offset: int, length: int, buf, taken: tuple,
             wait: bool = True):
    """Call a fast I/O routine as NtReadFile/NtWriteFile do: Wait TRUE (unless
    `wait` is False), in the
    caller's context, the file object referenced meanwhile.  Its IO_STATUS_BLOCK
    if it did the request with a status in `taken`, None if the request is to
    go as an IRP.  A routine that raises has failed the request (it may have
    done part of it): the fault is reported as a dispatch routine's is, and its
    status is the answer."""
    iosb = IO_STATUS_BLOCK()
    driver = dev.DriverObject
    ctx = current
    saved_driver, irql = ctx.driver, ctx.irql
    ctx.driver = driver
    if irql != PASSIVE_LEVEL:
        ctx.irql = PASSIVE_LEVEL
    ob.reference(fo)
    try:
        done = routine(fo, fo.CurrentByteOffset if offset < 0 else offset, length, wait, 0, buf, iosb, dev)
    except BaseException as exc:
        iosb.Status = _fault_status(driver, "fast I/O", f"fast I/O routine {getattr(routine, '__name__', '?')}", exc)
        iosb.Information = 0
        return iosb
    finally:
        ctx.driver, ctx.irql = saved_driver, irql
        ob.dereference(fo)
    if done not in (True, False):      # (1 and 0 are TRUE and FALSE)
        verifier.violation("DRIVER_RETURNED_NON_BOOLEAN", f"{getattr(routine, '__name__', routine)} returned {done!r}",
                           driver=driver, raise_it=False)
        return None
    if not done:
        return None
    driver.counters["fast_io"] += 1
    return iosb if iosb.Status & 0xFFFFFFFF in taken else None


def read_file(process, handle: int, length: int, offset: int, buf_addr: int, event: int, reply: Reply,
              rid: int = 0, tid: int = 0, overlapped: bool = False, user_buffer: bool = False) -> None:
    """NtReadFile.  With `user_buffer` the copy-back goes straight into the
    program's buffer at `buf_addr` rather than into the reply."""
    entry = _file_entry(process, handle, acc.FILE_READ_DATA, reply)
    if entry is None:
        return
    fo = entry.obj
    if length > MAX_SYSTEM_BUFFER:
        reply.complete(None, st.STATUS_INSUFFICIENT_RESOURCES, 0, b"")
        return
    ok, ev, locked = _begin(process, fo, event, reply)
    if not ok:
        return
    sent = False
    try:
        if _read_fast(process, fo, length, offset, buf_addr, user_buffer, ev, reply):
            return
        irp = _new_irp(fo, IRP_MJ_READ, process, reply, rid, tid, overlapped)
        irp.file_locked = locked
        irp.io_charge = IRP_CHARGE + length
        irp.user_event_obj = ev
        p = irp.Stack[0].Parameters
        p.Length = length
        p.ByteOffset = fo.CurrentByteOffset if offset < 0 else offset
        irp.out_length = length
        _attach_buffer(irp, bytearray(length), buf_addr, process)
        if user_buffer and buf_addr and irp.io_kind != _KIND_NEITHER:
            irp.copy_back = UserAddress(buf_addr, process.pid, length)
        sent = True
        _send(irp)
    finally:
        if locked and not sent:      # (an IRP's holds the lock until its completion)
            _unlock_file(fo)


def _read_fast(process, fo: FILE_OBJECT, length: int, offset: int, buf_addr: int, user_buffer: bool, ev,
               reply: Reply) -> bool:
    """The driver's FastIoRead, if it has one for `fo` and does this read:
    then the read is answered here (True).  Its Buffer is the caller's own, as
    in NT (below): first the room of the reply's data in the program's
    response ring, if the reply can be built there (offered with Wait FALSE,
    since nothing else reaches the program until it is done), then the
    program's last read buffer."""
    fast = _fast_routine(fo, "FastIoRead")
    if fast is None:
        return False
    routine, dev = fast
    if length and not user_buffer:
        room = reply.read_buffer(length)
        if room is not None:
            answered = False
            try:
                iosb = _fast_io(routine, fo, dev, offset, length, room, _FAST_READ_TAKEN, wait=False)
                if iosb is not None:
                    status, info = _fast_read_outcome(iosb, length, dev)
                    _answer(reply, None, ev, status, info, room[:info] if info else b"")
                    answered = True
                    return True
            finally:
                if not answered:
                    reply.release_buffer()
    spare = process.read_buffers
    try:
        buf = spare.pop()
    except IndexError:
        buf = None
    if buf is None or len(buf) != length:
        buf = bytearray(length)
    iosb = _fast_io(routine, fo, dev, offset, length, buf, _FAST_READ_TAKEN)
    if iosb is None:
        _keep_read_buffer(spare, buf)
        return False
    status, info = _fast_read_outcome(iosb, length, dev)
    data = b""
    if user_buffer and buf_addr:
        if info:
            try:
                write_from(process.pid, buf_addr, memoryview(buf)[:info])
            except AccessViolation:
                status, info = st.STATUS_ACCESS_VIOLATION, 0
    elif info:
        data = memoryview(buf)[:info]
    _answer(reply, None, ev, status, info, data)
    _keep_read_buffer(spare, buf)
    return True


def _fast_read_outcome(iosb: IO_STATUS_BLOCK, length: int, dev: DEVICE_OBJECT) -> tuple[int, int]:
    """(status, bytes to copy back) of a fast read the routine did."""
    status, info = iosb.Status & 0xFFFFFFFF, iosb.Information
    if status >= 0xC0000000:
        return status, 0
    if info > length:
        verifier.violation(verifier.INFORMATION_TOO_LARGE, f"Information {info} > buffer {length}",
                           driver=dev.DriverObject, raise_it=False)
        info = length
    return status, info


# A fast read's Buffer is the caller's own buffer in NT, holding what the
# program had there.  Here it stands for that buffer: where the reply's data
# goes in the program's response ring, or else the process's last fast read's
# buffer, kept for its next one.  Either way, what a driver may see in it before
# writing is that program's own earlier data, never another's, and it is not
# zeroed anew for each read.
KEPT_READ_BUFFER = 256 * 1024


def _keep_read_buffer(spare: list, buf: bytearray) -> None:
    if not spare and len(buf) <= KEPT_READ_BUFFER:
        spare.append(buf)


def write_file(process, handle: int, data, offset: int, buf_addr: int, event: int, reply: Reply,
               rid: int = 0, tid: int = 0, overlapped: bool = False, length: int | None = None,
               captured: bool = False) -> None:
    """NtWriteFile.  `data` is None when the bytes are still in the program's
    buffer (`length` bytes at `buf_addr`): the I/O manager copies them from
    there into the system buffer, as NT does in the caller's context.  With
    `captured`, `data` is a bytearray already copied from the program and
    nobody else's: it becomes the system buffer as it is."""
    entry = _file_entry(process, handle, acc.FILE_WRITE_DATA | acc.FILE_APPEND_DATA, reply)
    if entry is None:
        return
    fo = entry.obj
    if data is None:
        if length > MAX_SYSTEM_BUFFER:
            reply.complete(None, st.STATUS_INSUFFICIENT_RESOURCES, 0, b"")
            return
        buf = bytearray(length)
        if fo.DeviceObject.top_of_stack().Flags & (irpc.DO_BUFFERED_IO | irpc.DO_DIRECT_IO):
            try:
                read_into(process.pid, buf_addr, buf)
            except AccessViolation:
                reply.complete(None, st.STATUS_ACCESS_VIOLATION, 0, b"")
                return
    else:
        buf = data if captured else bytearray(data)
    ok, ev, locked = _begin(process, fo, event, reply)
    if not ok:
        return
    sent = False
    try:
        fast = _fast_routine(fo, "FastIoWrite")
        if fast is not None:
            iosb = _fast_io(fast[0], fo, fast[1], offset, len(buf), buf, _FAST_WRITE_TAKEN)
            if iosb is not None:
                _answer(reply, None, ev, *_fast_write_outcome(iosb), b"")
                return
        irp = _new_irp(fo, IRP_MJ_WRITE, process, reply, rid, tid, overlapped)
        irp.file_locked = locked
        irp.io_charge = IRP_CHARGE + len(buf)
        irp.user_event_obj = ev
        p = irp.Stack[0].Parameters
        p.Length = len(buf)
        p.ByteOffset = fo.CurrentByteOffset if offset < 0 else offset
        _attach_buffer(irp, buf, buf_addr, process)
        irp.io_kind = _KIND_INTERNAL  # a write copies nothing back
        sent = True
        _send(irp)
    finally:
        if locked and not sent:      # (an IRP's holds the lock until its completion)
            _unlock_file(fo)


def write_in_place(process, handle: int, data, offset: int, reply: Reply) -> bool:
    """NtWriteFile's fast I/O for a synchronous write whose data still lies in
    the program's request ring (`data`, a view of it, good only during this
    call): as in NT, the driver's FastIoWrite gets the caller's own buffer,
    not a system buffer.  It is called with Wait FALSE, as by a caller that
    cannot block (NT's file server calls fast I/O so), since the ring's room
    is not given back until this returns.  True if the write was answered;
    False, having done nothing, if anything else is needed (an error to
    report, the file object's lock, an IRP): the caller then copies the data
    out and goes on with write_file."""
    e, _ = _file_entry_status(process, handle, acc.FILE_WRITE_DATA | acc.FILE_APPEND_DATA)
    if e is None:
        return False
    fo = e.obj
    fast = _fast_routine(fo, "FastIoWrite")
    if fast is None or not fo.Busy.acquire(False):
        return False
    try:
        iosb = _fast_io(fast[0], fo, fast[1], offset, len(data), data, _FAST_WRITE_TAKEN, wait=False)
        if iosb is None:
            return False
        reply.complete(None, *_fast_write_outcome(iosb), b"")
        return True
    finally:
        _unlock_file(fo)


def _fast_write_outcome(iosb: IO_STATUS_BLOCK) -> tuple[int, int]:
    """(status, Information to answer with) of a fast write the routine did."""
    status = iosb.Status & 0xFFFFFFFF
    return status, (iosb.Information if status < 0xC0000000 else 0)


def _attach_buffer(irp: IRP, buf: bytearray, addr: int, process) -> None:
    flags = irp.io_device.Flags
    if flags & irpc.DO_BUFFERED_IO:
        irp.AssociatedIrp.SystemBuffer = buf
        irp.io_kind = _KIND_BUFFERED
    elif flags & irpc.DO_DIRECT_IO:
        irp.MdlAddress = mdl_for_buffer(buf)
        irp.io_kind = _KIND_DIRECT
    else:
        irp.UserBuffer = UserAddress(addr, process.pid, len(buf)) if addr else None
        irp.io_kind = _KIND_NEITHER


def cancel_io(process, handle: int, tid: int, rid: int = 0, any_thread: bool = False) -> int:
    """CancelIo (this thread's requests on the handle) / CancelIoEx (any thread's,
    or the one request `rid`)."""
    try:
        fo = process.handles.get(handle).obj
    except HandleError as e:
        return e.status
    with process.lock:
        targets = [i for i in process.pending if i.file is fo and (any_thread or i.tid == tid)
                   and (not rid or i.rid == rid)]
    for irp in targets:
        IoCancelIrp(irp)
    if any_thread and not targets:
        return st.STATUS_NOT_FOUND
    return st.STATUS_SUCCESS


def cancel_all(process) -> int:
    """Rundown's first step: cancel every IRP the process has outstanding."""
    with process.lock:
        targets = list(process.pending)
    for irp in targets:
        IoCancelIrp(irp)
    return len(targets)


# -- a thread's exit (IoCancelThreadIo) ------------------------------------------------
#
# NT cancels the IRPs a thread has outstanding when the thread exits, so an
# overlapped read issued by a thread that then ends completes with
# STATUS_CANCELLED (ERROR_OPERATION_ABORTED) instead of later with data.  Linux
# tells nobody when a thread of another process ends, so while a program has
# IRPs outstanding a system thread looks every THREAD_CHECK_SECONDS whether each
# thread that issued one still exists (/proc/PID/task/TID), and cancels the
# IRPs of those that do not; only for a program in our pid namespace, whose
# thread ids name its tasks here (EPROCESS.tids_here, from its NSpid line at
# HELLO).  (A whole program's exit is its rundown, at once.)

THREAD_CHECK_SECONDS = 0.2


def cancel_exited_threads(processes) -> int:
    """IoCancelThreadIo for every thread of `processes` that has exited with
    IRPs outstanding; how many IRPs were cancelled."""
    cancelled = 0
    for proc in processes:
        if not proc.pending or proc.exiting or proc.is_system:
            continue
        with proc.lock:
            by_thread: dict[int, list] = {}
            for irp in proc.pending:
                if irp.tid:
                    by_thread.setdefault(irp.tid, []).append(irp)
        if not by_thread or not proc.tids_here:
            continue
        for tid, irps in by_thread.items():
            if not procinfo.thread_exited(proc.pid, tid):
                continue      # (a process that is gone is its rundown's)
            for irp in irps:
                IoCancelIrp(irp)
            cancelled += len(irps)
    return cancelled


class ThreadWatch:
    """The system thread that runs what NT's exiting thread does for the
    threads of programs that have ended (cancel_exited_threads, and the
    callables in `also`, each given the processes), at PASSIVE_LEVEL in the
    system process (cancel routines may wait)."""

    def __init__(self, system_process, processes, also=()):
        self.system_process = system_process
        self.processes = processes        # the live table: pid -> EPROCESS
        self.checks = (cancel_exited_threads, *also)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ringzero-threadwatch", daemon=True)

    def start(self) -> "ThreadWatch":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        current.process = self.system_process
        while not self.stopped.wait(THREAD_CHECK_SECONDS):
            try:
                processes = list(self.processes.values())
                for check in self.checks:
                    check(processes)
            except Exception as e:  # a bug of ours must not end the watch
                dbg.fault("thread watch", e)
