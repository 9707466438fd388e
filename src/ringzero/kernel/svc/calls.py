"""The svc.* CALL methods: the program side of the service control manager
(``ringzero.win32.win32service`` and ``ringzero sc``).

A refused call fails with the Win32 error as its `winerror` and the NTSTATUS
that carries it (0xC007xxxx, which RtlNtStatusToDosError maps back).
"""

from __future__ import annotations

import weakref

from ringzero.kernel import system
from ringzero.kernel.host import CallError, call
from ringzero.kernel.svc.scm import ServiceError
from ringzero.nt import service as sv
from ringzero.win32 import winerror as we

_hooked_hosts: weakref.WeakSet = weakref.WeakSet()


def status_from_win32(code: int) -> int:
    return 0xC0070000 | (code & 0xFFFF)


def _scm(conn):
    scm = system.get().scm
    if scm is None or scm.closed:
        raise CallError(status_from_win32(we.ERROR_SERVICE_DATABASE_LOCKED), "the service control manager is not running",
                        we.ERROR_SERVICE_DATABASE_LOCKED)
    host = conn.host
    if host not in _hooked_hosts:   # SC handles of a program that goes are closed with it
        _hooked_hosts.add(host)
        host.exit_callbacks.append(lambda proc: system.get().scm and system.get().scm.process_exited(proc))
    return scm


def _run(conn, method: str, *args, **kw):
    scm = _scm(conn)
    try:
        return getattr(scm, method)(conn.process, *args, **kw)
    except ServiceError as e:
        raise CallError(status_from_win32(e.winerror), str(e), e.winerror) from None


def _text(args: dict, name: str) -> str | None:
    """A string argument (or None when absent); anything else is ERROR_INVALID_PARAMETER, as from the SCM."""
    v = args.get(name)
    if v is not None and not isinstance(v, str):
        raise CallError(status_from_win32(we.ERROR_INVALID_PARAMETER), f"{name} must be a string, not {v!r}",
                        we.ERROR_INVALID_PARAMETER)
    return v


def _opt(args: dict, name: str):
    """None for an absent argument or SERVICE_NO_CHANGE."""
    v = args.get(name)
    return None if v is None or v == sv.SERVICE_NO_CHANGE else v


@call("svc.open_manager")
def _open_manager(conn, args, rid):
    return _run(conn, "open_manager", int(args.get("access", sv.SC_MANAGER_ALL_ACCESS)))


@call("svc.open")
def _open(conn, args, rid):
    return _run(conn, "open_service", args["manager"], str(args["name"]), int(args.get("access", sv.SERVICE_ALL_ACCESS)))


@call("svc.create")
def _create(conn, args, rid):
    return _run(conn, "create_service", args["manager"], str(args["name"]), _text(args, "display"),
                int(args.get("access", sv.SERVICE_ALL_ACCESS)), int(args.get("type", sv.SERVICE_KERNEL_DRIVER)),
                int(args.get("start", sv.SERVICE_DEMAND_START)), int(args.get("error", sv.SERVICE_ERROR_NORMAL)),
                _text(args, "path") or "", _text(args, "group"), args.get("dependencies"), _text(args, "start_name"))


@call("svc.start")
def _start(conn, args, rid):
    return _run(conn, "start_service", args["handle"])


@call("svc.control")
def _control(conn, args, rid):
    return _run(conn, "control_service", args["handle"], int(args["control"]))


@call("svc.query")
def _query(conn, args, rid):
    return _run(conn, "query_status", args["handle"])


@call("svc.config")
def _config(conn, args, rid):
    return _run(conn, "query_config", args["handle"])


@call("svc.change")
def _change(conn, args, rid):
    return _run(conn, "change_config", args["handle"], service_type=_opt(args, "type"), start=_opt(args, "start"),
                error=_opt(args, "error"), path=_text(args, "path"), group=_text(args, "group"),
                dependencies=args.get("dependencies"), start_name=_text(args, "start_name"),
                display=_text(args, "display"))


@call("svc.delete")
def _delete(conn, args, rid):
    return _run(conn, "delete_service", args["handle"])


@call("svc.enum")
def _enum(conn, args, rid):
    return _run(conn, "enum_services", args["manager"], int(args.get("type", sv.SERVICE_DRIVER)),
                int(args.get("state", sv.SERVICE_STATE_ALL)))


@call("svc.close")
def _close(conn, args, rid):
    return _run(conn, "close_handle", args["handle"])
