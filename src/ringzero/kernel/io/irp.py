"""IRP routines: stack locations, IoCallDriver, completion and cancellation."""

from __future__ import annotations

import threading

from ringzero.kernel import dbg, verifier
from ringzero.kernel.context import DISPATCH_LEVEL, PASSIVE_LEVEL, calling_driver, current
from ringzero.kernel.io.objects import IO_STACK_LOCATION, IRP
from ringzero.nt import irp as irpc
from ringzero.nt import status as st

STATUS_MORE_PROCESSING_REQUIRED = st.STATUS_MORE_PROCESSING_REQUIRED
SL_PENDING_RETURNED = irpc.SL_PENDING_RETURNED
SL_INVOKE_ON_SUCCESS = irpc.SL_INVOKE_ON_SUCCESS
SL_INVOKE_ON_ERROR = irpc.SL_INVOKE_ON_ERROR
SL_INVOKE_ON_CANCEL = irpc.SL_INVOKE_ON_CANCEL

# NT's cancel spin lock: IoCancelIrp takes it, the cancel routine releases it.
_cancel_lock = threading.Lock()
_cancel_owner = None   # the thread holding _cancel_lock, so only it may be told it forgot to release it
_xchg_lock = threading.Lock()


def IoGetCurrentIrpStackLocation(Irp: IRP) -> IO_STACK_LOCATION:
    return Irp.Stack[Irp.CurrentLocation]


def IoGetNextIrpStackLocation(Irp: IRP) -> IO_STACK_LOCATION:
    i = Irp.CurrentLocation + 1
    if i >= Irp.StackCount:
        verifier.violation("NO_MORE_IRP_STACK_LOCATIONS", f"the IRP has {Irp.StackCount}")
    return Irp.Stack[i]


def IoSkipCurrentIrpStackLocation(Irp: IRP) -> None:
    """The next driver gets this location as it is: step back one, IoCallDriver steps forward."""
    Irp.CurrentLocation -= 1


def IoCopyCurrentIrpStackLocationToNext(Irp: IRP) -> None:
    nxt = IoGetNextIrpStackLocation(Irp)
    nxt.copy_from(IoGetCurrentIrpStackLocation(Irp))
    nxt.CompletionRoutine = None
    nxt.Context = None
    nxt.Control = 0


def IoSetNextIrpStackLocation(Irp: IRP) -> None:
    Irp.CurrentLocation += 1


def IoSetCompletionRoutine(Irp: IRP, CompletionRoutine, Context=None, InvokeOnSuccess=True,
                           InvokeOnError=True, InvokeOnCancel=True) -> None:
    nxt = IoGetNextIrpStackLocation(Irp)
    nxt.CompletionRoutine = CompletionRoutine
    nxt.Context = Context
    nxt.Control = ((SL_INVOKE_ON_SUCCESS if InvokeOnSuccess else 0) | (SL_INVOKE_ON_ERROR if InvokeOnError else 0)
                   | (SL_INVOKE_ON_CANCEL if InvokeOnCancel else 0))


def IoMarkIrpPending(Irp: IRP) -> None:
    IoGetCurrentIrpStackLocation(Irp).Control |= SL_PENDING_RETURNED


def IoCallDriver(DeviceObject, Irp: IRP) -> int:
    """Pass `Irp` to `DeviceObject`'s driver; the dispatch routine's status."""
    if Irp.completed:
        verifier.violation(verifier.IRP_TOUCHED_AFTER_COMPLETION, "IoCallDriver")
    Irp.CurrentLocation += 1
    if Irp.CurrentLocation >= Irp.StackCount:
        verifier.violation("NO_MORE_IRP_STACK_LOCATIONS", f"the IRP has {Irp.StackCount}")
    loc = Irp.Stack[Irp.CurrentLocation]
    loc.DeviceObject = DeviceObject
    driver = DeviceObject.DriverObject
    routine = driver.MajorFunction[loc.MajorFunction]
    Irp.driver = driver
    driver.counters["irps"] += 1
    ctx = current
    saved = ctx.driver, ctx.irql          # calling_driver(driver), inline: this runs for every IRP
    ctx.driver, ctx.irql = driver, PASSIVE_LEVEL
    try:
        if routine is None:
            Irp.IoStatus.Status = st.STATUS_INVALID_DEVICE_REQUEST
            Irp.IoStatus.Information = 0
            IoCompleteRequest(Irp, 0)
            return st.STATUS_INVALID_DEVICE_REQUEST
        status = routine(DeviceObject, Irp)
        left = ctx.irql
    finally:
        ctx.driver, ctx.irql = saved
    if left != PASSIVE_LEVEL:
        # (a spin lock it took and kept, say): NT bug-checks on the way back to
        # user mode; here it is named, and the caller's IRQL is back all the same
        verifier.violation(verifier.IRQL_GT_ZERO_AT_SYSTEM_SERVICE,
                           f"{getattr(routine, '__name__', routine)} returned at IRQL {left}", driver=driver,
                           raise_it=False)
    if not isinstance(status, int):
        verifier.violation("DRIVER_RETURNED_NON_NTSTATUS", f"{getattr(routine, '__name__', routine)} returned {status!r}",
                           driver=driver)
    return status & 0xFFFFFFFF


def IoCompleteRequest(Irp: IRP, PriorityBoost: int = 0) -> None:
    """Finish `Irp`: completion routines bottom-up, then the I/O manager's own
    completion (copy-back, events, the program's reply)."""
    if Irp.completed:
        verifier.violation(verifier.MULTIPLE_IRP_COMPLETE_REQUESTS, f"IRP of request {Irp.rid}")
    if Irp.IoStatus.Status == st.STATUS_PENDING:
        verifier.violation("DRIVER_VERIFIER_IOMANAGER_VIOLATION: IoCompleteRequest with STATUS_PENDING")
    if Irp.CancelRoutine is not None:
        verifier.violation("CANCEL_STATE_IN_COMPLETED_IRP", "complete with a cancel routine still set")
    status = Irp.IoStatus.Status
    i = Irp.CurrentLocation
    while i >= 0:
        loc = Irp.Stack[i]
        Irp.PendingReturned = bool(loc.Control & SL_PENDING_RETURNED)
        routine, ctl = loc.CompletionRoutine, loc.Control
        i -= 1
        Irp.CurrentLocation = i
        if routine is None:
            continue
        want = (SL_INVOKE_ON_CANCEL if Irp.Cancel else
                SL_INVOKE_ON_SUCCESS if st.NT_SUCCESS(status) else SL_INVOKE_ON_ERROR)
        if not ctl & want:
            continue
        dev = Irp.Stack[i].DeviceObject if i >= 0 else None
        try:
            with calling_driver(dev.DriverObject if dev is not None else current.driver):
                r = routine(dev, Irp, loc.Context)
        except BaseException as exc:
            dbg.fault(f"completion routine {getattr(routine, '__name__', '?')}", exc)
            r = st.STATUS_SUCCESS
        if r == STATUS_MORE_PROCESSING_REQUIRED:
            return
        status = Irp.IoStatus.Status
        if Irp.PendingReturned and i >= 0:
            Irp.Stack[i].Control |= SL_PENDING_RETURNED
    Irp.CurrentLocation = -1
    Irp.completed = True
    done = Irp.on_complete
    if done is not None:
        done(Irp)


def IoSetCancelRoutine(Irp: IRP, CancelRoutine):
    """Atomic exchange; the previous routine (None if IoCancelIrp already took it)."""
    with _xchg_lock:
        old = Irp.CancelRoutine
        Irp.CancelRoutine = CancelRoutine
    return old


def IoAcquireCancelSpinLock() -> int:
    global _cancel_owner
    _cancel_lock.acquire()
    _cancel_owner = threading.get_ident()
    irql, current.irql = current.irql, DISPATCH_LEVEL
    return irql


def IoReleaseCancelSpinLock(Irql: int) -> None:
    global _cancel_owner
    current.irql = Irql
    _cancel_owner = None
    _cancel_lock.release()


def IoCancelIrp(Irp: IRP) -> bool:
    """Mark `Irp` cancelled and call its cancel routine, if it has one, with the
    cancel spin lock held (the routine releases it)."""
    irql = IoAcquireCancelSpinLock()
    Irp.Cancel = True
    with _xchg_lock:
        routine = Irp.CancelRoutine
        Irp.CancelRoutine = None
    if routine is None or Irp.completed:
        IoReleaseCancelSpinLock(irql)
        return False
    Irp.CancelIrql = irql
    loc = Irp.Stack[Irp.CurrentLocation] if Irp.CurrentLocation >= 0 else None
    dev = loc.DeviceObject if loc is not None else None
    driver = dev.DriverObject if dev is not None else None
    faulted = False
    try:
        with calling_driver(driver, DISPATCH_LEVEL):
            routine(dev, Irp)
    except BaseException as exc:
        dbg.fault(f"cancel routine {getattr(routine, '__name__', '?')}", exc, driver)
        faulted = True
    finally:
        if _cancel_owner == threading.get_ident():
            # a cancel routine that forgot IoReleaseCancelSpinLock would hang the system
            verifier.violation("CANCEL_SPIN_LOCK_NOT_RELEASED", getattr(routine, "__name__", "?"),
                               driver=driver, raise_it=False)
            IoReleaseCancelSpinLock(irql)
        current.irql = irql   # the caller's IRQL, whatever the routine left
    if faulted and not Irp.completed:
        # the routine failed before completing it: the IRP fails as cancelled, as
        # any IRP whose driver routine raised fails, instead of pending for good
        Irp.IoStatus.Status = st.STATUS_CANCELLED
        Irp.IoStatus.Information = 0
        try:
            IoCompleteRequest(Irp)
        except verifier.DriverBugcheck:
            pass
    return True


def IoAllocateIrp(StackSize: int, ChargeQuota: bool = False) -> IRP:
    irp = IRP(StackSize)
    irp.process = current.process
    return irp


def IoFreeIrp(Irp: IRP) -> None:
    Irp.completed = True


def IoIsOperationSynchronous(Irp: IRP) -> bool:
    return not Irp.overlapped
