"""KTIMER, KDPC and the I/O timer, run on the kernel's timer thread.

One thread keeps a heap of deadlines.  An expiring KTIMER is signalled (it is a
notification dispatcher object) and its DPC, if any, runs on that thread at
DISPATCH_LEVEL in the system process's context, as NT runs timer DPCs on an
arbitrary processor outside any program.  `IoStartTimer` routines run once a
second the same way.  A routine that raises is logged as its driver's fault and
the thread carries on.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time

from ringzero.kernel import dbg
from ringzero.kernel.context import DISPATCH_LEVEL, calling_driver, current, in_process
from ringzero.kernel.ke import dispatcher as ke


class KDPC:
    __slots__ = ("DeferredRoutine", "DeferredContext", "driver", "_queued")

    def __init__(self):
        self.DeferredRoutine = None
        self.DeferredContext = None
        self.driver = None
        self._queued = False


class KTIMER(ke.DispatcherObject):
    """Invariant: `_due` is the monotonic deadline while the timer is in the
    queue (`_token` matches the queued entry), None when it is not set."""

    __slots__ = ("Dpc", "Period", "_due", "_token", "driver")
    type_name = "Timer"

    def __init__(self):
        super().__init__(0)
        self.Dpc = None
        self.Period = 0
        self._due = None
        self._token = None
        self.driver = None


class _TimerThread:
    def __init__(self):
        self._cv = threading.Condition()
        self._heap: list = []
        self._count = itertools.count()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.system_process = None

    def start(self, system_process) -> None:
        self.system_process = system_process
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="ringzero-timer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None

    def schedule(self, due: float, item) -> object:
        token = next(self._count)
        with self._cv:
            heapq.heappush(self._heap, (due, token, item))
            self._cv.notify()
        return token

    def _run(self) -> None:
        current.process = self.system_process
        current.irql = DISPATCH_LEVEL
        while True:
            with self._cv:
                while not self._stop:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cv.wait(None if not self._heap else self._heap[0][0] - now)
                if self._stop:
                    return
                due, token, item = heapq.heappop(self._heap)
            try:
                item(due, token)
            except BaseException as exc:  # a bug of ours; keep the thread alive
                dbg.fault("timer thread", exc)


_thread = _TimerThread()


def start(system_process) -> None:
    _thread.start(system_process)


def stop() -> None:
    _thread.stop()


def call_at(due: float, fn) -> None:
    """Run `fn()` on the timer thread at monotonic time `due` (kernel use only)."""
    _thread.schedule(due, lambda _due, _token: fn())


def _run_dpc(dpc: KDPC, arg1, arg2) -> None:
    dpc._queued = False
    try:
        with calling_driver(dpc.driver, DISPATCH_LEVEL), in_process(_thread.system_process):
            dpc.DeferredRoutine(dpc, dpc.DeferredContext, arg1, arg2)
    except BaseException as exc:
        dbg.fault(f"DPC {getattr(dpc.DeferredRoutine, '__name__', '?')}", exc, dpc.driver)


def KeInitializeDpc(Dpc: KDPC, DeferredRoutine, DeferredContext=None) -> None:
    Dpc.DeferredRoutine = DeferredRoutine
    Dpc.DeferredContext = DeferredContext
    Dpc.driver = current.driver


def KeInsertQueueDpc(Dpc: KDPC, SystemArgument1=None, SystemArgument2=None) -> bool:
    if Dpc._queued:
        return False
    Dpc._queued = True
    _thread.schedule(time.monotonic(), lambda due, token: _run_dpc(Dpc, SystemArgument1, SystemArgument2))
    return True


def KeRemoveQueueDpc(Dpc: KDPC) -> bool:
    was, Dpc._queued = Dpc._queued, False
    return was


def KeInitializeTimer(Timer: KTIMER) -> None:
    KeInitializeTimerEx(Timer, ke.NotificationEvent)


def KeInitializeTimerEx(Timer: KTIMER, Type: int = ke.NotificationEvent) -> None:
    KeCancelTimer(Timer)
    Timer.signal_state = 0
    Timer.driver = current.driver


_live_timers: set = set()


def live_timers_of(driver) -> list[KTIMER]:
    return [t for t in list(_live_timers) if t.driver is driver]


def KeSetTimer(Timer: KTIMER, DueTime, Dpc: KDPC | None = None) -> bool:
    return KeSetTimerEx(Timer, DueTime, 0, Dpc)


def KeSetTimerEx(Timer: KTIMER, DueTime, Period: int = 0, Dpc: KDPC | None = None) -> bool:
    """Due time in NT form (negative relative, 100 ns); Period in milliseconds."""
    was_set = KeCancelTimer(Timer)
    seconds = ke.timeout_to_seconds(DueTime) or 0.0
    with ke._lock:
        Timer.signal_state = 0
    Timer.Dpc = Dpc
    Timer.Period = Period
    if Timer.driver is None:
        Timer.driver = current.driver
    Timer._due = time.monotonic() + seconds
    Timer._token = _thread.schedule(Timer._due, lambda due, token: _expire(Timer, token))
    _live_timers.add(Timer)
    return was_set


def _expire(timer: KTIMER, token) -> None:
    if timer._token != token:
        return  # cancelled or re-set since
    if timer.Period:
        timer._due += timer.Period / 1000
        timer._token = _thread.schedule(timer._due, lambda due, tok: _expire(timer, tok))
    else:
        timer._due = None
        timer._token = None
        _live_timers.discard(timer)
    with ke._lock:
        timer.signal_state = 1
        ke._wake_waiters(timer)
    if timer.Dpc is not None:
        _run_dpc(timer.Dpc, None, None)


def KeCancelTimer(Timer: KTIMER) -> bool:
    was_set = Timer._token is not None
    Timer._token = None
    Timer._due = None
    _live_timers.discard(Timer)
    return was_set


def KeReadStateTimer(Timer: KTIMER) -> bool:
    return Timer.signal_state > 0


# -- the I/O timer -----------------------------------------------------------

class IO_TIMER:
    """A device's once-a-second timer.  Invariant: `token` is set while started."""

    __slots__ = ("DeviceObject", "TimerRoutine", "Context", "token")

    def __init__(self, DeviceObject, TimerRoutine, Context):
        self.DeviceObject = DeviceObject
        self.TimerRoutine = TimerRoutine
        self.Context = Context
        self.token = None


def IoInitializeTimer(DeviceObject, TimerRoutine, Context=None):
    from ringzero.nt import status as st
    DeviceObject.Timer = IO_TIMER(DeviceObject, TimerRoutine, Context)
    return st.STATUS_SUCCESS


def IoStartTimer(DeviceObject) -> None:
    t = DeviceObject.Timer
    if t is None or t.token is not None:
        return
    t.token = _thread.schedule(time.monotonic() + 1.0, lambda due, token: _io_tick(t, due, token))


def _io_tick(t: IO_TIMER, due: float, token) -> None:
    if t.token != token:
        return
    t.token = _thread.schedule(due + 1.0, lambda d, tok: _io_tick(t, d, tok))
    driver = t.DeviceObject.DriverObject
    try:
        with calling_driver(driver, DISPATCH_LEVEL), in_process(_thread.system_process):
            t.TimerRoutine(t.DeviceObject, t.Context)
    except BaseException as exc:
        dbg.fault(f"IoTimer routine {getattr(t.TimerRoutine, '__name__', '?')}", exc, driver)


def IoStopTimer(DeviceObject) -> None:
    t = DeviceObject.Timer
    if t is not None:
        t.token = None
