"""The kernel's slow-path calls: introspection for the tools (obj, handles,
poolmon, dbgview) and driver loading for administrators."""

from __future__ import annotations

import json
import os

from ringzero.kernel import dbg, system
from ringzero.kernel.host import CallError, call
from ringzero.kernel.io import driver as iodriver
from ringzero.kernel.io.objects import DEVICE_OBJECT, DRIVER_OBJECT, FILE_OBJECT
from ringzero.kernel.ke import timer
from ringzero.kernel.mm import mdl as mm_mdl
from ringzero.kernel.mm import pool
from ringzero.kernel.ob.namespace import Directory, ObjectError, SymbolicLink
from ringzero.kernel.ps import process
from ringzero.nt import status as st
from ringzero.protocol import wire


def require_admin(conn) -> None:
    if not conn.process.is_admin:
        raise CallError(st.STATUS_ACCESS_DENIED, "this needs an administrator (root or the kernel's own user)")


def describe(obj) -> dict:
    d = {"name": obj.name, "type": obj.type_name, "path": obj.object_name(), "handles": obj.handle_count,
         "references": obj.pointer_count}
    if isinstance(obj, SymbolicLink):
        d["target"] = obj.target
    elif isinstance(obj, DEVICE_OBJECT):
        d["driver"] = obj.DriverObject.DriverName
        d["open_files"] = obj.ReferenceCount
        d["device_type"] = obj.DeviceType
        d["characteristics"] = obj.Characteristics
        d["flags"] = obj.Flags
        d["security"] = obj.security.sddl() if obj.security is not None else None
    elif isinstance(obj, DRIVER_OBJECT):
        d["devices"] = [dv.object_name() or "(unnamed)" for dv in obj.devices()]
        d["image"] = getattr(obj, "image", "")
    elif obj.type_name == "Event":
        d["event_type"] = "Notification" if obj.Type == 0 else "Synchronization"
        d["signalled"] = bool(obj.signal_state)
    elif obj.type_name == "Mutant":
        owner = obj.OwnerThread
        d["owner"] = ({"pid": owner[0], "tid": owner[1]} if isinstance(owner, tuple)
                      else {"kernel_thread": owner} if owner is not None else None)
        d["depth"] = 1 - obj.signal_state if obj.signal_state <= 0 else 0
    return d


@call("kernel.info")
def _info(conn, args, rid):
    s = system.get()
    return {"pid": os.getpid(), "uid": os.getuid(), "processes": len(s.processes), "drivers": sorted(s.drivers),
            "counters": dict(s.counters), "mdls": mm_mdl.live_mdl_count(), "state_dir": s.state_dir,
            "pool": {"in_use": pool.in_use, "limit": pool.limit},
            "caller": {"pid": conn.process.pid, "uid": conn.process.uid, "admin": conn.process.is_admin}}


@call("obj.list")
def _obj(conn, args, rid):
    path = args.get("path") or "\\"
    ns = system.get().namespace
    try:
        obj, _ = ns.lookup(path, parse=False, follow_last=False)
    except ObjectError as e:
        raise CallError(e.status, str(e)) from None
    out = describe(obj)
    if isinstance(obj, Directory):
        out["children"] = [describe(c) for c in obj.entries()]
    return out


@call("handles.list")
def _handles(conn, args, rid):
    want = args.get("pid")
    out = []
    for proc in list(system.get().processes.values()):
        if want is not None and proc.pid != want:
            continue
        if proc.uid != conn.process.uid and not conn.process.is_admin:
            continue
        rows = []
        for h, e in proc.handles.items():
            o = e.obj
            name = o.object_name()
            row = {"handle": h, "type": o.type_name, "name": name, "access": e.access}
            if isinstance(o, FILE_OBJECT):
                row["name"] = (o.DeviceObject.object_name() or "(unnamed device)") + str(o.FileName or "")
                if o.synchronous:
                    # a request in progress holds the file object's lock; others wait for it (file.py)
                    row["busy"], row["waiters"] = o.Busy.locked(), o.Waiters
            rows.append(row)
        out.append({"pid": proc.pid, "uid": proc.uid, "image": proc.image, "handles": rows,
                    "pending_irps": len(proc.pending), "views": len(proc.views),
                    "quota_used": proc.io_charged, "quota": process.quota})
    return out


@call("pool.stats")
def _pool(conn, args, rid):
    return pool.stats()


@call("driver.load")
def _load(conn, args, rid):
    require_admin(conn)
    image = args["image"]
    service = args.get("service") or os.path.splitext(os.path.basename(image))[0]
    try:
        load_driver(service, image)
    except iodriver.DriverLoadError as e:
        raise CallError(e.status, str(e)) from None
    return {"service": service}


def load_driver(service: str, image: str) -> None:
    """Load a driver the SCM was not asked to start: under its service key, as
    NtLoadDriver does, when the SCM runs (raises DriverLoadError)."""
    scm = system.get().scm
    if scm is None:
        iodriver.load_driver(service, image)
        return
    from ringzero.kernel.svc.scm import ServiceError
    try:
        scm.load_outside(service, image)
    except ServiceError as e:
        raise iodriver.DriverLoadError(e.status or st.STATUS_UNSUCCESSFUL, str(e)) from None


@call("driver.unload")
def _unload(conn, args, rid):
    require_admin(conn)
    drv = system.get().drivers.get(args["service"])
    if drv is None:
        raise CallError(st.STATUS_OBJECT_NAME_NOT_FOUND, f"no driver {args['service']!r} is loaded")
    rep = iodriver.unload_driver(drv)
    return {"leaks": [str(x) for x in rep.leaks], "deferred": rep.deferred}


@call("driver.counters")
def _counters(conn, args, rid):
    drv = system.get().drivers.get(args["service"])
    if drv is None:
        raise CallError(st.STATUS_OBJECT_NAME_NOT_FOUND, f"no driver {args['service']!r} is loaded")
    return {"counters": drv.counters, "faults": drv.faults, "faulted": drv.faulted,
            "timers": len(timer.live_timers_of(drv)), "pool": len(pool.live_blocks_of(drv))}


@call("dbg.subscribe")
def _subscribe(conn, args, rid):
    """Stream debug-log records as PUSH frames on this request id until the
    program goes.  The kernel's debug output is an administrator's to read, as
    capturing it on Windows is (drivers' tracebacks, paths, other programs' pids)."""
    require_admin(conn)
    def push(rec, conn=conn, rid=rid):
        if conn.closed:
            raise ConnectionError("gone")
        conn.send(wire.encode(wire.Frame(wire.Kind.PUSH, rid, json.dumps(rec.as_dict()).encode())))
    history = dbg.subscribe(push, int(args.get("history", 0)))
    conn.subscriptions.append(push)
    return {"history": [r.as_dict() for r in history]}


@call("dbg.recent")
def _recent(conn, args, rid):
    require_admin(conn)
    return [r.as_dict() for r in dbg.recent(int(args.get("count", 100)))]


@call("ps.notify")
def _ps_notify(conn, args, rid):
    """The registered process notify routines and what the connector fed them."""
    from ringzero.kernel.ps import notify
    return {"routines": notify.registrations(), "stats": dict(notify.stats)}
