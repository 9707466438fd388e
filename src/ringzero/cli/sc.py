"""`ringzero sc`: the service control manager from the shell, like sc.exe.

Same words (``sc create NAME binPath= PATH start= demand``, ``sc start``,
``stop``, ``delete``, ``query``, ``queryex``, ``qc``, ``config``), same output
layout, and the Win32 error as the exit status (the shell sees it modulo 256;
``--json`` carries it whole).  Everything goes through win32service, as
sc.exe goes through advapi32.
"""

from __future__ import annotations

import os
import sys

import click

from ringzero import client
from ringzero.cli.app import main
from ringzero.cli.common import connect, print_json
from ringzero.nt import service as sv
from ringzero.nt.errors import RtlNtStatusToDosError
from ringzero.win32 import pywintypes, win32service
from ringzero.win32.winerror import ERROR_ACCESS_DENIED, format_message

TYPES = {"kernel": sv.SERVICE_KERNEL_DRIVER, "filesys": sv.SERVICE_FILE_SYSTEM_DRIVER,
         "own": sv.SERVICE_WIN32_OWN_PROCESS, "share": sv.SERVICE_WIN32_SHARE_PROCESS}
STARTS = {"boot": sv.SERVICE_BOOT_START, "system": sv.SERVICE_SYSTEM_START, "auto": sv.SERVICE_AUTO_START,
          "demand": sv.SERVICE_DEMAND_START, "disabled": sv.SERVICE_DISABLED}
ERRORS = {"ignore": sv.SERVICE_ERROR_IGNORE, "normal": sv.SERVICE_ERROR_NORMAL, "severe": sv.SERVICE_ERROR_SEVERE,
          "critical": sv.SERVICE_ERROR_CRITICAL}
ENUM_TYPES = {"driver": sv.SERVICE_DRIVER, "service": sv.SERVICE_WIN32, "all": sv.SERVICE_TYPE_ALL,
              "kernel": sv.SERVICE_KERNEL_DRIVER, "filesys": sv.SERVICE_FILE_SYSTEM_DRIVER}
ENUM_STATES = {"active": sv.SERVICE_ACTIVE, "inactive": sv.SERVICE_INACTIVE, "all": sv.SERVICE_STATE_ALL}

TYPE_NAMES = {sv.SERVICE_KERNEL_DRIVER: "KERNEL_DRIVER", sv.SERVICE_FILE_SYSTEM_DRIVER: "FILE_SYSTEM_DRIVER",
              sv.SERVICE_WIN32_OWN_PROCESS: "WIN32_OWN_PROCESS", sv.SERVICE_WIN32_SHARE_PROCESS: "WIN32_SHARE_PROCESS"}
STATE_NAMES = {sv.SERVICE_STOPPED: "STOPPED", sv.SERVICE_START_PENDING: "START_PENDING",
               sv.SERVICE_STOP_PENDING: "STOP_PENDING", sv.SERVICE_RUNNING: "RUNNING",
               sv.SERVICE_CONTINUE_PENDING: "CONTINUE_PENDING", sv.SERVICE_PAUSE_PENDING: "PAUSE_PENDING",
               sv.SERVICE_PAUSED: "PAUSED"}
START_NAMES = {v: k.upper() + ("_START" if k not in ("disabled",) else "") for k, v in STARTS.items()}
ERROR_NAMES = {v: k.upper() for k, v in ERRORS.items()}
OPTION_WORDS = {"type", "start", "error", "binpath", "group", "tag", "depend", "obj", "displayname", "password",
                "state", "bufsize", "ri"}

USAGE = """\
Usage: ringzero sc [--json] COMMAND [NAME] [option= value ...]

  create NAME binPath= PATH [type= kernel|filesys] [start= boot|system|auto|demand|disabled]
              [error= ignore|normal|severe|critical] [DisplayName= TEXT] [group= NAME] [depend= A/B]
  config NAME [the options of create]      change a service's configuration
  start NAME | stop NAME | delete NAME
  query [NAME] [type= driver|all] [state= active|inactive|all]   (without NAME: every service)
  queryex [NAME] ...                        the same, with PID and FLAGS
  qc NAME                                   the service's configuration

Options are written as sc.exe writes them: the word, an equals sign, a space, the value.
The exit status is the Win32 error code (0 on success)."""


class Failed(Exception):
    def __init__(self, error: pywintypes.error):
        super().__init__(error.strerror)
        self.error = error


def _parse(words: list[str]) -> tuple[list[str], dict[str, str]]:
    """Positional words, and {option: value} from sc.exe's `word= value` pairs."""
    positional, options, i = [], {}, 0
    while i < len(words):
        w = words[i]
        key, eq, rest = w.partition("=")
        if eq and key.lower() in OPTION_WORDS:
            if rest:
                value = rest
            elif i + 1 < len(words):
                i += 1
                value = words[i]
            else:
                raise click.UsageError(f"{key}= needs a value after it (write `{key}= VALUE`)")
            options[key.lower()] = value
        elif eq:
            raise click.UsageError(f"unknown option {key}= (see `ringzero sc --help`)")
        else:
            positional.append(w)
        i += 1
    return positional, options


def _choice(table: dict, key: str, value: str) -> int:
    try:
        return table[value.lower()]
    except KeyError:
        raise click.UsageError(f"{key}= {value}: expected one of {', '.join(table)}") from None


def _call(fn, *args):
    try:
        return fn(*args)
    except pywintypes.error as e:
        raise Failed(e) from None


def _status_lines(name: str, s: dict, display: str | None = None, ex: bool = False) -> list[str]:
    lines = ["", f"SERVICE_NAME: {name}"]
    if display is not None:
        lines.append(f"DISPLAY_NAME: {display}")
    t, state, accepts = s["ServiceType"], s["CurrentState"], s["ControlsAccepted"]
    lines.append(f"        TYPE               : {t:x}  {TYPE_NAMES.get(t, '')}".rstrip())
    lines.append(f"        STATE              : {state}  {STATE_NAMES.get(state, '')}".rstrip())
    if state != sv.SERVICE_STOPPED:
        flags = ["STOPPABLE" if accepts & sv.SERVICE_ACCEPT_STOP else "NOT_STOPPABLE",
                 "PAUSABLE" if accepts & sv.SERVICE_ACCEPT_PAUSE_CONTINUE else "NOT_PAUSABLE",
                 "ACCEPTS_SHUTDOWN" if accepts & sv.SERVICE_ACCEPT_SHUTDOWN else "IGNORES_SHUTDOWN"]
        lines.append(f"                                ({', '.join(flags)})")
    lines.append(f"        WIN32_EXIT_CODE    : {s['Win32ExitCode']}  ({s['Win32ExitCode']:#x})")
    lines.append(f"        SERVICE_EXIT_CODE  : {s['ServiceSpecificExitCode']}  ({s['ServiceSpecificExitCode']:#x})")
    lines.append(f"        CHECKPOINT         : {s['CheckPoint']:#x}")
    lines.append(f"        WAIT_HINT          : {s['WaitHint']:#x}")
    if ex:
        lines.append(f"        PID                : {s['ProcessId']}")
        lines.append("        FLAGS              :" + (f" {s['ServiceFlags']:#x}" if s["ServiceFlags"] else ""))
    for label, items in (("WAITING_FOR", s.get("WaitingFor") or []), ("LEAKS", s.get("Leaks") or [])):
        if items:
            head = f"        {label:<19}: " + (str(len(items)) if label == "LEAKS" else items[0])
            lines.append(head)
            lines += [f"                                {x}" for x in (items if label == "LEAKS" else items[1:])]
    return lines


def _query_ex(h) -> dict:
    """QueryServiceStatusEx, with what ringzero adds (leaks, handles an unload waits for)."""
    try:
        return client.connection().call("svc.query", handle=int(h))
    except client.CallFailed as e:
        code = e.winerror if e.winerror is not None else RtlNtStatusToDosError(e.status)
        raise Failed(pywintypes.error(code, "QueryServiceStatusEx", format_message(code))) from None


def _config_args(options: dict) -> dict:
    out = {}
    if "type" in options:
        out["type"] = _choice(TYPES, "type", options["type"])
    if "start" in options:
        out["start"] = _choice(STARTS, "start", options["start"])
    if "error" in options:
        out["error"] = _choice(ERRORS, "error", options["error"])
    if "binpath" in options:
        path = options["binpath"]
        if (path.endswith(".py") or os.sep in path) and os.path.exists(path):
            path = os.path.abspath(path)   # as GetFullPathName does in the seed: the kernel's cwd is not ours
        out["path"] = path
    for key, name in (("displayname", "display"), ("group", "group"), ("obj", "start_name")):
        if key in options:
            out[name] = options[key]
    if "depend" in options:
        out["dependencies"] = [d for d in options["depend"].split("/") if d]
    return out


def _run(command: str, positional: list[str], options: dict, as_json: bool) -> object:
    """Perform one sc command; its JSON-able result (text printed unless as_json)."""
    out: list[str] = []
    result: object = None
    need_name = command in ("create", "config", "start", "stop", "delete", "qc")
    if need_name and not positional:
        raise click.UsageError(f"sc {command} needs a service NAME")
    name = positional[0] if positional else None
    manager_access = {"create": sv.SC_MANAGER_CREATE_SERVICE}.get(command, sv.SC_MANAGER_CONNECT)
    if command in ("query", "queryex") and name is None:
        manager_access = sv.SC_MANAGER_ENUMERATE_SERVICE
    scm = _call(win32service.OpenSCManager, None, None, manager_access)
    try:
        if command == "create":
            c = _config_args(options)
            if "path" not in c:
                raise click.UsageError("sc create needs binPath= PATH (the driver's .py file or module name)")
            h = _call(win32service.CreateService, scm, name, c.get("display"), sv.SERVICE_ALL_ACCESS,
                      c.get("type", sv.SERVICE_KERNEL_DRIVER), c.get("start", sv.SERVICE_DEMAND_START),
                      c.get("error", sv.SERVICE_ERROR_NORMAL), c["path"], c.get("group"), 0,
                      c.get("dependencies"), c.get("start_name"), None)
            win32service.CloseServiceHandle(h)
            out.append("[SC] CreateService SUCCESS")
            result = {"service": name, "created": True}
        elif command in ("query", "queryex") and name is None:
            kind = _choice(ENUM_TYPES, "type", options.get("type", "driver"))
            state = _choice(ENUM_STATES, "state", options.get("state", "all"))
            rows = []
            for svc_name, display, _ in _call(win32service.EnumServicesStatus, scm, kind, state):
                h = _call(win32service.OpenService, scm, svc_name, sv.SERVICE_QUERY_STATUS)
                try:
                    s = _query_ex(h)
                finally:
                    win32service.CloseServiceHandle(h)
                rows.append({"ServiceName": svc_name, "DisplayName": display, **s})
                out += _status_lines(svc_name, s, display, ex=command == "queryex")
            result = rows
        else:
            access = {"config": sv.SERVICE_CHANGE_CONFIG, "start": sv.SERVICE_START | sv.SERVICE_QUERY_STATUS,
                      "stop": sv.SERVICE_STOP | sv.SERVICE_QUERY_STATUS, "delete": 0x10000,
                      "qc": sv.SERVICE_QUERY_CONFIG}.get(command, sv.SERVICE_QUERY_STATUS)
            h = _call(win32service.OpenService, scm, name, access)
            try:
                result, lines = _on_service(command, h, name, options)
                out += lines
            finally:
                win32service.CloseServiceHandle(h)
    finally:
        win32service.CloseServiceHandle(scm)
    if not as_json:
        click.echo("\n".join(out))
    return result


def _on_service(command: str, h, name: str, options: dict) -> tuple[object, list[str]]:
    if command == "start":
        _call(win32service.StartService, h, None)
        s = _query_ex(h)
        return s, _status_lines(name, s, ex=True)
    if command == "stop":
        _call(win32service.ControlService, h, sv.SERVICE_CONTROL_STOP)
        s = _query_ex(h)
        return s, _status_lines(name, s)
    if command == "delete":
        _call(win32service.DeleteService, h)
        return {"service": name, "deleted": True}, ["[SC] DeleteService SUCCESS"]
    if command == "qc":
        c = _call(win32service.QueryServiceConfig, h)
        keys = ("ServiceType", "StartType", "ErrorControl", "BinaryPathName", "LoadOrderGroup", "TagId",
                "Dependencies", "ServiceStartName", "DisplayName")
        d = dict(zip(keys, c))
        d["Dependencies"] = list(d["Dependencies"])
        deps = d["Dependencies"]
        lines = ["[SC] QueryServiceConfig SUCCESS", "", f"SERVICE_NAME: {name}",
                 f"        TYPE               : {c[0]:x}  {TYPE_NAMES.get(c[0], '')}".rstrip(),
                 f"        START_TYPE         : {c[1]}   {START_NAMES.get(c[1], '')}".rstrip(),
                 f"        ERROR_CONTROL      : {c[2]}   {ERROR_NAMES.get(c[2], '')}".rstrip(),
                 f"        BINARY_PATH_NAME   : {c[3]}".rstrip(),
                 f"        LOAD_ORDER_GROUP   : {c[4]}".rstrip(),
                 f"        TAG                : {c[5]}",
                 f"        DISPLAY_NAME       : {c[8]}".rstrip(),
                 f"        DEPENDENCIES       : {deps[0] if deps else ''}".rstrip()]
        lines += [f"                           : {x}" for x in deps[1:]]
        lines.append(f"        SERVICE_START_NAME : {c[7]}".rstrip())
        return d, lines
    if command == "config":
        c = _config_args(options)
        if not c:
            raise click.UsageError("sc config needs at least one option (type= start= error= binPath= DisplayName= ...)")
        _call(win32service.ChangeServiceConfig, h, c.get("type", sv.SERVICE_NO_CHANGE),
              c.get("start", sv.SERVICE_NO_CHANGE), c.get("error", sv.SERVICE_NO_CHANGE), c.get("path"),
              c.get("group"), 0, c.get("dependencies"), c.get("start_name"), None, c.get("display"))
        return {"service": name, "changed": sorted(c)}, ["[SC] ChangeServiceConfig SUCCESS"]
    s = _query_ex(h)
    return s, _status_lines(name, s, ex=command == "queryex")


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("words", nargs=-1, type=click.UNPROCESSED)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of sc.exe's layout.")
def sc(words, as_json) -> None:
    """The service control manager, like sc.exe: create, config, start, stop,
    delete, query, queryex, qc.

    \b
    ringzero sc create VirtToPhys binPath= src/ringzero/drivers/virttophys.py type= kernel start= demand
    ringzero sc start VirtToPhys
    ringzero sc query VirtToPhys
    ringzero sc query                  (every driver service; state= active|inactive|all)

    Changing services needs an administrator (root, or the user the kernel
    runs as); anyone may query.  The exit status is the Win32 error code.
    """
    positional, options = _parse(list(words))
    if not positional:
        click.echo(USAGE)
        sys.exit(0)
    command = positional[0].lower()
    if command not in ("create", "config", "start", "stop", "delete", "query", "queryex", "qc"):
        raise click.UsageError(f"sc has no command {positional[0]!r}\n\n{USAGE}")
    connect()
    try:
        result = _run(command, positional[1:], options, as_json)
    except Failed as f:
        e = f.error
        detail = getattr(e, "detail", "")
        if as_json:
            print_json({"function": e.funcname, "error": e.winerror, "message": e.strerror, "detail": detail})
        else:
            click.echo(f"[SC] {e.funcname} FAILED {e.winerror}:\n\n{e.strerror}\n")
            if detail and (e.funcname == "StartService" or e.winerror == ERROR_ACCESS_DENIED):
                click.echo(f"{detail}\n")   # why a driver did not load, or who may do this
        sys.exit(e.winerror if e.winerror & 0xFF else 1)
    except client.KernelGone as e:
        raise click.ClickException(str(e)) from None
    finally:
        client.disconnect()
    if as_json:
        print_json(result)
