"""Process notify routines: PsSetCreateProcessNotifyRoutine(Ex), fed by the
Linux process-events connector.

While at least one routine is registered, one kernel thread
(`ringzero-psnotify`) owns a subscribed connector socket and turns what Linux
reports into NT's two notifications, calling every routine on that thread, in
registration order, at PASSIVE_LEVEL, in the System process's context (NT
calls them in the creating thread's context; no Linux process runs kernel
code, so there is none to borrow).  A routine that raises is logged as its
driver's fault and the others are still called.

What counts as what:

* **Created**: a fork that makes a new thread group (threads are not
  processes; children of kthreadd are kernel threads, NT's system threads).
  Linux creates a process in two steps (fork, then exec), NT in one, and
  CreateInfo must name the program the new process runs, so the notification
  waits for the child's first exec and reads its image and command line
  then.  A child that does not exec within `EXEC_GRACE` seconds, or exits
  first, is reported with the image it inherited.  A process that exec'd
  and exited before its facts could be read (it lived well under a
  millisecond, as /bin/true does) is reported with the task name the kernel
  kept for it, or with none once its parent has reaped it, and
  `FileOpenNameAvailable` False, as NT does when it has only part of a name.
  Later execs are not notifications (NT processes cannot change image).
* **Exited**: the process's last thread exited.  Exits are reported for every
  process, including those that were running before the routine was
  registered.

Invariants of the feeding thread's tables: `_births` holds the processes seen
forking and not yet reported created; `_live` those reported created and not
yet exited, each holding one reference on its process object; a pid is in at
most one of them.

Needs: the connector (CONFIG_PROC_EVENTS), the kernel host in the initial
user and pid namespaces, and on kernels before 6.x's unprivileged listeners,
root (CAP_NET_ADMIN).  Where it cannot be had, registering fails with
STATUS_ACCESS_DENIED (a permission) or STATUS_NOT_SUPPORTED (no connector, or
the subscription is ignored, as inside a container) and the debug log says
which and why.  There is no polling fallback: nothing is ever reported that
the kernel did not see.  If the connector itself overruns (the socket's
8 MiB buffer filled), the log says events were lost.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import threading
import time
from dataclasses import dataclass

from ringzero.kernel import dbg, system
from ringzero.kernel.context import PASSIVE_LEVEL, calling_driver, current, in_process
from ringzero.kernel.io import driver as iodriver
from ringzero.kernel.ob import object as ob
from ringzero.kernel.ps import connector, lookup, procinfo
from ringzero.nt import status as st

MAX_ROUTINES = 64          # NT's PSP_MAX_CREATE_PROCESS_NOTIFY, shared by both kinds
EXEC_GRACE = 0.1           # seconds (of the connector's clock) a new child has to exec before it is reported as forked
_GRACE_NS = int(EXEC_GRACE * 1e9)
_IDLE_POLL_MS = 1000


class CLIENT_ID:
    __slots__ = ("UniqueProcess", "UniqueThread")

    def __init__(self, UniqueProcess: int = 0, UniqueThread: int = 0):
        self.UniqueProcess = UniqueProcess
        self.UniqueThread = UniqueThread


class PS_CREATE_NOTIFY_INFO:
    """What a PsSetCreateProcessNotifyRoutineEx routine learns of a new process.

    `ImageFileName` is the executable's full path when `FileOpenNameAvailable`,
    else the task name the kernel still had; `CommandLine` is '' when the
    process was gone before it could be read.  A routine may set
    `CreationStatus` to an error status to deny the creation: Linux tells
    no one before a process runs, so it is killed (SIGKILL) as soon as the
    routines return (it may have run briefly), and the denial is logged."""

    __slots__ = ("Size", "Flags", "FileOpenNameAvailable", "IsSubsystemProcess", "ParentProcessId",
                 "CreatingThreadId", "FileObject", "ImageFileName", "CommandLine", "CreationStatus")

    def __init__(self, parent_pid: int, parent_tid: int, image: str, command_line: str, full_name: bool):
        self.Size = 88
        self.FileOpenNameAvailable = full_name
        self.IsSubsystemProcess = False
        self.Flags = 1 if full_name else 0
        self.ParentProcessId = parent_pid
        self.CreatingThreadId = CLIENT_ID(parent_pid, parent_tid)
        self.FileObject = None
        self.ImageFileName = image
        self.CommandLine = command_line
        self.CreationStatus = st.STATUS_SUCCESS


@dataclass(eq=False)
class _Registration:
    routine: object
    ex: bool
    driver: object
    removed: bool = False
    active: int = 0           # calls in progress on the feeding thread

    @property
    def name(self) -> str:
        return getattr(self.routine, "__qualname__", repr(self.routine))


@dataclass
class _Birth:
    pid: int
    parent_pid: int
    parent_tid: int
    fork_ns: int               # the connector's CLOCK_MONOTONIC time of the fork
    image_path: str = ""
    command_line: str = ""
    full_name: bool = False


_cv = threading.Condition(threading.Lock())
_registrations: list[_Registration] = []
_feeder: _Feeder | None = None
stats = {"events": 0, "created": 0, "exited": 0, "overruns": 0, "denied": 0}


def _status_for(err: connector.ConnectorUnavailable) -> int:
    if err.errno in (errno.EPERM, errno.EACCES):
        return st.STATUS_ACCESS_DENIED
    return st.STATUS_NOT_SUPPORTED


class _Feeder:
    """The connector socket and the thread that reads it."""

    def __init__(self, source: connector.ProcessEventSource):
        self.source = source
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stopping = False
        self._births: dict[int, _Birth] = {}
        self._live: dict[int, object] = {}
        self._leader_gone: set[int] = set()
        self._clock_ns = 0          # the latest event time read: how far the stream has been followed
        self.thread = threading.Thread(target=self._run, name="ringzero-psnotify", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Ask the thread to close the connector and end (it may be the caller)."""
        self.stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=10)

    # -- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        current.process = system.get().system_process
        current.irql = PASSIVE_LEVEL
        poller = select.poll()
        poller.register(self.source.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while not self.stopping:
                timeout = _IDLE_POLL_MS
                if self._births:
                    soonest = min(b.fork_ns for b in self._births.values()) + _GRACE_NS
                    timeout = max(0, (soonest - time.monotonic_ns()) // 1_000_000 + 1)
                ready = poller.poll(timeout)
                if self.stopping:
                    break
                if any(fd == self.source.fileno() for fd, _ in ready):
                    for ev in self.source.read(0):
                        self._clock_ns = max(self._clock_ns, ev.timestamp_ns)
                        self._handle(ev)
                        if self.stopping:
                            break
                else:
                    self._clock_ns = max(self._clock_ns, time.monotonic_ns())   # caught up: the stream is now
                self._expire_births()
        except Exception as exc:  # a bug of ours: say so, and stop feeding rather than spin
            self.stopping = True      # the next registration starts a fresh thread
            dbg.fault("process notify thread", exc)
        finally:
            self.source.close()
            for proc in self._live.values():
                lookup.forget(proc)
                ob.dereference(proc)
            self._live.clear()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _handle(self, ev: connector.ProcEvent) -> None:
        stats["events"] += 1
        kind = ev.kind
        if kind == "fork":
            if not ev.is_thread and ev.parent_pid != lookup.KTHREADD_PID:
                self._fork(ev)
        elif kind == "exec":
            birth = self._births.pop(ev.pid, None)
            if birth is not None:
                self._read_facts(birth, after_exec=True)
                self._created(birth)
        elif kind == "exit":
            self._exit(ev)
        elif kind == "overrun":
            stats["overruns"] += 1
            dbg.emit("process notify: the connector overran; some process creations and exits were lost "
                     "and will not be reported", level="warning", source="kernel")
            self._prune()

    def _fork(self, ev: connector.ProcEvent) -> None:
        # nothing is read here: a process that execs at once (most do) must
        # be read the moment its exec is seen, before it can exit
        birth = _Birth(ev.pid, ev.parent_pid, ev.parent_tid, ev.timestamp_ns)
        stale = self._live.pop(ev.pid, None)   # an exit we never heard of (overrun): the pid is reused
        if stale is not None:
            lookup.forget(stale)
            ob.dereference(stale)
        self._births[ev.pid] = birth

    @staticmethod
    def _read_facts(birth: _Birth, after_exec: bool) -> None:
        """The image and command line of the new process.  After its exec:
        its own, or, when it has already exited, the task name the kernel
        kept (a zombie's), or nothing once it was reaped.  Without an exec:
        its own, else the parent's, which are the ones it inherited."""
        path = procinfo.image_path(birth.pid)
        if path:
            birth.image_path, birth.full_name = path, True
            birth.command_line = procinfo.command_line(birth.pid)
            return
        if not after_exec:
            path = procinfo.image_path(birth.parent_pid)
            if path:
                birth.image_path, birth.full_name = path, True
                birth.command_line = procinfo.command_line(birth.parent_pid)
                return
        birth.image_path, birth.full_name = lookup.comm(birth.pid), False
        birth.command_line = procinfo.command_line(birth.pid)

    def _expire_births(self) -> None:
        """Births whose grace has passed on the stream's own clock: a reader
        that fell behind must not give up on an exec that is still queued."""
        if not self._births:
            return
        limit = self._clock_ns - _GRACE_NS
        for birth in [b for b in self._births.values() if b.fork_ns <= limit]:
            del self._births[birth.pid]
            self._read_facts(birth, after_exec=False)
            self._created(birth)

    def _created(self, birth: _Birth) -> None:
        proc = lookup.new_process(birth.pid, parent_pid=birth.parent_pid,
                                  create_time=lookup.monotonic_ns_to_system_time(birth.fork_ns),
                                  image_path=birth.image_path if birth.full_name else "")
        if not birth.full_name and birth.image_path:
            proc.image = birth.image_path
        ob.reference(proc)   # the table's reference, dropped after the exit notification
        self._live[birth.pid] = proc
        stats["created"] += 1
        info = PS_CREATE_NOTIFY_INFO(birth.parent_pid, birth.parent_tid, birth.image_path, birth.command_line,
                                     birth.full_name)
        denied_by = self._call_routines(proc, birth.pid, birth.parent_pid, info)
        if denied_by is not None:
            _deny(proc, info.CreationStatus, denied_by)

    def _exit(self, ev: connector.ProcEvent) -> None:
        pid = ev.pid
        if ev.tid == pid:
            if _other_threads_alive(pid):
                self._leader_gone.add(pid)   # the leader ended early; the process goes on
                return
        elif pid not in self._leader_gone or _other_threads_alive(pid, ev.tid):
            return
        self._leader_gone.discard(pid)
        birth = self._births.pop(pid, None)
        if birth is not None:
            self._read_facts(birth, after_exec=False)
            self._created(birth)
        proc = self._live.pop(pid, None)
        if proc is None:
            # a process that was running before we subscribed
            parent = ev.parent_pid
            if parent == lookup.KTHREADD_PID or (parent == 0 and lookup.is_kernel_thread(pid)):
                return
            proc = lookup.find(pid) or lookup.new_process(pid, parent_pid=parent or None)
            ob.reference(proc)
        proc.ExitStatus = ev.returncode
        stats["exited"] += 1
        try:
            self._call_routines(proc, pid, ev.parent_pid or lookup.PsGetProcessInheritedFromUniqueProcessId(proc),
                                None)
        finally:
            lookup.forget(proc)
            ob.dereference(proc)

    def _call_routines(self, proc, pid: int, parent_pid: int, info: PS_CREATE_NOTIFY_INFO | None):
        """Call every registered routine; for a creation, the first driver whose
        routine set an error CreationStatus (or None)."""
        with _cv:
            regs = list(_registrations)
        system_process = system.get().system_process
        denied_by = None
        for reg in regs:
            with _cv:
                if reg.removed or self.stopping:
                    continue
                reg.active += 1
            try:
                with calling_driver(reg.driver, PASSIVE_LEVEL), in_process(system_process):
                    if reg.ex:
                        before = info.CreationStatus if info is not None else st.STATUS_SUCCESS
                        reg.routine(proc, pid, info)
                        if info is not None and before == st.STATUS_SUCCESS and st.NT_ERROR(info.CreationStatus):
                            denied_by = denied_by or reg.driver
                    else:
                        reg.routine(parent_pid, pid, info is not None)
            except BaseException as exc:
                dbg.fault(f"process notify routine {reg.name}", exc, reg.driver)
            finally:
                with _cv:
                    reg.active -= 1
                    _cv.notify_all()
        return denied_by

    def _prune(self) -> None:
        """After an overrun: forget the processes that are gone, whose exits
        (and, for births, whose exec and exit) were among the lost events."""
        for pid in [p for p in self._live if not os.path.exists(f"/proc/{p}")]:
            proc = self._live.pop(pid)
            lookup.forget(proc)
            ob.dereference(proc)
        for pid in [p for p in self._births if not os.path.exists(f"/proc/{p}")]:
            del self._births[pid]
        self._leader_gone = {p for p in self._leader_gone if os.path.exists(f"/proc/{p}")}


def _other_threads_alive(pid: int, exiting_tid: int = 0) -> bool:
    """Does thread group `pid` still have a thread other than its leader (and
    than `exiting_tid`, which has just reported its exit)?"""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any(int(t) not in (pid, exiting_tid) for t in tids if t.isdigit())


def _deny(proc, status: int, driver) -> None:
    """A routine denied the creation: kill the new process, through a pidfd
    checked against its start time so a reused pid is never hit."""
    stats["denied"] += 1
    who = getattr(driver, "name", "kernel")
    what = f"creation of pid {proc.pid} ({proc.image_path or proc.image}) denied by {who} with {st.status_name(status)}"
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError as e:
        dbg.emit(f"{what}; it is already gone ({e.strerror})", level="warning", source=who)
        return
    try:
        if proc.start_time is not None and procinfo.start_time(proc.pid) != proc.start_time:
            dbg.emit(f"{what}; it is already gone", level="warning", source=who)
            return
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        dbg.emit(f"{what}; killed", level="warning", source=who)
    except OSError as e:
        dbg.emit(f"{what}; the kernel may not kill it ({e.strerror})", level="warning", source=who)
    finally:
        os.close(fd)


# -- registration ---------------------------------------------------------------------

def _set(routine, remove: bool, ex: bool) -> int:
    global _feeder
    if routine is None or not callable(routine):
        return st.STATUS_INVALID_PARAMETER
    if remove:
        return _remove(routine, ex)
    with _cv:
        if len(_registrations) >= MAX_ROUTINES:
            return st.STATUS_INVALID_PARAMETER
        feeder = _feeder
        if feeder is None or feeder.stopping:
            try:
                source = connector.ProcessEventSource()
            except connector.ConnectorUnavailable as err:
                status = _status_for(err)
                name = "PsSetCreateProcessNotifyRoutine" + ("Ex" if ex else "")
                dbg.emit(f"{name}: {st.status_name(status)}: {err}", level="warning")
                return status
            _feeder = feeder = _Feeder(source)
            feeder.start()
        _registrations.append(_Registration(routine, ex, current.driver))
    return st.STATUS_SUCCESS


def _remove(routine, ex: bool) -> int:
    with _cv:
        reg = next((r for r in _registrations if r.routine == routine and r.ex == ex), None)
        if reg is None:
            return st.STATUS_PROCEDURE_NOT_FOUND
        _unregister_locked(reg)
    _finish_removal([reg])
    return st.STATUS_SUCCESS


def _unregister_locked(reg: _Registration) -> None:
    reg.removed = True
    _registrations.remove(reg)


def _finish_removal(regs: list[_Registration]) -> None:
    """NT's rundown wait: once removal returns, the routine is not running and
    will not be called again (unless it is removing itself from inside a call)."""
    global _feeder
    with _cv:
        feeder = _feeder
        if feeder is None or threading.current_thread() is not feeder.thread:
            while any(r.active for r in regs):
                _cv.wait()
        stop = feeder if not _registrations else None
        if stop is not None:
            _feeder = None
    if stop is not None:
        stop.stop()


def PsSetCreateProcessNotifyRoutine(NotifyRoutine, Remove: bool) -> int:
    """NotifyRoutine(ParentId, ProcessId, Create) for each process created and
    exited on this machine.  Remove=True unregisters it (STATUS_PROCEDURE_NOT_FOUND
    when it is not registered).  STATUS_ACCESS_DENIED / STATUS_NOT_SUPPORTED
    when the process-events connector cannot be used (see the module notes)."""
    return _set(NotifyRoutine, bool(Remove), ex=False)


def PsSetCreateProcessNotifyRoutineEx(NotifyRoutine, Remove: bool) -> int:
    """NotifyRoutine(Process, ProcessId, CreateInfo): CreateInfo a
    PS_CREATE_NOTIFY_INFO on creation, None on exit."""
    return _set(NotifyRoutine, bool(Remove), ex=True)


def registrations() -> list[dict]:
    """What is registered, for the tools and tests."""
    with _cv:
        return [{"driver": getattr(r.driver, "name", None), "routine": r.name, "ex": r.ex} for r in _registrations]


def _driver_unloaded(driver) -> list:
    """The unload hook: a driver must remove its routines in DriverUnload (NT
    bugchecks with DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS when it
    does not); whatever it left is removed here and reported as a leak."""
    with _cv:
        left = [r for r in _registrations if r.driver is driver]
        for reg in left:
            _unregister_locked(reg)
    if not left:
        return []
    _finish_removal(left)
    return [iodriver.Leak("notify routine", f"process notify routine {r.name} still registered") for r in left]


iodriver.unload_hooks.append(_driver_unloaded)
