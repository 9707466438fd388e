"""Event objects as programs use them (NtCreateEvent & co.) and
ObReferenceObjectByHandle as drivers use it.

Named events live in \\BaseNamedObjects, carry their creator's security (the
creator's user, plus administrators, may open them; others get
STATUS_ACCESS_DENIED unless the creator's DACL says otherwise), and disappear
with their last handle.
"""

from __future__ import annotations

import threading
import weakref

from ringzero.kernel import system
from ringzero.kernel.context import current
from ringzero.kernel.ke import dispatcher as ke
from ringzero.kernel.mm.user import NtException
from ringzero.kernel.ob import object as ob
from ringzero.kernel.ob.handles import HandleError
from ringzero.kernel.ob.namespace import ObjectError
from ringzero.kernel.ps import procinfo
from ringzero.kernel.se import security as se
from ringzero.nt import access as acc
from ringzero.nt import status as st

EVENT_MAPPING = acc.EVENT_GENERIC_MAPPING
BASE = "\\BaseNamedObjects\\"
MAX_NAME = 260


def _named_path(name: str) -> str:
    if not name or len(name) > MAX_NAME or "\\" in name.removeprefix("Global\\").removeprefix("Local\\"):
        raise NtException(st.STATUS_OBJECT_NAME_INVALID, f"invalid object name {name!r}")
    return BASE + name.removeprefix("Global\\").removeprefix("Local\\")


class _Kind:
    """What naming, opening and access checks need of an object type."""

    def __init__(self, type_name: str, mapping, all_access: int):
        self.type_name = type_name
        self.mapping = mapping
        self.all_access = all_access


_EVENT = _Kind("Event", EVENT_MAPPING, acc.EVENT_ALL_ACCESS)
_MUTANT = _Kind("Mutant", acc.MUTANT_GENERIC_MAPPING, acc.MUTANT_ALL_ACCESS)
_KIND_OF = {"Event": _EVENT, "Mutant": _MUTANT}


def _mapping_of(obj) -> acc.GenericMapping:
    """The GENERIC_MAPPING of `obj`'s type (a file's for any type but events and mutants)."""
    kind = _KIND_OF.get(obj.type_name)
    return kind.mapping if kind is not None else acc.FILE_GENERIC_MAPPING


def create_event(process, manual_reset: bool, initial: bool, name: str | None, desired: int) -> tuple[int, int]:
    """(status, handle): STATUS_OBJECT_NAME_EXISTS when a named event existed
    (the handle is to it, as CreateEvent then sets ERROR_ALREADY_EXISTS)."""
    ev_type = ke.NotificationEvent if manual_reset else ke.SynchronizationEvent
    return _create(process, _EVENT, name, desired, lambda: ke.KEVENT(ev_type, initial))


def _create(process, kind: _Kind, name: str | None, desired: int, make) -> tuple[int, int]:
    """NtCreateEvent / NtCreateMutant: a new object from make(), named in
    \\BaseNamedObjects with its creator's security when `name` is given, or
    the existing object of that name opened (STATUS_OBJECT_NAME_EXISTS)."""
    access = acc.map_generic(desired, kind.mapping) or kind.all_access
    if not name:
        try:
            return st.STATUS_SUCCESS, process.handles.insert(make(), access)
        except HandleError as e:
            return e.status, 0
    try:
        path = _named_path(name)
    except NtException as e:
        return e.status, 0
    ns = system.get().namespace
    try:
        existing, _ = ns.lookup(path, parse=False)
    except ObjectError:
        existing = None
    if existing is not None:
        if existing.type_name != kind.type_name:
            return st.STATUS_OBJECT_TYPE_MISMATCH, 0
        status, handle = _open(process, existing, desired)
        return (st.STATUS_OBJECT_NAME_EXISTS if status == st.STATUS_SUCCESS else status), handle
    obj = make()
    obj.security = se.SecurityDescriptor(owner_uid=process.uid, group_gid=process.gid,
                                         dacl=[se.Ace(True, acc.GENERIC_ALL, f"U:{process.uid}"),
                                               se.Ace(True, acc.GENERIC_ALL, "BA")])
    ob.reference(obj)
    try:
        ns.insert(path, obj)
    except ObjectError as e:
        ob.dereference(obj)
        if e.status == st.STATUS_OBJECT_NAME_COLLISION:  # lost a race: open theirs
            return _create(process, kind, name, desired, make)
        return e.status, 0
    try:
        handle = process.handles.insert(obj, access)
    except HandleError as e:
        ob.remove_name(obj)
        ob.dereference(obj)
        return e.status, 0
    ob.dereference(obj)
    return st.STATUS_SUCCESS, handle


def _open(process, obj, desired: int) -> tuple[int, int]:
    kind = _KIND_OF[obj.type_name]
    try:
        granted = se.access_check(obj.security, process, desired or kind.all_access, kind.mapping)
    except se.AccessDenied:
        return st.STATUS_ACCESS_DENIED, 0
    try:
        return st.STATUS_SUCCESS, process.handles.insert(obj, granted)
    except HandleError as e:
        return e.status, 0


def open_event(process, name: str, desired: int) -> tuple[int, int]:
    return _open_named(process, _EVENT, name, desired)


def _open_named(process, kind: _Kind, name: str, desired: int) -> tuple[int, int]:
    try:
        obj, _ = system.get().namespace.lookup(_named_path(name), parse=False)
    except ObjectError as e:
        return e.status, 0
    except NtException as e:
        return e.status, 0
    if obj.type_name != kind.type_name:
        return st.STATUS_OBJECT_TYPE_MISMATCH, 0
    return _open(process, obj, desired)


# -- mutants (NtCreateMutant & co.): owned by a program's thread -------------------

# The program mutants that have had an owner since the thread watch last
# looked (KTHREAD's mutant list, for abandonment): the watch only looks at
# these, so a program holding many free mutexes costs it nothing.
_owned: "weakref.WeakSet[KMUTANT]" = weakref.WeakSet()
_owned_lock = threading.Lock()      # (taken inside the dispatcher's lock, never around it)


class KMUTANT(ke.KMUTEX):
    """A program's mutex: its owner is a program thread, (pid, tid)."""

    __slots__ = ()

    def _consume(self, thread) -> None:      # (the dispatcher's lock held)
        super()._consume(thread)
        with _owned_lock:
            _owned.add(self)


def _owner(process) -> tuple[int, int]:
    """The owner a program's thread is to the dispatcher, as wait_for_handles names it."""
    return (process.pid, current.program_thread)


def create_mutant(process, initial_owner: bool, name: str | None, desired: int) -> tuple[int, int]:
    """NtCreateMutant: (status, handle).  `initial_owner` makes the calling
    thread its owner, only if the mutant is created here (as CreateMutex)."""
    def make():
        m = KMUTANT()
        if initial_owner:
            m.signal_state, m.OwnerThread = 0, _owner(process)
            with _owned_lock:
                _owned.add(m)
        return m
    return _create(process, _MUTANT, name, desired, make)


def open_mutant(process, name: str, desired: int) -> tuple[int, int]:
    return _open_named(process, _MUTANT, name, desired)


def release_mutant(process, handle: int) -> tuple[int, int]:
    """NtReleaseMutant: (status, previous count).  Only the owning thread may
    release it (STATUS_MUTANT_NOT_OWNED otherwise); any handle to it will do."""
    status, e = _entry_of(process, handle, "Mutant")
    if e is None:
        return status, 0
    try:
        return st.STATUS_SUCCESS, ke.release_mutant(e.obj, _owner(process))
    except ke.MutexNotOwned:
        return st.STATUS_MUTANT_NOT_OWNED, 0


def abandon_mutants_of_exited_threads(processes) -> int:
    """Abandon the mutants whose owning thread has exited while its program
    lives on, as NT does at thread exit (the thread watch calls this)."""
    if not _owned:
        return 0
    watched = {p.pid for p in processes if p.tids_here and not p.exiting and not p.is_system}

    return abandon_mutants(lambda owner: owner[0] in watched and procinfo.thread_exited(*owner))


def abandon_mutants(owned_by) -> int:
    """Abandon the program mutants whose owner `owned_by((pid, tid))` says is
    gone: the next thread to get one is told WAIT_ABANDONED.  How many."""
    gone = []
    with _owned_lock:
        owned = list(_owned)
    for m in owned:
        owner = m.OwnerThread
        if owner is None:
            with _owned_lock:
                _owned.discard(m)       # released since (a wait that takes it adds it again)
                if m.OwnerThread is not None:
                    _owned.add(m)       # taken meanwhile, and added before the discard
        elif type(owner) is tuple and owned_by(owner):     # (a driver's thread may own one too)
            gone.append((owner, m))
    for owner, m in gone:
        ke.release_owned_mutexes(owner, [m])
    return len(gone)


def _entry_of(process, handle: int, type_name: str):
    """(STATUS_SUCCESS, the handle's entry), or (the error, None) for a bad
    handle or one to another type of object."""
    try:
        e = process.handles.get(handle)
    except HandleError as err:
        return err.status, None
    if e.obj.type_name != type_name:
        return st.STATUS_OBJECT_TYPE_MISMATCH, None
    return st.STATUS_SUCCESS, e


def event_op(process, handle: int, op: int) -> tuple[int, int]:
    """SET/RESET/PULSE/QUERY: (status, previous state)."""
    status, e = _entry_of(process, handle, "Event")
    if e is None:
        return status, 0
    need = acc.EVENT_QUERY_STATE if op == 3 else acc.EVENT_MODIFY_STATE
    if not e.access & need:
        return st.STATUS_ACCESS_DENIED, 0
    ev = e.obj
    if op == 0:
        return st.STATUS_SUCCESS, ke.KeSetEvent(ev)
    if op == 1:
        return st.STATUS_SUCCESS, ke.KeResetEvent(ev)
    if op == 2:
        return st.STATUS_SUCCESS, ke.KePulseEvent(ev)
    if op == 3:
        return st.STATUS_SUCCESS, ke.KeReadStateEvent(ev)
    return st.STATUS_INVALID_PARAMETER, 0


def wait_for_handles(process, handles: list[int], wait_all: bool, timeout_ms: int, on_done):
    """NtWaitForMultipleObjects for a program: the objects must be waitable and
    the handles opened with SYNCHRONIZE.  No kernel thread waits: on_done(status)
    runs when the wait ends, and the wait block is returned (None if a check
    failed at once, after on_done got the error)."""
    status, objs, owners = _waitable(process, handles, wait_all)
    if objs is None:
        on_done(status)
        return None
    # the wait holds the objects the handles name (a file object, not the
    # event inside it, which lives and dies with its file object)
    refs = [ob.reference(o) for o in owners]

    def done(status, refs=refs):
        for o in refs:
            ob.dereference(o)
        on_done(status)

    seconds = None if timeout_ms < 0 else timeout_ms / 1000
    return ke.wait_async(objs, wait_all, seconds, (process.pid, current.program_thread), done)


def _waitable(process, handles: list[int], wait_all: bool):
    """(status, dispatcher objects, the objects the handles name); both lists
    None when a check fails."""
    if not 0 < len(handles) <= ke.MAXIMUM_WAIT_OBJECTS:
        return st.STATUS_INVALID_PARAMETER, None, None
    if wait_all and len(set(handles)) != len(handles):
        return st.STATUS_INVALID_PARAMETER_MIX, None, None
    objs, owners = [], []
    for h in handles:
        try:
            e = process.handles.get(h)
        except HandleError as err:
            return err.status, None, None
        obj = e.obj
        if not e.access & acc.SYNCHRONIZE:
            return st.STATUS_ACCESS_DENIED, None, None
        disp = obj if isinstance(obj, ke.DispatcherObject) else getattr(obj, "dispatcher", None)
        if not isinstance(disp, ke.DispatcherObject):
            return st.STATUS_OBJECT_TYPE_MISMATCH, None, None
        objs.append(disp)
        owners.append(obj)
    return st.STATUS_SUCCESS, objs, owners


def duplicate_handle(process, handle: int, desired: int, same_access: bool) -> tuple[int, int]:
    try:
        e = process.handles.get(handle)
    except HandleError as err:
        return err.status, 0
    access = e.access if same_access else acc.map_generic(desired, _mapping_of(e.obj))
    if access & ~e.access:
        return st.STATUS_ACCESS_DENIED, 0
    try:
        return st.STATUS_SUCCESS, process.handles.insert(e.obj, access)
    except HandleError as err:
        return err.status, 0


# -- for drivers ----------------------------------------------------------------

class OBJECT_HANDLE_INFORMATION:
    __slots__ = ("HandleAttributes", "GrantedAccess")

    def __init__(self, attributes: int = 0, granted: int = 0):
        self.HandleAttributes = attributes
        self.GrantedAccess = granted


class _ObjectType:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"*{self.name}ObjectType"


ExEventObjectType = _ObjectType("Event")
IoFileObjectType = _ObjectType("File")
PsProcessType = _ObjectType("Process")
ExSemaphoreObjectType = _ObjectType("Semaphore")
ExMutantObjectType = _ObjectType("Mutant")


def ObReferenceObjectByHandle(Handle, DesiredAccess: int, ObjectType=None, AccessMode: int = 0, *rest):
    """(status, Object, HandleInformation), resolving `Handle` in the handle table
    of the process whose context this is (the program, during its dispatch).

    UserMode checks the handle's granted access against `DesiredAccess`;
    KernelMode trusts the caller, as on NT."""
    process = current.process
    if process is None:
        return st.STATUS_INVALID_HANDLE, None, None
    try:
        h = int(Handle)
    except (TypeError, ValueError):
        return st.STATUS_INVALID_HANDLE, None, None
    try:
        e = process.handles.get(h)
    except HandleError as err:
        return err.status, None, None
    obj = e.obj
    if ObjectType is not None and obj.type_name != getattr(ObjectType, "name", ObjectType):
        return st.STATUS_OBJECT_TYPE_MISMATCH, None, None
    if AccessMode == 1:
        want = acc.map_generic(DesiredAccess, _mapping_of(obj))
        if want & ~e.access:
            return st.STATUS_ACCESS_DENIED, None, None
    ob.reference(obj)
    return st.STATUS_SUCCESS, obj, OBJECT_HANDLE_INFORMATION(0, e.access)


def ObDereferenceObject(Object) -> None:
    ob.dereference(Object)


def ObReferenceObject(Object) -> None:
    ob.reference(Object)


def ObfDereferenceObject(Object) -> None:
    ob.dereference(Object)
