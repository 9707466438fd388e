"""Event objects as programs use them (NtCreateEvent & co.) and
ObReferenceObjectByHandle as drivers use it.

Named events live in \\BaseNamedObjects, carry their creator's security (the
creator's user, plus administrators, may open them; others get
STATUS_ACCESS_DENIED unless the creator's DACL says otherwise), and disappear
with their last handle.
"""

from __future__ import annotations

from ringzero.kernel import system
from ringzero.kernel.context import current
from ringzero.kernel.ke import dispatcher as ke
from ringzero.kernel.mm.user import NtException
from ringzero.kernel.ob import object as ob
from ringzero.kernel.ob.handles import HandleError
from ringzero.kernel.ob.namespace import ObjectError
from ringzero.kernel.se import security as se
from ringzero.nt import access as acc
from ringzero.nt import status as st

EVENT_MAPPING = acc.EVENT_GENERIC_MAPPING
BASE = "\\BaseNamedObjects\\"
MAX_NAME = 260


def _event_path(name: str) -> str:
    if not name or len(name) > MAX_NAME or "\\" in name.removeprefix("Global\\").removeprefix("Local\\"):
        raise NtException(st.STATUS_OBJECT_NAME_INVALID, f"invalid event name {name!r}")
    return BASE + name.removeprefix("Global\\").removeprefix("Local\\")


def create_event(process, manual_reset: bool, initial: bool, name: str | None, desired: int) -> tuple[int, int]:
    """(status, handle): STATUS_OBJECT_NAME_EXISTS when a named event existed
    (the handle is to it, as CreateEvent then sets ERROR_ALREADY_EXISTS)."""
    ev_type = ke.NotificationEvent if manual_reset else ke.SynchronizationEvent
    if name:
        try:
            path = _event_path(name)
        except NtException as e:
            return e.status, 0
        ns = system.get().namespace
        try:
            existing, _ = ns.lookup(path, parse=False)
        except ObjectError:
            existing = None
        if existing is not None:
            if existing.type_name != "Event":
                return st.STATUS_OBJECT_TYPE_MISMATCH, 0
            status, handle = _open(process, existing, desired)
            return (st.STATUS_OBJECT_NAME_EXISTS if status == st.STATUS_SUCCESS else status), handle
        ev = ke.KEVENT(ev_type, initial)
        ev.security = se.SecurityDescriptor(owner_uid=process.uid, group_gid=process.gid,
                                            dacl=[se.Ace(True, acc.GENERIC_ALL, f"U:{process.uid}"),
                                                  se.Ace(True, acc.GENERIC_ALL, "BA")])
        ob.reference(ev)
        try:
            ns.insert(path, ev)
        except ObjectError as e:
            ob.dereference(ev)
            if e.status == st.STATUS_OBJECT_NAME_COLLISION:  # lost a race: open theirs
                return create_event(process, manual_reset, initial, name, desired)
            return e.status, 0
        try:
            handle = process.handles.insert(ev, acc.map_generic(desired, EVENT_MAPPING) or acc.EVENT_ALL_ACCESS)
        except HandleError as e:
            ob.remove_name(ev)
            ob.dereference(ev)
            return e.status, 0
        ob.dereference(ev)
        return st.STATUS_SUCCESS, handle
    ev = ke.KEVENT(ev_type, initial)
    try:
        handle = process.handles.insert(ev, acc.map_generic(desired, EVENT_MAPPING) or acc.EVENT_ALL_ACCESS)
    except HandleError as e:
        return e.status, 0
    return st.STATUS_SUCCESS, handle


def _open(process, ev, desired: int) -> tuple[int, int]:
    try:
        granted = se.access_check(ev.security, process, desired or acc.EVENT_ALL_ACCESS, EVENT_MAPPING)
    except se.AccessDenied:
        return st.STATUS_ACCESS_DENIED, 0
    try:
        return st.STATUS_SUCCESS, process.handles.insert(ev, granted)
    except HandleError as e:
        return e.status, 0


def open_event(process, name: str, desired: int) -> tuple[int, int]:
    try:
        ev, _ = system.get().namespace.lookup(_event_path(name), parse=False)
    except ObjectError as e:
        return e.status, 0
    except NtException as e:
        return e.status, 0
    if ev.type_name != "Event":
        return st.STATUS_OBJECT_TYPE_MISMATCH, 0
    return _open(process, ev, desired)


def event_op(process, handle: int, op: int) -> tuple[int, int]:
    """SET/RESET/PULSE/QUERY: (status, previous state)."""
    try:
        e = process.handles.get(handle)
    except HandleError as err:
        return err.status, 0
    if e.obj.type_name != "Event":
        return st.STATUS_OBJECT_TYPE_MISMATCH, 0
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
    access = e.access if same_access else desired
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
        mapping = EVENT_MAPPING if obj.type_name == "Event" else acc.FILE_GENERIC_MAPPING
        want = acc.map_generic(DesiredAccess, mapping)
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
