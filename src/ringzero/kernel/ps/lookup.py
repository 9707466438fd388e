"""Process objects for any Linux process: PsLookupProcessByProcessId and the
PsGetProcess* accessors drivers use on them.

A connected program already has its EPROCESS (the host made it at connect).
Any other Linux process gets one on demand, filled from procfs, and the same
object is handed out while that process lives and someone holds it; a pid
alone is no identity, so the start time is compared and a reused pid gets a
new object.  Pid 4 is the System process, as on NT.

NT's EPROCESS fields these routines read are attributes of the object:

* `InheritedFromUniqueProcessId`: the parent's pid (0 unknown).
* `CreateTime`: when the process was created, NT system time (100 ns units
  since 1601, UTC).  From the connector's fork timestamp when the process
  manager saw it being created, else from /proc/<pid>/stat's start time
  (clock-tick resolution).
* `ExitStatus`: STATUS_PENDING while it runs; once it exited, its exit code,
  or minus the signal that killed it.
* `image_path`: the full path of its executable ('' when unknown).
"""

from __future__ import annotations

import os
import threading
import time
import weakref

from ringzero.kernel import system
from ringzero.kernel.ke.clock import EPOCH_DIFFERENCE_100NS
from ringzero.kernel.ob import object as ob
from ringzero.kernel.ps import procinfo
from ringzero.kernel.ps.process import EPROCESS
from ringzero.nt import status as st

SYSTEM_PID = 4
KTHREADD_PID = 2
PF_KTHREAD = 0x00200000
_STAT_FLAGS = 9
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_IMAGE_FILE_NAME_CHARS = 14   # EPROCESS.ImageFileName is UCHAR[15]: 14 characters and a NUL

_lock = threading.Lock()
# pid -> the object handed out for a process that is not a program
_others: weakref.WeakValueDictionary[int, EPROCESS] = weakref.WeakValueDictionary()


# -- clocks -------------------------------------------------------------------

def monotonic_ns_to_system_time(ns: int) -> int:
    """A CLOCK_MONOTONIC instant (the connector's timestamps) as NT system time."""
    offset = time.time_ns() - time.monotonic_ns()
    return (ns + offset) // 100 + EPOCH_DIFFERENCE_100NS


def _ticks_to_system_time(ticks: int) -> int:
    """/proc/<pid>/stat's start time (ticks after boot, CLOCK_BOOTTIME) as system time."""
    since_boot_ns = ticks * 1_000_000_000 // _CLK_TCK
    offset = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    return (since_boot_ns + offset) // 100 + EPOCH_DIFFERENCE_100NS


# -- procfs facts this module needs beyond procinfo -------------------------------

def _thread_group_of(pid: int) -> int | None:
    """The Tgid of task `pid` (equal to `pid` for a process), None if gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def is_kernel_thread(pid: int) -> bool | None:
    """True for Linux kernel threads (NT's system threads, not processes);
    None when the task is gone."""
    if pid == KTHREADD_PID:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return bool(int(data[data.rindex(b")") + 2:].split()[_STAT_FLAGS - 3]) & PF_KTHREAD)
    except (OSError, ValueError, IndexError):
        return None


def comm(pid: int) -> str:
    """The kernel's 15-character task name, '' if gone."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", "replace")
    except OSError:
        return ""


# -- building process objects ---------------------------------------------------

def new_process(pid: int, *, parent_pid: int | None = None, create_time: int | None = None,
                image_path: str | None = None) -> EPROCESS:
    """An EPROCESS for Linux process `pid` that is not a program, filled from
    procfs; the caller's knowledge (from the connector) wins where given."""
    creds = procinfo.credentials(pid)
    uid, gid = creds if creds is not None else (None, None)
    path = image_path if image_path is not None else (procinfo.image_path(pid) or "")
    name = os.path.basename(path) if path else comm(pid)
    start = procinfo.start_time(pid)
    proc = EPROCESS(pid, uid, gid, name, start_time=start)
    proc.image_path = path
    if parent_pid is None:
        parent_pid = procinfo.parent_pid(pid) or 0
    proc.InheritedFromUniqueProcessId = parent_pid
    if create_time is None and start is not None:
        create_time = _ticks_to_system_time(start)
    proc.CreateTime = create_time or 0
    proc.ExitStatus = st.STATUS_PENDING
    with _lock:
        _others[pid] = proc
    return proc


def forget(proc: EPROCESS) -> None:
    """The process exited: lookups by its pid no longer find this object."""
    with _lock:
        if _others.get(proc.pid) is proc:
            del _others[proc.pid]


def _program(pid: int) -> EPROCESS | None:
    procs = system.get().processes
    proc = procs.get(pid)
    if proc is None:
        proc = next((p for p in list(procs.values()) if p.pid == pid), None)
    return proc if proc is not None and not proc.exiting else None


def find(pid: int) -> EPROCESS | None:
    """The live process object for `pid` (not referenced), or None."""
    if pid == SYSTEM_PID:
        return system.get().system_process
    proc = _program(pid)
    if proc is not None:
        return proc
    with _lock:
        proc = _others.get(pid)
    if proc is not None and not proc._deleted and proc.ExitStatus == st.STATUS_PENDING:
        if proc.start_time is None or proc.start_time == procinfo.start_time(pid):
            return proc
    if pid <= 0 or _thread_group_of(pid) != pid or is_kernel_thread(pid):
        return None
    return new_process(pid)


# -- the DDK routines ---------------------------------------------------------------

def PsLookupProcessByProcessId(ProcessId):
    """(status, Process): a referenced process object for any live Linux
    process (dereference it with ObDereferenceObject).  STATUS_INVALID_PARAMETER
    for a pid that names no process: none such, a thread, or a kernel thread
    (Linux's kernel threads are NT's system threads, not processes)."""
    try:
        pid = int(ProcessId)
    except (TypeError, ValueError):
        return st.STATUS_INVALID_PARAMETER, None
    proc = find(pid)
    if proc is None:
        return st.STATUS_INVALID_PARAMETER, None
    try:
        ob.reference(proc)
    except RuntimeError:   # its last reference went between find and here
        return st.STATUS_INVALID_PARAMETER, None
    return st.STATUS_SUCCESS, proc


def _fill_program_fields(proc: EPROCESS) -> None:
    """Programs' and System's objects get the NT fields on first use."""
    if not hasattr(proc, "CreateTime"):
        proc.CreateTime = _ticks_to_system_time(proc.start_time) if proc.start_time is not None else 0
    if not hasattr(proc, "InheritedFromUniqueProcessId"):
        proc.InheritedFromUniqueProcessId = 0 if proc.is_system else (procinfo.parent_pid(proc.pid) or 0)
    if not hasattr(proc, "ExitStatus"):
        proc.ExitStatus = st.STATUS_PENDING
    if not hasattr(proc, "image_path"):
        proc.image_path = "" if proc.is_system else (procinfo.image_path(proc.pid) or "")


def PsGetProcessImageFileName(Process) -> str:
    """EPROCESS.ImageFileName: the executable's file name, cut to NT's 14 characters."""
    return (Process.image or "")[:_IMAGE_FILE_NAME_CHARS]


def PsGetProcessCreateTimeQuadPart(Process) -> int:
    _fill_program_fields(Process)
    return Process.CreateTime


def PsGetProcessExitStatus(Process) -> int:
    _fill_program_fields(Process)
    return Process.ExitStatus


def PsGetProcessInheritedFromUniqueProcessId(Process) -> int:
    _fill_program_fields(Process)
    return Process.InheritedFromUniqueProcessId
