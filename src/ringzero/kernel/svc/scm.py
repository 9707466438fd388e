"""The service control manager: driver services, their states, and the rules
programs meet through OpenSCManager / CreateService / StartService / ...

A service's configuration is its key in the store,
``\\Registry\\Machine\\System\\CurrentControlSet\\Services\\<Name>`` (Type, Start,
ErrorControl, ImagePath, DisplayName, and a Parameters subkey), so it
survives a kernel restart; its runtime state lives here.  Starting a service
loads its driver (DriverEntry gets the key's path); stopping it unloads it.
Failures are Win32 errors, exactly those Windows gives.

SCM and service handles are the SCM's own (as in services.exe), one table
per program; they are closed when the program goes.  They are not kernel
object handles, but the SCM must count them: a service marked for delete is
removed only when it is stopped and its last handle is closed.
"""

from __future__ import annotations

import itertools
import threading

from ringzero.kernel import dbg
from ringzero.kernel.io import driver as iodriver
from ringzero.kernel.io.objects import FILE_OBJECT
from ringzero.kernel.svc import registry
from ringzero.kernel.svc.store import Store
from ringzero.nt import access as acc
from ringzero.nt import registry as reg
from ringzero.nt import service as sv
from ringzero.nt.errors import RtlNtStatusToDosError
from ringzero.win32 import winerror as we
from ringzero.nt.strings import upcase

SERVICES_KEY = registry.SERVICES_KEY
BOOT_ORDER = (sv.SERVICE_BOOT_START, sv.SERVICE_SYSTEM_START, sv.SERVICE_AUTO_START)
DRIVER_TYPES = (sv.SERVICE_KERNEL_DRIVER, sv.SERVICE_FILE_SYSTEM_DRIVER)
MAX_NAME = 256

SCM_MAPPING = acc.GenericMapping(
    acc.STANDARD_RIGHTS_READ | sv.SC_MANAGER_ENUMERATE_SERVICE | sv.SC_MANAGER_QUERY_LOCK_STATUS,
    acc.STANDARD_RIGHTS_WRITE | sv.SC_MANAGER_CREATE_SERVICE | sv.SC_MANAGER_MODIFY_BOOT_CONFIG,
    acc.STANDARD_RIGHTS_EXECUTE | sv.SC_MANAGER_CONNECT | sv.SC_MANAGER_LOCK,
    sv.SC_MANAGER_ALL_ACCESS)
SERVICE_MAPPING = acc.GenericMapping(
    acc.STANDARD_RIGHTS_READ | sv.SERVICE_QUERY_CONFIG | sv.SERVICE_QUERY_STATUS | sv.SERVICE_INTERROGATE
    | sv.SERVICE_ENUMERATE_DEPENDENTS,
    acc.STANDARD_RIGHTS_WRITE | sv.SERVICE_CHANGE_CONFIG,
    acc.STANDARD_RIGHTS_EXECUTE | sv.SERVICE_START | sv.SERVICE_STOP | sv.SERVICE_PAUSE_CONTINUE
    | sv.SERVICE_USER_DEFINED_CONTROL,
    sv.SERVICE_ALL_ACCESS)
# what Windows' default security gives users who are not administrators
SCM_USER_RIGHTS = (sv.SC_MANAGER_CONNECT | sv.SC_MANAGER_ENUMERATE_SERVICE | sv.SC_MANAGER_QUERY_LOCK_STATUS
                   | acc.STANDARD_RIGHTS_READ)
SERVICE_USER_RIGHTS = (sv.SERVICE_QUERY_CONFIG | sv.SERVICE_QUERY_STATUS | sv.SERVICE_ENUMERATE_DEPENDENTS
                       | sv.SERVICE_INTERROGATE | sv.SERVICE_USER_DEFINED_CONTROL | acc.READ_CONTROL)
_CONTROL_RIGHTS = {
    sv.SERVICE_CONTROL_STOP: sv.SERVICE_STOP,
    sv.SERVICE_CONTROL_PAUSE: sv.SERVICE_PAUSE_CONTINUE,
    sv.SERVICE_CONTROL_CONTINUE: sv.SERVICE_PAUSE_CONTINUE,
    sv.SERVICE_CONTROL_PARAMCHANGE: sv.SERVICE_PAUSE_CONTINUE,
    sv.SERVICE_CONTROL_NETBINDADD: sv.SERVICE_PAUSE_CONTINUE,
    sv.SERVICE_CONTROL_NETBINDREMOVE: sv.SERVICE_PAUSE_CONTINUE,
    sv.SERVICE_CONTROL_NETBINDENABLE: sv.SERVICE_PAUSE_CONTINUE,
    sv.SERVICE_CONTROL_NETBINDDISABLE: sv.SERVICE_PAUSE_CONTINUE,
    sv.SERVICE_CONTROL_INTERROGATE: sv.SERVICE_INTERROGATE,
}


def _check_name(name: str) -> None:
    if not name or len(name) > MAX_NAME or "\\" in name or "/" in name:
        raise ServiceError(we.ERROR_INVALID_NAME, f"{name!r} is not a valid service name")


class ServiceError(Exception):
    """A refused SCM call: the Win32 error the program gets, and why."""

    def __init__(self, winerror: int, message: str = "", status: int | None = None):
        super().__init__(message or we.format_message(winerror))
        self.winerror = winerror
        self.status = status       # the NTSTATUS behind it, when a driver's load failed


class Service:
    """One service's runtime state.  Invariant: `driver` is the DRIVER_OBJECT
    loaded for it while RUNNING or STOP_PENDING and None otherwise; `handles`
    counts the open service handles of every program."""

    def __init__(self, name: str, marked: bool = False):
        self.name = name
        self.state = sv.SERVICE_STOPPED
        self.exit_code = we.ERROR_SERVICE_NEVER_STARTED
        self.driver = None
        self.handles = 0
        self.marked = marked
        self.leaks: list[str] = []
        self.message = ""          # why the last start failed

    @property
    def key(self) -> str:
        return f"{SERVICES_KEY}\\{self.name}"


class ScHandle:
    __slots__ = ("service", "access")

    def __init__(self, service: Service | None, access: int):
        self.service = service     # None for a handle to the SCM itself
        self.access = access


class ServiceControlManager:
    def __init__(self, system, store: Store):
        self.system = system
        self.store = store
        self.lock = threading.RLock()
        self.closed = False
        self.services: dict[str, Service] = {}
        self.tables: dict[object, dict[int, ScHandle]] = {}   # per program (EPROCESS key)
        self._values = itertools.count(0x1000, 8)
        store.create_key(SERVICES_KEY)
        for name in store.subkeys(SERVICES_KEY):
            marked = bool(store.get(f"{SERVICES_KEY}\\{name}", "DeleteFlag", 0))
            self.services[upcase(name)] = Service(name, marked)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.store.close()

    # -- handles and access ----------------------------------------------------

    def _new_handle(self, proc, handle: ScHandle) -> int:
        value = next(self._values)
        self.tables.setdefault(getattr(proc, "key", proc.pid), {})[value] = handle
        if handle.service is not None:
            handle.service.handles += 1
        return value

    def _handle(self, proc, value, service: bool, access: int) -> ScHandle:
        h = self.tables.get(getattr(proc, "key", proc.pid), {}).get(value)
        if h is None or (h.service is not None) != service:
            raise ServiceError(we.ERROR_INVALID_HANDLE, f"{value!r} is not an open "
                               f"{'service' if service else 'service control manager'} handle of this program")
        if access & ~h.access:
            raise ServiceError(we.ERROR_ACCESS_DENIED, f"the handle was not opened with the access this needs "
                               f"({access & ~h.access:#x})")
        return h

    @staticmethod
    def _grant(proc, desired: int, mapping, user_rights: int, all_rights: int) -> int:
        allowed = all_rights if proc.is_admin else user_rights
        want = acc.map_generic(desired & ~acc.MAXIMUM_ALLOWED, mapping)
        if desired & acc.MAXIMUM_ALLOWED:
            want |= allowed
        if want & ~allowed:
            raise ServiceError(we.ERROR_ACCESS_DENIED, "this needs an administrator (root or the kernel's own user)")
        return want

    def open_manager(self, proc, desired: int) -> int:
        access = self._grant(proc, desired, SCM_MAPPING, SCM_USER_RIGHTS, sv.SC_MANAGER_ALL_ACCESS)
        with self.lock:
            return self._new_handle(proc, ScHandle(None, access | sv.SC_MANAGER_CONNECT))

    def close_handle(self, proc, value) -> None:
        with self.lock:
            h = self.tables.get(getattr(proc, "key", proc.pid), {}).pop(value, None)
            if h is None:
                raise ServiceError(we.ERROR_INVALID_HANDLE, f"{value!r} is not an open SCM handle of this program")
            self._release(h)

    def process_exited(self, proc) -> None:
        with self.lock:
            for h in self.tables.pop(getattr(proc, "key", proc.pid), {}).values():
                self._release(h)

    def _release(self, h: ScHandle) -> None:
        svc = h.service
        if svc is not None:
            svc.handles -= 1
            self._refresh(svc)
            self._maybe_remove(svc)

    # -- configuration ------------------------------------------------------------

    def config(self, svc: Service) -> dict:
        g = self.store.get
        return {"Type": g(svc.key, "Type", sv.SERVICE_KERNEL_DRIVER), "Start": g(svc.key, "Start", sv.SERVICE_DEMAND_START),
                "ErrorControl": g(svc.key, "ErrorControl", sv.SERVICE_ERROR_NORMAL), "ImagePath": g(svc.key, "ImagePath", ""),
                "DisplayName": g(svc.key, "DisplayName", svc.name), "Group": g(svc.key, "Group", ""),
                "DependOnService": g(svc.key, "DependOnService", []), "ObjectName": g(svc.key, "ObjectName", "")}

    def _check_display_name(self, display: str, me: Service | None) -> None:
        for other in self.services.values():
            if other is me:
                continue
            if upcase(display) in (upcase(other.name), upcase(str(self.config(other)["DisplayName"]))):
                raise ServiceError(we.ERROR_DUPLICATE_SERVICE_NAME, f"{display!r} is already the name or display "
                                   f"name of service {other.name}")

    @staticmethod
    def _check_kinds(service_type, start, error) -> None:
        if service_type is not None and service_type not in DRIVER_TYPES:
            raise ServiceError(we.ERROR_INVALID_PARAMETER, f"service type {service_type:#x} is not supported: "
                               "ringzero runs kernel drivers (type= kernel) only")
        if start is not None and start not in range(sv.SERVICE_BOOT_START, sv.SERVICE_DISABLED + 1):
            raise ServiceError(we.ERROR_INVALID_PARAMETER, f"start type {start} is not valid")
        if error is not None and error not in range(sv.SERVICE_ERROR_IGNORE, sv.SERVICE_ERROR_CRITICAL + 1):
            raise ServiceError(we.ERROR_INVALID_PARAMETER, f"error control {error} is not valid")

    def _write_config(self, svc: Service, service_type=None, start=None, error=None, path=None, group=None,
                      dependencies=None, start_name=None, display=None) -> None:
        put = self.store.put
        with self.store.transaction():
            self.store.create_key(svc.key)
            self.store.create_key(svc.key + "\\Parameters")
            for name, kind, value in (("Type", reg.REG_DWORD, service_type), ("Start", reg.REG_DWORD, start),
                                      ("ErrorControl", reg.REG_DWORD, error), ("ImagePath", reg.REG_EXPAND_SZ, path),
                                      ("DisplayName", reg.REG_SZ, display), ("Group", reg.REG_SZ, group),
                                      ("DependOnService", reg.REG_MULTI_SZ, dependencies),
                                      ("ObjectName", reg.REG_SZ, start_name)):
                if value is not None:
                    put(svc.key, name, kind, value)

    # -- creating, opening, deleting --------------------------------------------------

    def create_service(self, proc, manager, name: str, display: str | None, desired: int, service_type: int,
                       start: int, error: int, path: str, group: str | None = None,
                       dependencies: list | None = None, start_name: str | None = None) -> int:
        with self.lock:
            self._handle(proc, manager, False, sv.SC_MANAGER_CREATE_SERVICE)
            _check_name(name)
            if not path:
                raise ServiceError(we.ERROR_INVALID_PARAMETER, "a driver service needs a binary path (the driver's file or module)")
            self._check_kinds(service_type, start, error)
            existing = self.services.get(upcase(name))
            if existing is not None:
                raise ServiceError(we.ERROR_SERVICE_MARKED_FOR_DELETE if existing.marked else we.ERROR_SERVICE_EXISTS,
                                   f"service {existing.name} " + ("is marked for delete" if existing.marked else "exists"))
            display = display or name
            self._check_display_name(display, None)
            access = self._grant(proc, desired, SERVICE_MAPPING, SERVICE_USER_RIGHTS, sv.SERVICE_ALL_ACCESS)
            svc = Service(name)
            self._write_config(svc, service_type, start, error, path, group or "", list(dependencies or []),
                               start_name or "", display)
            self.services[upcase(name)] = svc
            dbg.emit(f"service {name} created ({path})", source="scm")
            return self._new_handle(proc, ScHandle(svc, access))

    def open_service(self, proc, manager, name: str, desired: int) -> int:
        with self.lock:
            self._handle(proc, manager, False, 0)
            svc = self.services.get(upcase(str(name)))
            if svc is None:
                raise ServiceError(we.ERROR_SERVICE_DOES_NOT_EXIST, f"there is no service {name!r}")
            if svc.marked:
                raise ServiceError(we.ERROR_SERVICE_MARKED_FOR_DELETE, f"service {svc.name} is marked for delete")
            access = self._grant(proc, desired, SERVICE_MAPPING, SERVICE_USER_RIGHTS, sv.SERVICE_ALL_ACCESS)
            return self._new_handle(proc, ScHandle(svc, access))

    def delete_service(self, proc, value) -> None:
        with self.lock:
            svc = self._handle(proc, value, True, acc.DELETE).service
            if svc.marked:
                raise ServiceError(we.ERROR_SERVICE_MARKED_FOR_DELETE, f"service {svc.name} is already marked for delete")
            svc.marked = True
            self.store.put(svc.key, "DeleteFlag", reg.REG_DWORD, 1)
            dbg.emit(f"service {svc.name} marked for delete", source="scm")
            self._refresh(svc)
            self._maybe_remove(svc)

    def _maybe_remove(self, svc: Service) -> None:
        if svc.marked and svc.state == sv.SERVICE_STOPPED and svc.handles == 0 and not self.closed:
            self.store.delete_tree(svc.key)
            self.services.pop(upcase(svc.name), None)
            dbg.emit(f"service {svc.name} deleted", source="scm")

    def change_config(self, proc, value, service_type=None, start=None, error=None, path=None, group=None,
                      dependencies=None, start_name=None, display=None) -> None:
        with self.lock:
            svc = self._handle(proc, value, True, sv.SERVICE_CHANGE_CONFIG).service
            if svc.marked:
                raise ServiceError(we.ERROR_SERVICE_MARKED_FOR_DELETE, f"service {svc.name} is marked for delete")
            self._check_kinds(service_type, start, error)
            if display:
                self._check_display_name(display, svc)
            self._write_config(svc, service_type, start, error, path or None, group, dependencies, start_name,
                               display or None)

    # -- status ---------------------------------------------------------------------

    def _refresh(self, svc: Service) -> None:
        """Follow the driver: a driver unloaded by any path leaves the service stopped."""
        drv = svc.driver
        if drv is None:
            return
        if self.system.drivers.get(drv.name) is drv:
            svc.state = sv.SERVICE_STOP_PENDING if drv.unloading else sv.SERVICE_RUNNING
            return
        svc.state, svc.driver, svc.exit_code = sv.SERVICE_STOPPED, None, we.NO_ERROR
        svc.leaks = svc.leaks or [str(x) for x in getattr(drv, "leaks", [])]
        self._maybe_remove(svc)

    def _holders(self, drv) -> list[str]:
        out = []
        for proc in list(self.system.processes.values()):
            for h, entry in proc.handles.items():
                obj = entry.obj
                if isinstance(obj, FILE_OBJECT) and obj.DeviceObject.DriverObject is drv:
                    name = (obj.DeviceObject.object_name() or "(unnamed device)") + str(obj.FileName or "")
                    out.append(f"pid {proc.pid} ({proc.image}) handle {h:#x} to {name}")
        return out

    def status(self, svc: Service) -> dict:
        self._refresh(svc)
        running = svc.state == sv.SERVICE_RUNNING
        accepts = sv.SERVICE_ACCEPT_STOP if running and svc.driver.DriverUnload is not None else 0
        return {"ServiceType": self.config(svc)["Type"], "CurrentState": svc.state, "ControlsAccepted": accepts,
                "Win32ExitCode": svc.exit_code, "ServiceSpecificExitCode": 0, "CheckPoint": 0, "WaitHint": 0,
                "ProcessId": 0, "ServiceFlags": 0, "Leaks": list(svc.leaks), "Message": svc.message,
                "WaitingFor": self._holders(svc.driver) if svc.state == sv.SERVICE_STOP_PENDING else []}

    def query_status(self, proc, value) -> dict:
        with self.lock:
            return self.status(self._handle(proc, value, True, sv.SERVICE_QUERY_STATUS).service)

    def query_config(self, proc, value) -> dict:
        with self.lock:
            svc = self._handle(proc, value, True, sv.SERVICE_QUERY_CONFIG).service
            c = self.config(svc)
            return {"ServiceType": c["Type"], "StartType": c["Start"], "ErrorControl": c["ErrorControl"],
                    "BinaryPathName": c["ImagePath"], "LoadOrderGroup": c["Group"], "TagId": 0,
                    "Dependencies": list(c["DependOnService"]), "ServiceStartName": c["ObjectName"],
                    "DisplayName": c["DisplayName"], "ServiceName": svc.name}

    def enum_services(self, proc, manager, service_type: int, state: int) -> list[dict]:
        with self.lock:
            self._handle(proc, manager, False, sv.SC_MANAGER_ENUMERATE_SERVICE)
            if state not in (sv.SERVICE_ACTIVE, sv.SERVICE_INACTIVE, sv.SERVICE_STATE_ALL):
                raise ServiceError(we.ERROR_INVALID_PARAMETER, f"service state {state} is not valid")
            if not service_type or service_type & ~sv.SERVICE_TYPE_ALL:
                raise ServiceError(we.ERROR_INVALID_PARAMETER, f"service type {service_type:#x} is not valid")
            out = []
            for svc in sorted(self.services.values(), key=lambda s: upcase(s.name)):
                s = self.status(svc)
                if self.services.get(upcase(svc.name)) is not svc or not s["ServiceType"] & service_type:
                    continue
                active = s["CurrentState"] != sv.SERVICE_STOPPED
                if (active and state & sv.SERVICE_ACTIVE) or (not active and state & sv.SERVICE_INACTIVE):
                    out.append({"ServiceName": svc.name, "DisplayName": self.config(svc)["DisplayName"], **s})
            return out

    # -- starting and stopping --------------------------------------------------------

    def start_service(self, proc, value) -> dict:
        with self.lock:
            svc = self._handle(proc, value, True, sv.SERVICE_START).service
            self._refresh(svc)
            if svc.marked:
                raise ServiceError(we.ERROR_SERVICE_MARKED_FOR_DELETE, f"service {svc.name} is marked for delete")
            cfg = self.config(svc)
            if cfg["Start"] == sv.SERVICE_DISABLED:
                raise ServiceError(we.ERROR_SERVICE_DISABLED, f"service {svc.name} is disabled")
            if svc.state != sv.SERVICE_STOPPED:
                raise ServiceError(we.ERROR_SERVICE_ALREADY_RUNNING, f"service {svc.name} is not stopped")
            svc.state = sv.SERVICE_START_PENDING
        self._start(svc, cfg)
        with self.lock:
            return self.status(svc)

    def _start(self, svc: Service, cfg: dict) -> None:
        """Load the driver (outside the SCM lock: DriverEntry may take its time)."""
        try:
            drv = iodriver.load_driver(svc.name, cfg["ImagePath"], svc.key)
        except iodriver.DriverLoadError as e:
            code = RtlNtStatusToDosError(e.status)
            with self.lock:
                svc.state, svc.exit_code, svc.message = sv.SERVICE_STOPPED, code, str(e)
                self._maybe_remove(svc)
            level = "info" if cfg["ErrorControl"] == sv.SERVICE_ERROR_IGNORE else "fault"
            dbg.emit(f"The {cfg['DisplayName']} service failed to start due to the following error: "
                     f"{we.format_message(code)} ({e})", level=level, source="scm")
            raise ServiceError(code, str(e), e.status) from None
        with self.lock:
            svc.driver, svc.state, svc.exit_code, svc.leaks, svc.message = drv, sv.SERVICE_RUNNING, we.NO_ERROR, [], ""
        dbg.emit(f"service {svc.name} started", source="scm")

    def load_outside(self, name: str, image: str):
        """NtLoadDriver for a driver the SCM is not asked to start (`ringzero
        kernel --load`, the `driver.load` call the samples make): as on NT it
        loads under a service key, the existing one of that name (now pointing
        at `image`) or a new demand-start kernel-driver service, so `sc query`
        shows it running and `sc stop` unloads it.  The DRIVER_OBJECT, or
        ServiceError."""
        with self.lock:
            svc = self.services.get(upcase(name))
            if svc is None:
                _check_name(name)
                svc = Service(name)
                self._write_config(svc, sv.SERVICE_KERNEL_DRIVER, sv.SERVICE_DEMAND_START, sv.SERVICE_ERROR_NORMAL,
                                   image, "", [], "", name)
                self.services[upcase(name)] = svc
                dbg.emit(f"service {name} created for a driver loaded directly ({image})", source="scm")
            else:
                self._refresh(svc)
                if svc.marked:
                    raise ServiceError(we.ERROR_SERVICE_MARKED_FOR_DELETE, f"service {svc.name} is marked for delete")
                if svc.state != sv.SERVICE_STOPPED:
                    raise ServiceError(we.ERROR_SERVICE_ALREADY_RUNNING, f"service {svc.name} is not stopped")
                self._write_config(svc, path=image)
            svc.state = sv.SERVICE_START_PENDING
            cfg = self.config(svc)
        self._start(svc, cfg)
        return svc.driver

    def control_service(self, proc, value, control: int) -> dict:
        with self.lock:
            needed = _CONTROL_RIGHTS.get(control)
            if needed is None:
                if not 128 <= control <= 255:
                    raise ServiceError(we.ERROR_INVALID_PARAMETER, f"control code {control} is not defined")
                needed = sv.SERVICE_USER_DEFINED_CONTROL
            svc = self._handle(proc, value, True, needed).service
            self._refresh(svc)
            if svc.state == sv.SERVICE_STOPPED:
                raise ServiceError(we.ERROR_SERVICE_NOT_ACTIVE, f"service {svc.name} is not started")
            if svc.state != sv.SERVICE_RUNNING:
                raise ServiceError(we.ERROR_SERVICE_CANNOT_ACCEPT_CTRL, f"service {svc.name} is "
                                   + ("starting" if svc.state == sv.SERVICE_START_PENDING else "stopping"))
            if control == sv.SERVICE_CONTROL_INTERROGATE:
                return self.status(svc)
            if control != sv.SERVICE_CONTROL_STOP:
                raise ServiceError(we.ERROR_INVALID_SERVICE_CONTROL, "a driver accepts only STOP and INTERROGATE")
            drv = svc.driver
            if drv.DriverUnload is None:
                raise ServiceError(we.ERROR_INVALID_SERVICE_CONTROL,
                                   f"driver {svc.name} has no DriverUnload routine, so it cannot be stopped")
            svc.state = sv.SERVICE_STOP_PENDING
        iodriver.unload_driver(drv, lambda report: self._unloaded(svc, drv, report))
        with self.lock:
            return self.status(svc)

    def _unloaded(self, svc: Service, drv, report) -> None:
        leaks = [str(x) for x in report.leaks]
        with self.lock:
            if svc.driver is drv:
                svc.state, svc.driver, svc.exit_code, svc.leaks = sv.SERVICE_STOPPED, None, we.NO_ERROR, leaks
                self._maybe_remove(svc)
        dbg.emit(f"service {svc.name} stopped" + (f" with {len(leaks)} leak(s)" if leaks else ""), source="scm")

    def start_at_boot(self) -> None:
        """SERVICE_BOOT_START, then SYSTEM_START, then AUTO_START drivers."""
        for start in BOOT_ORDER:
            with self.lock:
                todo = [(s, self.config(s)) for s in sorted(self.services.values(), key=lambda s: upcase(s.name))
                        if not s.marked]
            for svc, cfg in todo:
                if cfg["Start"] != start or svc.state != sv.SERVICE_STOPPED:
                    continue
                svc.state = sv.SERVICE_START_PENDING
                try:
                    self._start(svc, cfg)
                except ServiceError:
                    pass  # logged by _start; the kernel goes on, as with SERVICE_ERROR_IGNORE/NORMAL

    def delete_marked(self) -> None:
        """Services deleted while the last kernel ran but still open then go now."""
        with self.lock:
            for svc in list(self.services.values()):
                self._maybe_remove(svc)


def boot(system, state_dir: str) -> ServiceControlManager:
    """Open the service database (raising StoreError, clearly, if it cannot be
    used), then start the boot, system and auto-start drivers."""
    from ringzero.kernel.svc import calls  # noqa: F401  (registers the svc.* CALL methods)
    store = Store.open(state_dir)
    scm = ServiceControlManager(system, store)
    system.scm = scm
    scm.delete_marked()
    scm.start_at_boot()
    return scm
