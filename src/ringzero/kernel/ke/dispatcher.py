"""Dispatcher objects and waits: KEVENT, KMUTEX, KSEMAPHORE, KTIMER's wait half.

One lock guards every dispatcher object's state and wait list, as NT's dispatcher
database lock does, so a WaitAll across several objects and a signal that must
satisfy waiters in order are both exact.  A thread that waits parks on its own
`_WaitBlock`; whoever satisfies the wait consumes the objects for it (reset a
synchronization event, take a mutex, decrement a semaphore) before waking it, so
a woken waiter never has to re-check and never loses a race.
"""

from __future__ import annotations

import threading
import time

from ringzero.kernel.context import DISPATCH_LEVEL, current
from ringzero.kernel.ob.object import ObjectHeader
from ringzero.nt import status as st

class _DispatcherLock:
    """The dispatcher database lock.  Callbacks of asynchronous waits that a
    holder satisfies are queued and run just after the lock is released, in the
    releasing thread, so they may send, block or take the lock again.

    Invariant: `_queued` is touched only by the thread holding `_lock`."""

    __slots__ = ("_lock", "_queued", "acquire", "release")

    def __init__(self):
        self._lock = threading.Lock()
        self._queued = None
        self.acquire = self._lock.acquire     # for paths that queue no callbacks
        self.release = self._lock.release

    def __enter__(self):
        self._lock.acquire()
        return self

    def __exit__(self, *exc) -> bool:
        queued = self._queued
        if queued is None:
            self._lock.release()
            return False
        self._queued = None
        self._lock.release()
        for callback, status in queued:
            try:
                callback(status)
            except BaseException as e:  # the callback's owner is at fault, not the signaller
                from ringzero.kernel import dbg
                dbg.fault("wait completion", e)
        return False

    def defer(self, callback, status: int) -> None:
        if self._queued is None:
            self._queued = []
        self._queued.append((callback, status))

    def locked(self) -> bool:
        return self._lock.locked()


_lock = _DispatcherLock()

NotificationEvent = 0
SynchronizationEvent = 1
WaitAll = 0
WaitAny = 1
MAXIMUM_WAIT_OBJECTS = 64

_hooks = threading.local()


def set_block_hook(hook) -> None:
    """`hook()` runs (in this thread) before it parks; the host hands off reading."""
    _hooks.before_block = hook


def current_thread_id() -> int:
    return threading.get_ident()


class DispatcherObject(ObjectHeader):
    """Invariant: `wait_list` holds the wait blocks of every thread parked on this
    object, oldest first; a signalled object has no waiter it could satisfy.
    Dispatcher objects carry an object header, so a program can hold handles
    to them and a driver can reference them by handle."""

    __slots__ = ("signal_state", "wait_list")
    type_name = "Dispatcher"

    def __init__(self, signal_state: int = 0):
        self.signal_state = signal_state
        self.wait_list: list[_WaitBlock] = []

    # The three methods below run with `_lock` held.
    def _is_signalled_for(self, thread: int) -> bool:
        return self.signal_state > 0

    def _consume(self, thread: int) -> None:
        pass

    def _abandoned(self) -> bool:
        return False


class KEVENT(DispatcherObject):
    __slots__ = ("Type",)
    type_name = "Event"

    def __init__(self, Type: int = NotificationEvent, State: bool = False):
        super().__init__(1 if State else 0)
        self.Type = Type

    def _consume(self, thread: int) -> None:
        if self.Type == SynchronizationEvent:
            self.signal_state = 0


class KMUTEX(DispatcherObject):
    """Owned, recursive.  signal_state is 1 when free, <= 0 while owned (1 - depth)."""

    __slots__ = ("OwnerThread", "Abandoned")
    type_name = "Mutant"

    def __init__(self):
        super().__init__(1)
        self.OwnerThread = None
        self.Abandoned = False

    def _is_signalled_for(self, thread: int) -> bool:
        return self.signal_state > 0 or self.OwnerThread == thread

    def _consume(self, thread: int) -> None:
        self.signal_state -= 1
        self.OwnerThread = thread

    def _abandoned(self) -> bool:
        if self.Abandoned:
            self.Abandoned = False
            return True
        return False


class KSEMAPHORE(DispatcherObject):
    __slots__ = ("Limit",)
    type_name = "Semaphore"

    def __init__(self, Count: int = 0, Limit: int = 1):
        super().__init__(Count)
        self.Limit = Limit

    def _consume(self, thread: int) -> None:
        self.signal_state -= 1


class _WaitBlock:
    """A thread parked on `parked`, or (with `callback`) a wait nobody parks
    for: satisfying it queues callback(status) instead of waking a thread."""

    __slots__ = ("objects", "wait_all", "thread", "parked", "result", "done", "callback")

    def __init__(self, objects, wait_all, thread, callback=None):
        self.objects = objects
        self.wait_all = wait_all
        self.thread = thread
        self.callback = callback
        if callback is None:
            self.parked = threading.Lock()
            self.parked.acquire()
        self.result = None
        self.done = False

    def _finish(self, result: int) -> None:
        """With `_lock` held."""
        self.result = result
        self.done = True
        if self.callback is not None:
            _lock.defer(self.callback, result)
        else:
            self.parked.release()


class Alerted(Exception):
    pass


_waiters_by_thread: dict[int, _WaitBlock] = {}


def _try_satisfy(wb: _WaitBlock) -> int | None:
    """With `_lock` held: consume for `wb` and return its status, or None."""
    objs, thread = wb.objects, wb.thread
    if wb.wait_all:
        for o in objs:
            if not o._is_signalled_for(thread):
                return None
        abandoned = False
        for o in objs:
            abandoned |= o._abandoned()
            o._consume(thread)
        return st.STATUS_ABANDONED_WAIT_0 if abandoned else st.STATUS_WAIT_0
    for i, o in enumerate(objs):
        if o._is_signalled_for(thread):
            abandoned = o._abandoned()
            o._consume(thread)
            return (st.STATUS_ABANDONED_WAIT_0 if abandoned else st.STATUS_WAIT_0) + i
    return None


def _unlink(wb: _WaitBlock) -> None:
    for o in wb.objects:
        try:
            o.wait_list.remove(wb)
        except ValueError:
            pass


def _wake_waiters(obj: DispatcherObject) -> None:
    """With `_lock` held: satisfy, oldest first, the waiters `obj` now can."""
    if not obj.wait_list:
        return
    for wb in list(obj.wait_list):
        if wb.done:
            continue
        if not obj._is_signalled_for(wb.thread):
            if obj.signal_state <= 0 and not isinstance(obj, KMUTEX):
                break
            continue
        result = _try_satisfy(wb)
        if result is not None:
            _unlink(wb)
            wb._finish(result)


def timeout_to_seconds(Timeout) -> float | None:
    """NT timeouts: None infinite; negative relative, positive absolute, 100 ns units."""
    if Timeout is None:
        return None
    q = getattr(Timeout, "QuadPart", Timeout)
    if q < 0:
        return -q / 1e7
    if q == 0:
        return 0.0
    from ringzero.kernel.ke.clock import KeQuerySystemTime
    return max(0.0, (q - KeQuerySystemTime()) / 1e7)


def _take_at_once(obj: DispatcherObject, thread: int) -> int | None:
    """Consume `obj` for `thread` if it is signalled for it now: the wait's
    status; else None.  Queues no callbacks, so the plain lock does."""
    _lock.acquire()
    try:
        if obj._is_signalled_for(thread):
            abandoned = obj._abandoned()
            obj._consume(thread)
            return st.STATUS_ABANDONED_WAIT_0 if abandoned else st.STATUS_WAIT_0
        return None
    finally:
        _lock.release()


def wait(objects: list[DispatcherObject], wait_all: bool, seconds: float | None,
         thread: int | None = None) -> int:
    """Wait for `objects`; STATUS_WAIT_0 + i, STATUS_TIMEOUT or STATUS_ALERTED."""
    if thread is None:
        thread = threading.get_ident()
    if len(objects) == 1:
        # the common case, one object that is signalled: no wait block
        result = _take_at_once(objects[0], thread)
        if result is not None:
            return result
        if seconds == 0:
            return st.STATUS_TIMEOUT
    wb = _WaitBlock(objects, wait_all, thread)
    with _lock:
        result = _try_satisfy(wb)
        if result is not None:
            return result
        if seconds == 0:
            return st.STATUS_TIMEOUT
        for o in objects:
            o.wait_list.append(wb)
        _waiters_by_thread[threading.get_ident()] = wb
    hook = getattr(_hooks, "before_block", None)
    if hook is not None:
        hook()
    try:
        if seconds is None:
            wb.parked.acquire()
        else:
            wb.parked.acquire(timeout=seconds)
    finally:
        with _lock:
            _waiters_by_thread.pop(threading.get_ident(), None)
            if not wb.done:
                _unlink(wb)
                wb.done = True
                wb.result = st.STATUS_TIMEOUT
    return wb.result


def wait_async(objects: list[DispatcherObject], wait_all: bool, seconds: float | None, thread, callback):
    """Wait for `objects` without a thread: `callback(status)` runs once, when the
    wait is satisfied (in the satisfying thread), times out (on the timer
    thread) or is cancelled.  Returns the wait block, for `cancel_async`."""
    wb = _WaitBlock(objects, wait_all, thread, callback)
    with _lock:
        result = _try_satisfy(wb)
        if result is None and seconds == 0:
            result = st.STATUS_TIMEOUT
        if result is not None:
            wb._finish(result)
            return wb
        for o in objects:
            o.wait_list.append(wb)
    if seconds is not None:
        from ringzero.kernel.ke import timer
        timer.call_at(time.monotonic() + seconds, lambda: cancel_async(wb, st.STATUS_TIMEOUT))
    return wb


def cancel_async(wb: _WaitBlock, status: int) -> bool:
    with _lock:
        if wb.done:
            return False
        _unlink(wb)
        wb._finish(status)
        return True


def alert_thread(ident: int) -> bool:
    """End the wait of kernel thread `ident` with STATUS_ALERTED (its program died)."""
    with _lock:
        wb = _waiters_by_thread.get(ident)
        if wb is None or wb.done:
            return False
        _unlink(wb)
        wb._finish(st.STATUS_ALERTED)
        return True


# -- the DDK routines ------------------------------------------------------

def KeInitializeEvent(Event: KEVENT, Type: int, State: bool) -> None:
    with _lock:
        Event.Type = Type
        Event.signal_state = 1 if State else 0
        Event.wait_list = []


def KeSetEvent(Event: KEVENT, Increment: int = 0, Wait: bool = False) -> int:
    with _lock:
        previous = Event.signal_state
        Event.signal_state = 1
        _wake_waiters(Event)
        return previous


def KeResetEvent(Event: KEVENT) -> int:
    with _lock:
        previous = Event.signal_state
        Event.signal_state = 0
        return previous


def KeClearEvent(Event: KEVENT) -> None:
    with _lock:
        Event.signal_state = 0


def KePulseEvent(Event: KEVENT, Increment: int = 0, Wait: bool = False) -> int:
    """Satisfy whoever waits now, then leave the event non-signalled."""
    with _lock:
        previous = Event.signal_state
        Event.signal_state = 1
        _wake_waiters(Event)
        Event.signal_state = 0
        return previous


def KeReadStateEvent(Event: KEVENT) -> int:
    return Event.signal_state


def KeInitializeMutex(Mutex: KMUTEX, Level: int = 0) -> None:
    with _lock:
        Mutex.signal_state = 1
        Mutex.OwnerThread = None
        Mutex.wait_list = []


class MutexNotOwned(RuntimeError):
    """KeReleaseMutex by a thread that does not own the mutex (NT bugchecks:
    THREAD_NOT_MUTEX_OWNER)."""


def KeReleaseMutex(Mutex: KMUTEX, Wait: bool = False) -> int:
    me = threading.get_ident()
    _lock.acquire()
    try:
        if not Mutex.wait_list and Mutex.OwnerThread == me and Mutex.signal_state <= 0:
            # nobody waits: no one to wake, no callback to run after the lock
            previous = Mutex.signal_state
            Mutex.signal_state += 1
            if Mutex.signal_state > 0:
                Mutex.OwnerThread = None
            return previous
    finally:
        _lock.release()
    return release_mutant(Mutex, me)


def release_mutant(Mutex: KMUTEX, owner) -> int:
    """KeReleaseMutant for `owner` (a kernel thread's ident, or a program
    thread's (pid, tid)): the previous signal state; MutexNotOwned if `owner`
    does not own it."""
    with _lock:
        if Mutex.OwnerThread != owner or Mutex.signal_state > 0:
            raise MutexNotOwned("THREAD_NOT_MUTEX_OWNER: a mutex released by a thread that does not own it")
        previous = Mutex.signal_state
        Mutex.signal_state += 1
        if Mutex.signal_state > 0:
            Mutex.OwnerThread = None
            _wake_waiters(Mutex)
        return previous


def KeReadStateMutex(Mutex: KMUTEX) -> int:
    return Mutex.signal_state


def release_owned_mutexes(thread: int, mutexes) -> None:
    """Abandon the mutexes `thread` still owns (its owner went away)."""
    with _lock:
        for m in mutexes:
            if m.OwnerThread == thread and m.signal_state <= 0:
                m.signal_state = 1
                m.OwnerThread = None
                m.Abandoned = True
                _wake_waiters(m)


def KeInitializeSemaphore(Semaphore: KSEMAPHORE, Count: int, Limit: int) -> None:
    with _lock:
        Semaphore.signal_state = Count
        Semaphore.Limit = Limit
        Semaphore.wait_list = []


class SemaphoreLimitExceeded(RuntimeError):
    """KeReleaseSemaphore past the limit (NT raises STATUS_SEMAPHORE_LIMIT_EXCEEDED)."""


def KeReleaseSemaphore(Semaphore: KSEMAPHORE, Increment: int = 0, Adjustment: int = 1, Wait: bool = False) -> int:
    with _lock:
        previous = Semaphore.signal_state
        if previous + Adjustment > Semaphore.Limit:
            raise SemaphoreLimitExceeded("STATUS_SEMAPHORE_LIMIT_EXCEEDED")
        Semaphore.signal_state += Adjustment
        _wake_waiters(Semaphore)
        return previous


def KeReadStateSemaphore(Semaphore: KSEMAPHORE) -> int:
    return Semaphore.signal_state


def _check_irql(seconds: float | None, routine: str) -> None:
    """NT bug-checks a wait that could block at DISPATCH_LEVEL (in a DPC, a
    timer routine, under a spin lock): only a zero timeout may be used there."""
    if seconds != 0 and current.irql >= DISPATCH_LEVEL:
        from ringzero.kernel import verifier
        verifier.violation(verifier.IRQL_NOT_LESS_OR_EQUAL,
                           f"{routine} with a {'infinite' if seconds is None else 'non-zero'} timeout at IRQL {current.irql}")


def KeWaitForSingleObject(Object, WaitReason: int = 0, WaitMode: int = 0, Alertable: bool = False, Timeout=None) -> int:
    obj = _dispatcher_of(Object)
    if current.irql < DISPATCH_LEVEL:
        # the common case, a mutex that is free or already ours, an event that
        # is set: no timeout to work out, no wait block
        result = _take_at_once(obj, threading.get_ident())
        if result is not None:
            return result
    seconds = timeout_to_seconds(Timeout)
    _check_irql(seconds, "KeWaitForSingleObject")
    return wait([obj], False, seconds)


KeWaitForMutexObject = KeWaitForSingleObject


def KeWaitForMultipleObjects(Count: int, Object, WaitType: int, WaitReason: int = 0, WaitMode: int = 0,
                             Alertable: bool = False, Timeout=None, WaitBlockArray=None) -> int:
    objs = [_dispatcher_of(o) for o in list(Object)[:Count]]
    if not 0 < len(objs) <= MAXIMUM_WAIT_OBJECTS:
        return st.STATUS_INVALID_PARAMETER
    seconds = timeout_to_seconds(Timeout)
    _check_irql(seconds, "KeWaitForMultipleObjects")
    return wait(objs, WaitType == WaitAll, seconds)


def KeDelayExecutionThread(WaitMode: int = 0, Alertable: bool = False, Interval=None) -> int:
    seconds = timeout_to_seconds(Interval)
    _check_irql(seconds, "KeDelayExecutionThread")
    time.sleep(seconds if seconds is not None else 0)
    return st.STATUS_SUCCESS


def _dispatcher_of(obj) -> DispatcherObject:
    if isinstance(obj, DispatcherObject):
        return obj
    inner = getattr(obj, "dispatcher", None)  # a FILE_OBJECT's Event, a KTIMER
    if isinstance(inner, DispatcherObject):
        return inner
    raise TypeError(f"{type(obj).__name__} is not a dispatcher object")
