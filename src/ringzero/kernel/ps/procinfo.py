"""Facts about a Linux process, read from procfs (/proc/<pid>/...).

The process manager uses these to fill its process objects: the image path
and name, the command line, the parent, the real credentials, and the start
time which, paired with the pid, names a process uniquely despite pid reuse.

Needs a mounted /proc.  Reading /proc/<pid>/exe of another user's process
needs root (CAP_SYS_PTRACE); everything else here is world-readable.  A process
may exit between any two reads, so every function returns None (or an empty
string) instead of raising when the process or the fact is gone.
"""

from __future__ import annotations

import os

__all__ = [
    "command_line",
    "credentials",
    "image_file_name",
    "image_path",
    "parent_pid",
    "start_time",
]

_DELETED_SUFFIX = " (deleted)"
_STAT_PPID = 4
_STAT_STARTTIME = 22


def _read(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as file:
            return file.read()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat, index 0 being field 1 (pid).

    The comm field is everything between the first '(' and the last ')', since
    comm itself may hold spaces and parentheses.
    """
    data = _read(pid, "stat")
    if not data:
        return None
    open_paren = data.find(b"(")
    close_paren = data.rfind(b")")
    if open_paren < 0 or close_paren < open_paren:
        return None
    head = data[:open_paren].split()
    if len(head) != 1:
        return None
    return [head[0], data[open_paren + 1:close_paren], *data[close_paren + 1:].split()]


def _stat_int(pid: int, field: int) -> int | None:
    fields = _stat_fields(pid)
    if fields is None or len(fields) < field:
        return None
    try:
        return int(fields[field - 1])
    except ValueError:
        return None


def image_path(pid: int) -> str | None:
    """The absolute path of the executable, or None (gone, kernel thread, no access).

    A binary replaced or deleted since it was started is reported by the kernel
    with a " (deleted)" suffix, which is removed.
    """
    try:
        path = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    if path.endswith(_DELETED_SUFFIX) and not os.path.lexists(path):
        path = path[: -len(_DELETED_SUFFIX)]
    return path or None


def image_file_name(pid: int) -> str:
    """The executable's file name, else the kernel's comm, else ''."""
    path = image_path(pid)
    if path:
        return os.path.basename(path)
    comm = _read(pid, "comm")
    if comm is None:
        return ""
    return comm.rstrip(b"\n").decode("utf-8", "replace")


def _quote(arg: str) -> str:
    if arg and not any(ch in arg for ch in ' \t\n\v"'):
        return arg
    parts = ['"']
    backslashes = 0
    for ch in arg:
        if ch == "\\":
            backslashes += 1
            continue
        if ch == '"':
            parts.append("\\" * (2 * backslashes + 1))
        else:
            parts.append("\\" * backslashes)
        backslashes = 0
        parts.append(ch)
    parts.append("\\" * (2 * backslashes))
    parts.append('"')
    return "".join(parts)


def command_line(pid: int) -> str:
    """The command line as one string, '' if gone or a kernel thread.

    Arguments are joined with spaces; an argument that is empty or holds
    whitespace or a double quote is double-quoted with the escaping rules of
    Windows' CommandLineToArgvW, so it splits back into the same arguments.
    A process that rewrote its argument area as one plain string (as
    setproctitle does) is returned as that string; trailing empty arguments,
    indistinguishable from the NUL padding such processes leave, are dropped.
    """
    data = _read(pid, "cmdline")
    if not data:
        return ""
    if not data.endswith(b"\0"):
        return data.split(b"\0", 1)[0].decode("utf-8", "replace")
    data = data.rstrip(b"\0")
    if not data:
        return ""
    args = data.split(b"\0")
    return " ".join(_quote(arg.decode("utf-8", "replace")) for arg in args)


def parent_pid(pid: int) -> int | None:
    """The parent's pid (0 for init and kthreadd), or None if gone."""
    return _stat_int(pid, _STAT_PPID)


def start_time(pid: int) -> int | None:
    """When the process started, in clock ticks after boot (stat field 22)."""
    return _stat_int(pid, _STAT_STARTTIME)


def credentials(pid: int) -> tuple[int, int] | None:
    """The real (uid, gid) from /proc/<pid>/status, or None if gone."""
    data = _read(pid, "status")
    if data is None:
        return None
    uid = gid = None
    for line in data.splitlines():
        if line.startswith(b"Uid:"):
            uid = line.split()[1:2]
        elif line.startswith(b"Gid:"):
            gid = line.split()[1:2]
    if not uid or not gid:
        return None
    try:
        return int(uid[0]), int(gid[0])
    except ValueError:
        return None


def thread_exited(pid: int, tid: int) -> bool:
    """Whether thread `tid` of the live process `pid` has ended: the process
    still has its task directory and the thread's task is gone from it (a
    process that is gone altogether is not this question's)."""
    return os.path.isdir(f"/proc/{pid}/task") and not os.path.exists(f"/proc/{pid}/task/{tid}")
