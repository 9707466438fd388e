"""win32service for ringzero programs: the service control manager with
pywin32's names, argument order, return values and errors.

    hSCManager = OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    hService = CreateService(hSCManager, "VirtToPhys", "Virtual To Physical Address Converter",
                             SERVICE_START | SERVICE_STOP | DELETE, SERVICE_KERNEL_DRIVER,
                             SERVICE_DEMAND_START, SERVICE_ERROR_IGNORE, path, None, 0, None, None, None)
    StartService(hService, None)                              # DriverEntry runs
    ...
    ControlService(hService, SERVICE_CONTROL_STOP)            # DriverUnload runs
    DeleteService(hService)
    CloseServiceHandle(hService); CloseServiceHandle(hSCManager)

A refused call raises ``pywintypes.error(winerror, funcname, strerror)``; the
kernel's explanation is in the error's ``detail`` attribute.  SC handles are
the service control manager's, not kernel object handles: close them with
CloseServiceHandle (the kernel closes those left open when the program exits).
"""

from __future__ import annotations

from ringzero import client
from ringzero.nt.errors import RtlNtStatusToDosError
from ringzero.nt.service import *  # noqa: F401,F403
from ringzero.nt.service import SC_STATUS_PROCESS_INFO, SERVICE_NO_CHANGE, SERVICE_STATE_ALL, SERVICE_WIN32
from ringzero.win32 import pywintypes
from ringzero.win32.winerror import ERROR_INVALID_HANDLE, ERROR_INVALID_LEVEL, format_message

_STATUS_FIELDS = ("ServiceType", "CurrentState", "ControlsAccepted", "Win32ExitCode", "ServiceSpecificExitCode",
                  "CheckPoint", "WaitHint")
_STATUS_EX_FIELDS = _STATUS_FIELDS + ("ProcessId", "ServiceFlags")


class PySC_HANDLE(pywintypes.HANDLEType):
    """An SC handle: int() gives its value; Close() closes it (with
    CloseServiceHandle); usable as a context manager."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<PySC_HANDLE:{self.handle}>"

    def Close(self) -> None:
        if self.handle:
            h, self.handle = self.handle, 0
            CloseServiceHandle(h)

    close = Close


def _h(handle) -> int:
    if handle is None:
        return 0
    return int(handle)


def _call(funcname: str, method: str, **args):
    try:
        return client.connection().call(method, **args)
    except client.CallFailed as e:
        code = e.winerror if e.winerror is not None else RtlNtStatusToDosError(e.status)
        pywintypes.set_last_error(code)
        err = pywintypes.error(code, funcname, format_message(code))
        err.detail = str(e)
        raise err from None


def _status(d: dict) -> tuple:
    return tuple(d[k] for k in _STATUS_FIELDS)


def OpenSCManager(machineName, dbName, desiredAccess: int) -> PySC_HANDLE:
    if machineName not in (None, "", ".", "localhost"):
        pywintypes.raise_for(1722, "OpenSCManager")   # RPC_S_SERVER_UNAVAILABLE: no remote machines
    if dbName not in (None, "", SERVICES_ACTIVE_DATABASE):  # noqa: F405
        pywintypes.raise_for(1065, "OpenSCManager")   # ERROR_DATABASE_DOES_NOT_EXIST
    return PySC_HANDLE(_call("OpenSCManager", "svc.open_manager", access=desiredAccess & 0xFFFFFFFF))


def OpenService(scHandle, name: str, desiredAccess: int) -> PySC_HANDLE:
    return PySC_HANDLE(_call("OpenService", "svc.open", manager=_h(scHandle), name=name,
                             access=desiredAccess & 0xFFFFFFFF))


def CreateService(scHandle, name: str, displayName, desiredAccess: int, serviceType: int, startType: int,
                  errorControl: int, binaryFile: str, loadOrderGroup=None, bFetchTag=0, serviceDeps=None,
                  acctName=None, password=None):
    """A PySC_HANDLE, or (handle, tag) when bFetchTag is true (the tag is 0:
    ringzero has no load-order tags)."""
    h = PySC_HANDLE(_call("CreateService", "svc.create", manager=_h(scHandle), name=name, display=displayName,
                          access=desiredAccess & 0xFFFFFFFF, type=serviceType, start=startType, error=errorControl,
                          path=binaryFile, group=loadOrderGroup, dependencies=list(serviceDeps or []),
                          start_name=acctName))
    return (h, 0) if bFetchTag else h


def StartService(hService, args=None) -> None:
    _call("StartService", "svc.start", handle=_h(hService), args=list(args or []))


def ControlService(hService, code: int) -> tuple:
    """The SERVICE_STATUS after the control, as a tuple."""
    return _status(_call("ControlService", "svc.control", handle=_h(hService), control=code))


def QueryServiceStatus(hService) -> tuple:
    return _status(_call("QueryServiceStatus", "svc.query", handle=_h(hService)))


def QueryServiceStatusEx(hService, InfoLevel: int = SC_STATUS_PROCESS_INFO) -> dict:
    if InfoLevel != SC_STATUS_PROCESS_INFO:
        pywintypes.raise_for(ERROR_INVALID_LEVEL, "QueryServiceStatusEx")
    d = _call("QueryServiceStatusEx", "svc.query", handle=_h(hService))
    return {k: d[k] for k in _STATUS_EX_FIELDS}


def QueryServiceConfig(hService) -> tuple:
    """(ServiceType, StartType, ErrorControl, BinaryPathName, LoadOrderGroup,
    TagId, Dependencies, ServiceStartName, DisplayName)."""
    c = _call("QueryServiceConfig", "svc.config", handle=_h(hService))
    return (c["ServiceType"], c["StartType"], c["ErrorControl"], c["BinaryPathName"], c["LoadOrderGroup"],
            c["TagId"], tuple(c["Dependencies"]), c["ServiceStartName"], c["DisplayName"])


def ChangeServiceConfig(hService, serviceType: int, startType: int, errorControl: int, binaryFile,
                        loadOrderGroup, bFetchTag, serviceDeps, userName, password, displayName):
    """SERVICE_NO_CHANGE for a number, None for a string, leaves it as it is."""
    def opt(v):
        return None if v is None or v == SERVICE_NO_CHANGE else v
    _call("ChangeServiceConfig", "svc.change", handle=_h(hService), type=opt(serviceType), start=opt(startType),
          error=opt(errorControl), path=binaryFile, group=loadOrderGroup,
          dependencies=None if serviceDeps is None else list(serviceDeps), start_name=userName, display=displayName)
    return 0 if bFetchTag else None


def DeleteService(hService) -> None:
    _call("DeleteService", "svc.delete", handle=_h(hService))


def EnumServicesStatus(hSCManager, ServiceType: int = SERVICE_WIN32, ServiceState: int = SERVICE_STATE_ALL) -> tuple:
    """((ServiceName, DisplayName, SERVICE_STATUS), ...)."""
    rows = _call("EnumServicesStatus", "svc.enum", manager=_h(hSCManager), type=ServiceType, state=ServiceState)
    return tuple((r["ServiceName"], r["DisplayName"], _status(r)) for r in rows)


def CloseServiceHandle(scHandle) -> None:
    h = _h(scHandle)
    if not h:
        pywintypes.raise_for(ERROR_INVALID_HANDLE, "CloseServiceHandle")
    _call("CloseServiceHandle", "svc.close", handle=h)
    if isinstance(scHandle, PySC_HANDLE):
        scHandle.handle = 0
