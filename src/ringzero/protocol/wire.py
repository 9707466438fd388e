"""The wire protocol between programs and the kernel host, without any I/O.

A `Connection` turns bytes (and file descriptors) into `Frame`s and frames into
bytes, exactly as h11 does for HTTP: the kernel's socket loop and the client's are
thin shells around it, and tests drive it with no processes at all.

Every frame is a fixed 20-byte header followed by `length` bytes of payload:

    u32 length   payload bytes after the header (at most `max_payload`)
    u16 kind     a `Kind`
    u8  flags    `FLAG_*`
    u8  nfds     file descriptors that travel with this frame (SCM_RIGHTS)
    u32 tid      the program thread that made the request (0 for kernel frames)
    u64 rid      request id; replies, pending notices and completions carry the
                 request's id, so many requests of one program can be in flight

The first frame each way is the handshake: HELLO from the program, WELCOME from
the kernel, each starting with MAGIC and the protocol version.  Anything else
first, a wrong magic, an unknown version or kind, or a frame over the size limit
is a protocol error that ends that one connection.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

MAGIC = 0x305A5252  # b"RRZ0" little-endian
VERSION = 1

HEADER = struct.Struct("<IHBBIQ")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
MAX_FDS = 8

FLAG_OVERLAPPED = 0x01  # request: the program issued it with an OVERLAPPED
FLAG_USER_BUFFER = 0x02  # READ_FILE / WRITE_FILE: the data stays in the program's buffer at the
                         # frame's address; the I/O manager copies it from (write) or back into
                         # (read) the program's memory itself.  Only after OFFER_MEMORY succeeded.
FLAG_SAME_ACCESS = 0x04  # DUPLICATE_HANDLE: DUPLICATE_SAME_ACCESS (the access field is then ignored)


class Kind(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    # program -> kernel requests
    CREATE_FILE = 10
    CLOSE_HANDLE = 11
    DEVICE_IO_CONTROL = 12
    READ_FILE = 13
    WRITE_FILE = 14
    CANCEL_IO = 15
    CREATE_EVENT = 20
    OPEN_EVENT = 21
    EVENT_OP = 22
    WAIT = 23
    DUPLICATE_HANDLE = 24
    CREATE_MUTANT = 25
    OPEN_MUTANT = 26
    RELEASE_MUTANT = 27
    CALL = 30            # slow path: named admin/service calls with JSON arguments
    ATTACH_RING = 31     # the program offers shared-memory rings (region + two eventfds)
    OFFER_MEMORY = 32    # the program proves the kernel can reach its memory (FLAG_USER_BUFFER)
    # kernel -> program
    REPLY = 50           # final answer to a request
    PENDING = 51         # an overlapped request went pending; a REPLY follows
    PUSH = 52            # unsolicited data on a subscription (debug log)
    SOCKET_HINT = 53     # (in the response ring) a frame is waiting on the socket
    # kernel -> program upcalls, answered by UPCALL_REPLY with the same rid
    MAP_VIEW = 60
    UNMAP_VIEW = 61
    UPCALL_REPLY = 62


class K:
    """Kind's values as plain ints, for the hot paths: looking a member up on
    an Enum class costs a quarter of a microsecond each time."""


for _kind in Kind:
    setattr(K, _kind.name, int(_kind))

_KINDS = frozenset(int(k) for k in Kind)
# The hot paths compare plain ints: looking a member up on an Enum class costs
# a quarter of a microsecond each time.
_KERNEL_SENDS = frozenset(int(k) for k in Kind if k >= Kind.REPLY and k != Kind.UPCALL_REPLY)
_NOT_IN_RINGS = frozenset(int(k) for k in (Kind.HELLO, Kind.WELCOME, Kind.ATTACH_RING, Kind.MAP_VIEW))
_HANDSHAKES = frozenset((int(Kind.HELLO), int(Kind.WELCOME)))
_REPLY = int(Kind.REPLY)


class ProtocolError(Exception):
    """A frame that breaks the protocol; the connection that carried it ends."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


@dataclass(slots=True)
class Frame:
    kind: int
    rid: int = 0
    payload: bytes | memoryview = b""
    flags: int = 0
    tid: int = 0
    fds: list[int] = field(default_factory=list)


# Fixed parts of the payloads. Variable tails (names, data) follow them.
HELLO = struct.Struct("<IHH")                 # magic, version, reserved
WELCOME = struct.Struct("<IHHIIQ")            # magic, version, reserved, kernel pid, program pid, max payload
CREATE_FILE = struct.Struct("<IIIII")         # access, share, disposition, flags/attributes, name length
HANDLE = struct.Struct("<Q")                  # CLOSE_HANDLE, EVENT_OP(handle + op below)
IOCTL = struct.Struct("<QIIIQQQ")             # handle, code, in length, out length, in address, out address, event
READ = struct.Struct("<QIqQQ")                # handle, length, offset (-1: current), buffer address, event
WRITE = struct.Struct("<QqQQ")                # handle, offset, data address, event; data follows
WRITE_LENGTH = struct.Struct("<Q")            # with FLAG_USER_BUFFER, after WRITE instead of the data
OFFER_MEMORY = struct.Struct("<QQ")           # address of 8 bytes in the program, the value they hold
CANCEL = struct.Struct("<QQ")                 # handle, rid of one request (0: all of this thread's)
CREATE_EVENT = struct.Struct("<BBHI")         # manual reset, initial state, reserved, desired access; name follows
OPEN_EVENT = struct.Struct("<II")             # desired access, inherit; name follows
EVENT_OP = struct.Struct("<QI")               # handle, op
CREATE_MUTANT = struct.Struct("<B3xI")       # initial owner, desired access; name follows
OPEN_MUTANT = OPEN_EVENT                      # desired access, inherit; name follows (RELEASE_MUTANT: HANDLE)
WAIT = struct.Struct("<BBHq")                 # wait all, alertable, count, timeout ms (-1 infinite); handles follow
DUPLICATE = struct.Struct("<QI")              # handle, desired access
REPLY = struct.Struct("<IQ")                  # NTSTATUS, information; output data follows
MAP_VIEW = struct.Struct("<QQI")              # length, offset, protection (fd travels with the frame)
UNMAP_VIEW = struct.Struct("<QQ")             # address, length
UPCALL_REPLY = struct.Struct("<IQ")           # NTSTATUS, value

EVENT_SET, EVENT_RESET, EVENT_PULSE, EVENT_QUERY = range(4)


class Role(enum.Enum):
    KERNEL = "kernel"
    PROGRAM = "program"


_ROLE_KERNEL = Role.KERNEL


class State(enum.Enum):
    HANDSHAKE = "handshake"
    READY = "ready"
    CLOSED = "closed"


class Connection:
    """Framing and handshake state for one end of one connection.

    Invariant: `_buf[_pos:]` holds the bytes received and not yet framed, and
    `_fds` the descriptors received and not yet claimed by a frame, in order;
    a frame claims its descriptors only once all of its bytes are here, and the
    socket layer delivers a sendmsg's descriptors no later than its first byte.
    """

    __slots__ = ("role", "state", "max_payload", "peer_pid", "_buf", "_pos", "_fds", "fds_lost", "short",
                 "_sent_handshake", "_got_handshake")

    def __init__(self, role: Role, max_payload: int = DEFAULT_MAX_PAYLOAD):
        self.role = role
        self.state = State.HANDSHAKE
        self.max_payload = max_payload
        self.peer_pid = 0
        self._buf = bytearray()
        self._pos = 0
        self._fds: list[int] = []
        self.fds_lost = False      # the receiver was short of descriptors (MSG_CTRUNC): some never arrived
        self.short = False         # the last frame came with fewer descriptors than it announced, for that reason
        self._sent_handshake = False
        self._got_handshake = False

    # -- receiving ---------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, fds: list[int] | tuple = ()) -> None:
        if self.state is State.CLOSED:
            raise LocalProtocolError("connection is closed")
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data
        if fds:
            self._fds.extend(fds)
            if len(self._fds) > MAX_FDS * 4:
                raise RemoteProtocolError("too many file descriptors without a frame")

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        length, kind, flags, nfds, tid, rid = HEADER.unpack_from(buf, pos)
        if length > self.max_payload:
            raise RemoteProtocolError(f"frame of {length} bytes is over the limit of {self.max_payload}")
        if kind not in _KINDS:
            raise RemoteProtocolError(f"unknown frame kind {kind}")
        if nfds > MAX_FDS:
            raise RemoteProtocolError(f"frame carries {nfds} descriptors, limit {MAX_FDS}")
        end = pos + HEADER_SIZE + length
        if len(buf) < end:
            return None
        if nfds > len(self._fds):
            if not self.fds_lost:
                raise RemoteProtocolError(f"frame announces {nfds} descriptors, {len(self._fds)} arrived")
            # the receiving side had no room for them, not the sender's fault: the
            # frame comes with those that arrived, for its handler to refuse
            self.fds_lost = False
            nfds = len(self._fds)
            short = True
        else:
            short = False
        payload = bytes(buf[pos + HEADER_SIZE:end])
        self._pos = end
        fds = self._fds[:nfds]
        del self._fds[:nfds]
        frame = Frame(kind, rid, payload, flags, tid, fds)
        self._check_incoming(frame)
        self.short = short
        return frame

    def partial_frame_size(self) -> int:
        """The size of the frame now arriving (0 if none has started)."""
        if len(self._buf) - self._pos < HEADER_SIZE:
            return 0
        return HEADER_SIZE + HEADER.unpack_from(self._buf, self._pos)[0]

    def unclaimed_fds(self) -> list[int]:
        """Descriptors received that no frame claimed; the caller must close them."""
        fds, self._fds = self._fds, []
        return fds

    def _check_incoming(self, frame: Frame) -> None:
        if not self._got_handshake:
            expect = Kind.HELLO if self.role is Role.KERNEL else Kind.WELCOME
            if frame.kind != expect:
                raise RemoteProtocolError(f"expected {expect.name} first, got {Kind(frame.kind).name}")
            st = HELLO if expect is Kind.HELLO else WELCOME
            if len(frame.payload) < st.size:
                raise RemoteProtocolError("truncated handshake")
            magic, version = struct.unpack_from("<IH", frame.payload)
            if magic != MAGIC:
                raise RemoteProtocolError("not a ringzero peer (bad magic)")
            if version != VERSION:
                raise RemoteProtocolError(f"protocol version {version} is not supported (this side speaks {VERSION})")
            self._got_handshake = True
            self._maybe_ready()
            return
        if frame.kind in _HANDSHAKES:
            raise RemoteProtocolError("handshake repeated")
        if (self.role is _ROLE_KERNEL) == (frame.kind in _KERNEL_SENDS):
            raise RemoteProtocolError(f"{Kind(frame.kind).name} may not be sent by the {'program' if self.role is Role.KERNEL else 'kernel'}")

    def _maybe_ready(self) -> None:
        if self._sent_handshake and self._got_handshake:
            self.state = State.READY

    # -- sending -----------------------------------------------------------

    def send(self, frame: Frame) -> bytes:
        """The bytes for `frame`; its fds go beside them in the same sendmsg."""
        if self.state is State.CLOSED:
            raise LocalProtocolError("connection is closed")
        if not self._sent_handshake:
            expect = Kind.HELLO if self.role is Role.PROGRAM else Kind.WELCOME
            if frame.kind != expect:
                raise LocalProtocolError(f"{expect.name} must be sent first")
            self._sent_handshake = True
            self._maybe_ready()
        return encode(frame, self.max_payload)

    def close(self) -> None:
        self.state = State.CLOSED


def decode_ring_frame(data: bytes, role: Role, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Frame:
    """One whole frame taken from a shared-memory ring, with the checks the
    socket path makes (rings never carry descriptors or handshakes)."""
    if len(data) < HEADER_SIZE:
        raise RemoteProtocolError("truncated ring frame")
    length, kind, flags, nfds, tid, rid = HEADER.unpack_from(data)
    if length != len(data) - HEADER_SIZE or length > max_payload:
        raise RemoteProtocolError("ring frame length does not match")
    if kind not in _KINDS or kind in _NOT_IN_RINGS or nfds:
        raise RemoteProtocolError(f"frame kind {kind} may not travel in a ring")
    if (role is _ROLE_KERNEL) == (kind in _KERNEL_SENDS):
        raise RemoteProtocolError(f"{Kind(kind).name} may not be sent this way")
    return Frame(kind, rid, memoryview(data)[HEADER_SIZE:], flags, tid)


def encode(frame: Frame, max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes:
    n = len(frame.payload)
    if n > max_payload:
        raise LocalProtocolError(f"payload of {n} bytes is over the limit of {max_payload}")
    if len(frame.fds) > MAX_FDS:
        raise LocalProtocolError("too many descriptors for one frame")
    return HEADER.pack(n, frame.kind, frame.flags, len(frame.fds), frame.tid, frame.rid) + frame.payload


def hello() -> Frame:
    return Frame(Kind.HELLO, payload=HELLO.pack(MAGIC, VERSION, 0))


def welcome(kernel_pid: int, program_pid: int, max_payload: int) -> Frame:
    return Frame(Kind.WELCOME, payload=WELCOME.pack(MAGIC, VERSION, 0, kernel_pid, program_pid, max_payload))


REPLY_HEAD = struct.Struct("<IHBBIQIQ")       # HEADER then REPLY, packed or unpacked at once
READ_FRAME = struct.Struct("<IHBBIQQIqQQ")     # HEADER then READ: a whole READ_FILE request
WRITE_HEAD = struct.Struct("<IHBBIQQqQQ")      # HEADER then WRITE: a WRITE_FILE request up to its data


def reply_head(rid: int, status: int, information: int, data_length: int) -> bytes:
    """The bytes of a REPLY frame up to its data (`data_length` bytes follow)."""
    return REPLY_HEAD.pack(REPLY.size + data_length, _REPLY, 0, 0, 0, rid, status & 0xFFFFFFFF, information)


def reply(rid: int, status: int, information: int = 0, data: bytes | bytearray | memoryview = b"") -> bytes:
    """A REPLY frame's bytes, built in one step for the hot path."""
    head = reply_head(rid, status, information, len(data))
    return head + bytes(data) if data else head
