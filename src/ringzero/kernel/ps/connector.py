"""Process creation and exit notifications from the Linux process-events connector.

The kernel broadcasts a record for every fork, exec and exit (and for uid/gid,
session, ptrace, comm and coredump changes) on the netlink protocol
NETLINK_CONNECTOR, multicast group CN_IDX_PROC, to every socket that has joined
the group and subscribed with PROC_CN_MCAST_LISTEN (linux/connector.h,
linux/cn_proc.h).  This is what the process manager builds
PsSetCreateProcessNotifyRoutine-style callbacks on.

Requirements: the caller must live in the initial user and pid namespaces
(the kernel ignores subscriptions from anywhere else) and, on kernels before
the unprivileged-listener change, must hold CAP_NET_ADMIN (run as root).

The module does no threading: ``ProcessEventSource.read`` blocks the calling
thread, and ``fileno`` lets a caller multiplex the socket with others.
"""

from __future__ import annotations

import errno as _errno
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

__all__ = [
    "ConnectorUnavailable",
    "ProcEvent",
    "ProcessEventSource",
    "parse_messages",
]

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

PROC_EVENT_NONE = 0x00000000
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_UID = 0x00000004
PROC_EVENT_GID = 0x00000040
PROC_EVENT_SID = 0x00000080
PROC_EVENT_PTRACE = 0x00000100
PROC_EVENT_COMM = 0x00000200
PROC_EVENT_COREDUMP = 0x40000000
PROC_EVENT_EXIT = 0x80000000

_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_PROC_EVENT_HEADER = struct.Struct("=IIQ")
_ACK = struct.Struct("=I")
_TWO_PIDS = struct.Struct("=ii")
_FOUR_PIDS = struct.Struct("=iiii")
_ID = struct.Struct("=iiII")
_EXIT = struct.Struct("=iiIi")
_EXIT_PARENT = struct.Struct("=ii")
_COMM_LEN = 16

_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if socket.SO_RCVBUF == 8 else None)
_RECV_BUFFER_BYTES = 64 * 1024
_SOCKET_BUFFER_BYTES = 8 * 1024 * 1024


class ConnectorUnavailable(OSError):
    """The process-events connector cannot be opened, joined or subscribed to."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    @classmethod
    def from_os_error(cls, step: str, exc: OSError) -> ConnectorUnavailable:
        code = exc.errno
        reason = os.strerror(code) if code else str(exc)
        if code in (_errno.EPERM, _errno.EACCES):
            message = (
                "the process-events connector needs root (CAP_NET_ADMIN) to "
                f"{step}: {reason}; run the kernel host as root"
            )
        elif code in (_errno.EPROTONOSUPPORT, _errno.EAFNOSUPPORT):
            message = (
                "the process-events connector is not available in this kernel "
                f"(CONFIG_PROC_EVENTS / NETLINK_CONNECTOR) while trying to {step}: {reason}"
            )
        else:
            message = f"the process-events connector failed to {step}: {reason}"
        return cls(message, code)


@dataclass(frozen=True, slots=True)
class ProcEvent:
    """One record from the connector.

    ``pid`` is the thread-group id (the process id) and ``tid`` the thread id
    of the task the event is about; for ``fork`` they describe the child and
    ``parent_pid``/``parent_tid`` the task that forked it.  For ``exit`` the
    parent fields are filled on kernels that report them (0 on old ones, and
    0 when the parent reaped the child before the kernel sent the record),
    ``exit_code`` is the raw wait status (see ``returncode``) and
    ``exit_signal`` the signal the parent is sent (SIGCHLD, or -1 for threads).
    ``uid``/``gid`` events carry ``real_id``/``effective_id``; ``comm`` events
    the new ``comm``; ``ptrace`` events the tracer (0 on detach).
    ``timestamp_ns`` is the kernel's CLOCK_MONOTONIC time of the event.
    An ``overrun`` event stands for an unknown number of events the kernel
    dropped because the socket's receive buffer was full.
    """

    kind: str
    pid: int = 0
    tid: int = 0
    parent_pid: int = 0
    parent_tid: int = 0
    exit_code: int = 0
    exit_signal: int = 0
    timestamp_ns: int = 0
    cpu: int = 0
    real_id: int | None = None
    effective_id: int | None = None
    comm: str | None = None
    tracer_pid: int = 0
    tracer_tid: int = 0

    @property
    def is_thread(self) -> bool:
        """The event is about a non-leader thread, not a whole process.

        A ``fork`` with this set created a thread; an ``exit`` with it ended
        one.  The leader's ``exit`` marks its own exit, which normally is the
        end of the process.
        """
        return self.tid != self.pid

    @property
    def returncode(self) -> int:
        """``exit_code`` decoded like ``subprocess``: the status, or -signal."""
        signal = self.exit_code & 0x7F
        if signal:
            return -signal
        return (self.exit_code >> 8) & 0xFF


@dataclass(frozen=True, slots=True)
class _Ack:
    ack: int
    error: int


def _decode_comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _parse_proc_event(body: memoryview, cn_ack: int) -> ProcEvent | _Ack | None:
    if len(body) < _PROC_EVENT_HEADER.size:
        return None
    what, cpu, timestamp_ns = _PROC_EVENT_HEADER.unpack_from(body)
    data = body[_PROC_EVENT_HEADER.size:]
    size = len(data)
    common = {"timestamp_ns": timestamp_ns, "cpu": cpu}

    if what == PROC_EVENT_FORK and size >= _FOUR_PIDS.size:
        parent_tid, parent_pid, child_tid, child_pid = _FOUR_PIDS.unpack_from(data)
        return ProcEvent("fork", pid=child_pid, tid=child_tid,
                         parent_pid=parent_pid, parent_tid=parent_tid, **common)
    if what == PROC_EVENT_EXEC and size >= _TWO_PIDS.size:
        tid, pid = _TWO_PIDS.unpack_from(data)
        return ProcEvent("exec", pid=pid, tid=tid, **common)
    if what == PROC_EVENT_EXIT and size >= _EXIT.size:
        tid, pid, exit_code, exit_signal = _EXIT.unpack_from(data)
        parent_tid = parent_pid = 0
        if size >= _EXIT.size + _EXIT_PARENT.size:
            parent_tid, parent_pid = _EXIT_PARENT.unpack_from(data, _EXIT.size)
        return ProcEvent("exit", pid=pid, tid=tid, parent_pid=parent_pid,
                         parent_tid=parent_tid, exit_code=exit_code,
                         exit_signal=exit_signal, **common)
    if what in (PROC_EVENT_UID, PROC_EVENT_GID) and size >= _ID.size:
        tid, pid, real, effective = _ID.unpack_from(data)
        kind = "uid" if what == PROC_EVENT_UID else "gid"
        return ProcEvent(kind, pid=pid, tid=tid, real_id=real,
                         effective_id=effective, **common)
    if what == PROC_EVENT_SID and size >= _TWO_PIDS.size:
        tid, pid = _TWO_PIDS.unpack_from(data)
        return ProcEvent("sid", pid=pid, tid=tid, **common)
    if what == PROC_EVENT_PTRACE and size >= _FOUR_PIDS.size:
        tid, pid, tracer_tid, tracer_pid = _FOUR_PIDS.unpack_from(data)
        return ProcEvent("ptrace", pid=pid, tid=tid, tracer_pid=tracer_pid,
                         tracer_tid=tracer_tid, **common)
    if what == PROC_EVENT_COMM and size >= _TWO_PIDS.size + _COMM_LEN:
        tid, pid = _TWO_PIDS.unpack_from(data)
        comm = _decode_comm(bytes(data[_TWO_PIDS.size:_TWO_PIDS.size + _COMM_LEN]))
        return ProcEvent("comm", pid=pid, tid=tid, comm=comm, **common)
    if what == PROC_EVENT_COREDUMP and size >= _FOUR_PIDS.size:
        tid, pid, parent_tid, parent_pid = _FOUR_PIDS.unpack_from(data)
        return ProcEvent("coredump", pid=pid, tid=tid, parent_pid=parent_pid,
                         parent_tid=parent_tid, **common)
    if what == PROC_EVENT_NONE and size >= _ACK.size:
        return _Ack(ack=cn_ack, error=_ACK.unpack_from(data)[0])
    return None


def _parse(data: bytes | bytearray | memoryview) -> list[ProcEvent | _Ack]:
    view = memoryview(data).cast("B")
    out: list[ProcEvent | _Ack] = []
    offset = 0
    total = len(view)
    while offset + _NLMSGHDR.size <= total:
        length, msg_type, _flags, _seq, _port = _NLMSGHDR.unpack_from(view, offset)
        if length < _NLMSGHDR.size or offset + length > total:
            break
        payload = view[offset + _NLMSGHDR.size:offset + length]
        offset += (length + 3) & ~3
        if msg_type == NLMSG_OVERRUN:
            out.append(ProcEvent("overrun", cpu=-1))
            continue
        if msg_type in (NLMSG_NOOP, NLMSG_ERROR) or len(payload) < _CN_MSG.size:
            continue
        idx, val, _cn_seq, cn_ack, cn_len, _cn_flags = _CN_MSG.unpack_from(payload)
        if idx != CN_IDX_PROC or val != CN_VAL_PROC:
            continue
        if _CN_MSG.size + cn_len > len(payload):
            continue
        item = _parse_proc_event(payload[_CN_MSG.size:_CN_MSG.size + cn_len], cn_ack)
        if item is not None:
            out.append(item)
    return out


def parse_messages(data: bytes | bytearray | memoryview) -> list[ProcEvent]:
    """Parse every process event in one netlink datagram.

    Subscription acknowledgements are not events and are left out.  Truncated
    or malformed parts produce no event; nothing here raises on bad input.
    """
    return [item for item in _parse(data) if isinstance(item, ProcEvent)]


def _control_message(op: int, port_id: int, ack: int) -> bytes:
    body = struct.pack("=I", op)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, ack, len(body), 0) + body
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, port_id) + cn


class ProcessEventSource:
    """A subscribed process-events connector socket.

    Opening binds a NETLINK_CONNECTOR socket to the CN_IDX_PROC group,
    subscribes, and waits (at most ``ack_timeout`` seconds) for the kernel's
    acknowledgement, so that a subscription the kernel refuses or ignores is
    reported as ``ConnectorUnavailable`` here rather than as silence later.
    """

    def __init__(self, *, ack_timeout: float = 2.0,
                 receive_buffer: int = _SOCKET_BUFFER_BYTES) -> None:
        self._sock: socket.socket | None = None
        self._subscribed = False
        self._pending: list[ProcEvent] = []
        self._buffer = bytearray(_RECV_BUFFER_BYTES)
        self._poller = select.poll()
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as exc:
            raise ConnectorUnavailable.from_os_error("open a NETLINK_CONNECTOR socket", exc) from exc
        self._sock = sock
        try:
            self._size_receive_buffer(receive_buffer)
            try:
                sock.bind((0, CN_IDX_PROC))
            except OSError as exc:
                raise ConnectorUnavailable.from_os_error(
                    "join the CN_IDX_PROC multicast group", exc) from exc
            self._poller.register(sock.fileno(), select.POLLIN)
            self._subscribe(ack_timeout)
        except BaseException:
            self._subscribed = False
            sock.close()
            self._sock = None
            raise

    def _size_receive_buffer(self, size: int) -> None:
        assert self._sock is not None
        if _SO_RCVBUFFORCE is not None:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
                return
            except OSError:
                pass
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        except OSError:
            pass

    def _send_control(self, op: int, ack: int) -> None:
        assert self._sock is not None
        port_id = self._sock.getsockname()[0]
        self._sock.sendto(_control_message(op, port_id, ack), (0, 0))

    def _subscribe(self, ack_timeout: float) -> None:
        nonce = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        try:
            self._send_control(PROC_CN_MCAST_LISTEN, nonce)
        except OSError as exc:
            raise ConnectorUnavailable.from_os_error("subscribe to process events", exc) from exc
        self._subscribed = True
        expected = (nonce + 1) & 0xFFFFFFFF
        deadline = time.monotonic() + ack_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._wait_readable(remaining):
                self._subscribed = False
                raise ConnectorUnavailable(
                    "the kernel did not acknowledge the process-events subscription; "
                    "the connector only serves processes in the initial user and pid "
                    "namespaces (not inside a container) on kernels built with "
                    "CONFIG_PROC_EVENTS", None)
            for item in self._receive():
                if isinstance(item, _Ack):
                    if item.ack != expected:
                        continue
                    if item.error:
                        self._subscribed = False
                        raise ConnectorUnavailable.from_os_error(
                            "subscribe to process events",
                            OSError(item.error, os.strerror(item.error)))
                    return
                self._pending.append(item)

    def _wait_readable(self, timeout: float | None) -> bool:
        millis = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        return bool(self._poller.poll(millis))

    def _receive(self) -> list[ProcEvent | _Ack]:
        assert self._sock is not None
        try:
            size, (port_id, _groups) = self._sock.recvfrom_into(
                self._buffer, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return []
        except OSError as exc:
            if exc.errno == _errno.ENOBUFS:
                return [ProcEvent("overrun", timestamp_ns=time.monotonic_ns(), cpu=-1)]
            raise
        if port_id != 0:
            return []
        return _parse(memoryview(self._buffer)[:size])

    def fileno(self) -> int:
        if self._sock is None:
            raise ValueError("the process event source is closed")
        return self._sock.fileno()

    def read(self, timeout: float | None = None) -> list[ProcEvent]:
        """Return the events of the next datagram; ``[]`` once ``timeout`` passes.

        ``timeout=None`` blocks until there is an event.  Acknowledgements of
        other listeners' subscriptions are consumed silently.
        """
        if self._sock is None:
            raise ValueError("the process event source is closed")
        if self._pending:
            events, self._pending = self._pending, []
            return events
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._wait_readable(remaining):
                return []
            events = [item for item in self._receive() if isinstance(item, ProcEvent)]
            if events:
                return events
            if deadline is not None and time.monotonic() >= deadline:
                return []

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            if self._subscribed:
                self._subscribed = False
                port_id = sock.getsockname()[0]
                sock.sendto(_control_message(PROC_CN_MCAST_IGNORE, port_id, 0), (0, 0))
        except OSError:
            pass
        finally:
            sock.close()

    @property
    def closed(self) -> bool:
        return self._sock is None

    def __enter__(self) -> ProcessEventSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_sock", None) is not None:
            self.close()
