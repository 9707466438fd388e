"""A mutating fuzzer against a live kernel: frames of a valid session (open,
IOCTLs, read, write, events, waits, close) with bytes flipped, fields set to
edge values, payloads cut or padded and kinds swapped, sent on raw
connections.  Afterwards the kernel is alive, answers a normal program, and
every fuzzing program's process, handle and pending IRP is gone.

`make test` runs RINGZERO_FUZZ_CASES (default 200) cases; `make fuzz` many more.
"""

import os
import random
import socket
import struct
import sys

from conftest import TEST_DRIVERS, wait_until
from ringzero import client
from ringzero.protocol import wire
from ringzero.protocol.wire import Kind
from ringzero.win32 import win32con, win32file

sys.path.insert(0, TEST_DRIVERS)
import recorder as R  # noqa: E402

RECORDER = os.path.join(TEST_DRIVERS, "recorder.py")
CASES = int(os.environ.get("RINGZERO_FUZZ_CASES", "200"))
SEED = int(os.environ.get("RINGZERO_FUZZ_SEED", "0")) or random.randrange(1 << 30)


def _frame(kind, payload=b"", rid=1, flags=0, nfds=0):
    return wire.HEADER.pack(len(payload), kind, flags, nfds, 0, rid) + payload


def valid_session():
    """The frames of an ordinary program's session; handle 4 is its first handle."""
    name = rb"\\.\Recorder"
    ev = b"FuzzEvent"
    return [
        _frame(Kind.CREATE_FILE, wire.CREATE_FILE.pack(0xC0000000, 3, 3, 0, len(name)) + name),
        _frame(Kind.DEVICE_IO_CONTROL, wire.IOCTL.pack(4, R.IOCTL_WHOAMI, 0, 16, 0, 0, 0)),
        _frame(Kind.DEVICE_IO_CONTROL, wire.IOCTL.pack(4, R.IOCTL_FILL, 9, 32, 0, 0, 0) + struct.pack("<IIB", 8, 0, 7)),
        _frame(Kind.DEVICE_IO_CONTROL, wire.IOCTL.pack(4, R.IOCTL_COUNTS, 0, 16, 0, 0, 0)),
        _frame(Kind.READ_FILE, wire.READ.pack(4, 64, 0, 0, 0)),
        _frame(Kind.WRITE_FILE, wire.WRITE.pack(4, 0, 0, 0) + b"hello"),
        _frame(Kind.CREATE_EVENT, wire.CREATE_EVENT.pack(1, 0, 0, 0x1F0003) + ev),
        _frame(Kind.OPEN_EVENT, wire.OPEN_EVENT.pack(0x1F0003, 0) + ev),
        _frame(Kind.EVENT_OP, wire.EVENT_OP.pack(8, wire.EVENT_SET)),
        _frame(Kind.WAIT, wire.WAIT.pack(0, 0, 2, 0) + struct.pack("<QQ", 8, 12)),
        _frame(Kind.DUPLICATE_HANDLE, wire.DUPLICATE.pack(4, 0)),
        _frame(Kind.CREATE_MUTANT, wire.CREATE_MUTANT.pack(1, 0x1F0001) + b"FuzzMutex"),
        _frame(Kind.OPEN_MUTANT, wire.OPEN_MUTANT.pack(0x100000, 0) + b"FuzzMutex"),
        _frame(Kind.RELEASE_MUTANT, wire.HANDLE.pack(20)),
        _frame(Kind.CANCEL_IO, wire.CANCEL.pack(4, 0)),
        _frame(Kind.CALL, b'{"method": "kernel.info", "args": {}}'),
        _frame(Kind.CLOSE_HANDLE, wire.HANDLE.pack(4)),
    ]


EDGE = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]


def mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    how = rng.randrange(7)
    if how == 0:                                   # flip bytes anywhere
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif how == 1 and len(b) > wire.HEADER_SIZE:   # a payload field set to an edge value
        off = rng.randrange(wire.HEADER_SIZE, len(b))
        v = rng.choice(EDGE)
        n = min(4, len(b) - off)
        b[off:off + n] = v.to_bytes(4, "little")[:n]
    elif how == 2:                                 # payload cut short, header kept consistent
        cut = rng.randrange(wire.HEADER_SIZE, len(b) + 1)
        b = b[:cut]
        struct.pack_into("<I", b, 0, cut - wire.HEADER_SIZE)
    elif how == 3:                                 # payload padded with junk
        extra = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        b += extra
        struct.pack_into("<I", b, 0, len(b) - wire.HEADER_SIZE)
    elif how == 4:                                 # another kind, same payload
        struct.pack_into("<H", b, 4, rng.choice([int(k) for k in Kind] + [0, 9, 99, 0xFFFF]))
    elif how == 5:                                 # header lies about the length
        struct.pack_into("<I", b, 0, rng.choice(EDGE + [len(b), len(b) * 2]))
    else:                                          # flags, descriptor count, rid
        struct.pack_into("<BB", b, 6, rng.randrange(256), rng.randrange(4))
    return bytes(b)


class _Session:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.s.sendall(wire.encode(wire.hello()))
        self.s.settimeout(0.05)
        self.alive = True

    def send(self, data) -> None:
        try:
            self.s.sendall(data)
        except OSError:
            self.alive = False

    def drain(self) -> int:
        """Read what the kernel says for a moment; the bytes read (-1: it hung up)."""
        n = 0
        try:
            while True:
                chunk = self.s.recv(1 << 16)
                if not chunk:
                    self.alive = False
                    return -1
                n += len(chunk)
        except socket.timeout:
            return n
        except OSError:
            self.alive = False
            return -1

    def close(self):
        self.s.close()


def test_mutated_frames_from_a_valid_session(kernel, capsys):
    with capsys.disabled():
        print(f"\nfuzz: seed {SEED} (RINGZERO_FUZZ_SEED={SEED} replays it)")
    kernel.load(RECORDER, "Recorder")
    info = client.connection().call("kernel.info")
    base_processes = info["processes"]
    rng = random.Random(SEED)
    session = valid_session()
    sess = None
    cases = hangups = sessions = 0
    pids = set()
    while cases < CASES:
        if sess is None or not sess.alive:
            if sess is not None:
                sess.close()
            sess = _Session(kernel.socket)
            sessions += 1
            for f in session[:1]:   # open the recorder, so later frames have a handle to aim at
                sess.send(f)
        frames = [rng.choice(session) for _ in range(rng.randint(1, 4))]
        i = rng.randrange(len(frames))
        frames[i] = mutate(rng, frames[i])
        sess.send(b"".join(frames))
        cases += 1
        if sess.drain() < 0:
            hangups += 1
    if sess is not None:
        sess.close()
    # the kernel is alive and serves a normal program
    assert kernel.proc.poll() is None
    h = win32file.CreateFile(r"\\.\Recorder", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
    assert len(win32file.DeviceIoControl(h, R.IOCTL_WHOAMI, None, 16)) == 16
    h.Close()
    kernel.run("""
        from ringzero.win32 import win32file, win32con
        h = win32file.CreateFile(r"\\\\.\\Recorder", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
        h.Close()
    """)
    # every fuzzing connection is run down: no process, handle or pending IRP of theirs is left
    assert wait_until(lambda: client.connection().call("kernel.info")["processes"] == base_processes, timeout=30)
    left = [p for p in client.connection().call("handles.list") if p["pid"] != os.getpid()]
    assert left == []
    # nothing the fuzzer sent reached a bug of the kernel's own
    kernel_bugs = [r["text"] for r in client.connection().call("dbg.recent", count=4096)
                   if r["level"] == "fault" and r["source"] == "kernel" and "exception in" in r["text"]]
    assert kernel_bugs == [], "\n".join(kernel_bugs)
    with capsys.disabled():
        print(f"fuzz (seed {SEED}): {cases} mutated cases over {sessions} connections, "
              f"{hangups} disconnected by the kernel, kernel crashes 0, processes left 0")
