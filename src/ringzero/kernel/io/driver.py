"""Loading and unloading drivers: DriverEntry, DriverUnload and the leak report.

A driver is a Python module named by its image path: a file path (`x.py`) or
a module name (`ringzero.drivers.example`).  Loading imports it afresh under a
private name, builds a DRIVER_OBJECT, names it `\\Driver\\<service>` and calls
`DriverEntry(DriverObject, RegistryPath)`.  A module that fails to import,
has no DriverEntry, or whose DriverEntry fails or raises leaves nothing behind:
whatever devices, links, pool and timers it made are taken back.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import os
import sys
import threading
from dataclasses import dataclass, field

from ringzero.kernel import dbg, system
from ringzero.kernel.context import calling_driver, in_process
from ringzero.kernel.io.device import IoDeleteDevice
from ringzero.kernel.io.objects import DRIVER_OBJECT
from ringzero.kernel.ke import timer
from ringzero.kernel.mm import mdl as mm_mdl
from ringzero.kernel.mm import pool
from ringzero.kernel.ob import object as ob
from ringzero.kernel.ob.namespace import ObjectError, SymbolicLink
from ringzero.nt import status as st
from ringzero.nt.strings import upcase

_counter = itertools.count(1)
_load_lock = threading.RLock()

# Kernel components that register things on a driver's behalf (process notify
# routines, ...) add `hook(driver) -> list[Leak]` here: at unload, and when a
# load fails, it removes whatever the driver left registered and names it.
unload_hooks: list = []


class DriverLoadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Leak:
    kind: str        # "device", "symbolic link", "pool", "timer", "mdl", "handle"
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(slots=True)
class UnloadReport:
    driver: str
    leaks: list[Leak] = field(default_factory=list)
    deferred: bool = False   # devices still had open handles; the unload completes when they close


def _import(image: str, tag: str):
    """A fresh copy of the module each load, so its globals start clean as a
    newly loaded image's do."""
    if image.endswith(".py") or os.sep in image:
        path = os.path.abspath(image)
        if not os.path.isfile(path):
            what = "is a directory, not a driver's .py file" if os.path.isdir(path) else "does not exist"
            raise DriverLoadError(st.STATUS_OBJECT_NAME_NOT_FOUND, f"driver image {path} {what}")
    else:
        try:
            spec = importlib.util.find_spec(image)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin or not os.path.isfile(spec.origin):
            raise DriverLoadError(st.STATUS_OBJECT_NAME_NOT_FOUND, f"no driver module named {image!r}")
        path = spec.origin
    spec = importlib.util.spec_from_file_location(f"ringzero_driver_{tag}_{next(_counter)}", path)
    if spec is None or spec.loader is None:
        raise DriverLoadError(st.STATUS_INVALID_IMAGE_FORMAT, f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return module


def load_driver(service: str, image: str, registry_path: str | None = None) -> DRIVER_OBJECT:
    """Import `image` and run its DriverEntry; the DRIVER_OBJECT on success."""
    sysm = system.get()
    with _load_lock:
        if upcase(service) in (upcase(k) for k in sysm.drivers):
            raise DriverLoadError(st.STATUS_IMAGE_ALREADY_LOADED, f"driver {service} is already loaded")
        driver = DRIVER_OBJECT(service)
        driver.image = image
        driver.registry_path = registry_path or f"\\Registry\\Machine\\System\\CurrentControlSet\\Services\\{service}"
        try:
            with calling_driver(driver), in_process(sysm.system_process):
                module = _import(image, service)
        except DriverLoadError:
            raise
        except BaseException as exc:
            dbg.fault(f"import of {image}", exc, driver)
            raise DriverLoadError(st.STATUS_DRIVER_UNABLE_TO_LOAD, f"{image} failed to import: {exc!r}") from exc
        entry = getattr(module, "DriverEntry", None)
        if not callable(entry):
            raise DriverLoadError(st.STATUS_DRIVER_ENTRYPOINT_NOT_FOUND, f"{image} has no DriverEntry")
        driver.module = module
        try:
            sysm.namespace.insert(f"\\Driver\\{service}", driver)
        except ObjectError as e:
            raise DriverLoadError(e.status, str(e)) from None
        ob.reference(driver)
        try:
            with calling_driver(driver), in_process(sysm.system_process):
                status = entry(driver, driver.registry_path)
        except BaseException as exc:
            dbg.fault("DriverEntry", exc, driver)
            _take_back(driver)
            raise DriverLoadError(st.STATUS_DRIVER_INTERNAL_ERROR, f"DriverEntry of {service} raised {exc!r}") from exc
        if not isinstance(status, int):
            _take_back(driver)
            raise DriverLoadError(st.STATUS_DRIVER_INTERNAL_ERROR, f"DriverEntry of {service} returned {status!r}, not an NTSTATUS")
        status &= 0xFFFFFFFF
        if not st.NT_SUCCESS(status):
            _take_back(driver)
            raise DriverLoadError(status, f"DriverEntry of {service} failed with {st.status_name(status)}")
        for dev in driver.devices():
            dev.Flags &= ~0x80  # DO_DEVICE_INITIALIZING: cleared for devices made in DriverEntry
        sysm.drivers[service] = driver
        dbg.emit(f"driver {service} loaded from {image}", source="kernel")
        return driver


def _created_links(driver) -> list[str]:
    ns = system.get().namespace
    return [path for path, obj in ns.walk("\\") if isinstance(obj, SymbolicLink) and getattr(obj, "creator", None) is driver]


def _take_back(driver: DRIVER_OBJECT) -> None:
    """Undo a failed load: nothing half-created may remain."""
    _run_unload_hooks(driver)
    _reclaim(driver)
    ob.remove_name(driver)


def _reclaim(driver: DRIVER_OBJECT) -> None:
    """Take back what a driver made and did not undo: links, devices (and
    their I/O timers), timers, MDLs (and their views in programs), pool."""
    for path in _created_links(driver):
        try:
            obj, _ = system.get().namespace.lookup(path, parse=False, follow_last=False)
            ob.remove_name(obj)
        except ObjectError:
            pass
    for dev in driver.devices():
        if dev.Timer is not None:
            dev.Timer.token = None
        IoDeleteDevice(dev)
    for t in timer.live_timers_of(driver):
        timer.KeCancelTimer(t)
    mm_mdl.reclaim_driver(driver)
    pool.reclaim_driver(driver)


def _run_unload_hooks(driver: DRIVER_OBJECT) -> list[Leak]:
    out: list[Leak] = []
    for hook in list(unload_hooks):
        try:
            out += hook(driver)
        except BaseException as exc:
            dbg.fault(f"unload hook {getattr(hook, '__name__', hook)}", exc, driver)
    return out


def leaks_of(driver: DRIVER_OBJECT) -> list[Leak]:
    out = []
    for dev in driver.devices():
        out.append(Leak("device", dev.object_name() or "(unnamed device)"))
        if dev.Timer is not None and dev.Timer.token is not None:
            out.append(Leak("timer", f"IoTimer of {dev.object_name() or 'an unnamed device'} still started"))
    for path in _created_links(driver):
        out.append(Leak("symbolic link", path))
    for a in pool.live_blocks_of(driver):
        out.append(Leak("pool", f"{a.size} bytes tagged {pool.tag_text(a.tag)!r}"))
    for t in timer.live_timers_of(driver):
        out.append(Leak("timer", "KTIMER still set" + (" with a DPC" if t.Dpc is not None else "")))
    for m in mm_mdl.live_mdls_of(driver):
        out.append(Leak("mdl", f"MDL of {m.ByteCount} bytes not freed"))
    return out


def unload_driver(driver: DRIVER_OBJECT, on_unloaded=None) -> UnloadReport:
    """ControlService(STOP), as NT's IopUnloadDriver: the driver is marked
    unload-pending at once (no new file can be opened on its devices); its
    DriverUnload runs, and the leak report is made, once no file object is
    open on any of its devices: now, or when the last one closes
    (`report.deferred`).  `on_unloaded(report)` is called when that happened."""
    report = UnloadReport(driver.name)
    with _load_lock:
        if driver.unloading:
            report.deferred = not getattr(driver, "unloaded", False)
            return report
        driver.unloading = True
        if _busy_devices(driver):
            report.deferred = True
            driver.on_last_reference = lambda: _unload_when_idle(driver, report, on_unloaded)
            dbg.emit(f"driver {driver.name}: unload pending until the open handles to its devices close",
                     source="kernel")
            return report
        _finish_unload(driver, report)
    if on_unloaded is not None:
        on_unloaded(report)
    return report


def _unload_when_idle(driver: DRIVER_OBJECT, report: UnloadReport, on_unloaded) -> None:
    """The last file object on the driver's devices went: finish a pending unload."""
    with _load_lock:
        if getattr(driver, "unloaded", False) or _busy_devices(driver):
            return
        _finish_unload(driver, report)
    if on_unloaded is not None:
        on_unloaded(report)


def _finish_unload(driver: DRIVER_OBJECT, report: UnloadReport) -> None:
    """DriverUnload, the leak report, and taking back what the driver left."""
    sysm = system.get()
    driver.unloaded = True
    unload = driver.DriverUnload
    if unload is not None:
        try:
            with calling_driver(driver), in_process(sysm.system_process):
                unload(driver)
        except BaseException as exc:
            dbg.fault("DriverUnload", exc, driver)
    report.leaks = leaks_of(driver) + _run_unload_hooks(driver)
    for leak in report.leaks:
        dbg.emit(f"{driver.name}: leaked at unload: {leak}", level="leak", source=driver.name)
    _reclaim(driver)
    driver.leaks = report.leaks
    sysm.drivers.pop(driver.name, None)
    ob.remove_name(driver)
    _forget_module(driver)
    dbg.emit(f"driver {driver.name} unloaded", source="kernel")


def _busy_devices(driver) -> list:
    """Devices, deleted or not, that file objects still have open."""
    return [d for d in driver.all_devices if d.ReferenceCount]


def _forget_module(driver) -> None:
    mod = driver.module
    if mod is not None:
        sys.modules.pop(mod.__name__, None)
