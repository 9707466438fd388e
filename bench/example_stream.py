"""Streaming through the Example driver against a raw Unix-socket stream.

A writer process writes CHUNK-byte chunks to \\\\.\\Example\\Bench, its handle
doing blocking writes, and a reader process, whose handle does blocking
reads, reads them back, through a kernel started for the benchmark; then the
same bytes go between two Python processes over a Unix stream socket, and
through a bare relay: a third Python process that moves the frames between
two pairs of the same shared-memory rings, making the kernel's two copies of
each chunk and nothing else (no handles, no I/O manager, no driver, no
pywin32 layer; every side spins, and the relay has a CPU of its own), the
ceiling for any kernel written in Python between two programs.  Each is run
several times; the medians, their spread and the ratios are printed.

    PYTHONPATH=src python -m bench.example_stream [--runs 5] [--mib 256]

Throughput is the bytes moved over the time from the writer's start to the
reader's last byte.
"""

from __future__ import annotations

import argparse
import collections
import json
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import threading

from bench._common import gbps, now, ready_then_wait, release, report, role_command, run_pair, spread, start_role
from ringzero.kernel.ringpoll import LOOKS_PER_YIELD
from ringzero.protocol import ring as rings     # (importing bench first put this tree's ringzero on the path)
from ringzero.protocol import wire

MODULE = "bench.example_stream"
PIPE = "\\\\.\\Example\\Bench"


# -- the processes ---------------------------------------------------------------

def _open_pipe(flags: int = 0):
    from ringzero.win32 import win32file
    return win32file.CreateFile(PIPE, win32file.GENERIC_READ | win32file.GENERIC_WRITE, 0, None,
                                win32file.OPEN_EXISTING, flags, None)


def rz_reader(total: int, chunk: int, ring: int, depth: int) -> None:
    from ringzero.drivers.example_ioctl import EXAMPLE_BLOCKING_READS, IOCTL_EXAMPLE_SET_BLOCKING, IOCTL_EXAMPLE_SET_SIZE
    from ringzero.win32 import pywintypes, win32file
    h = _open_pipe(win32file.FILE_FLAG_OVERLAPPED if depth > 1 else 0)
    win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_SIZE, struct.pack("<I", ring), 0)
    win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_BLOCKING, struct.pack("<I", EXAMPLE_BLOCKING_READS), 0)
    bufs = [win32file.AllocateReadBuffer(chunk) for _ in range(depth)]
    ready_then_wait()
    got = reads = 0
    if depth == 1:
        while got < total:
            _, data = win32file.ReadFile(h, bufs[0])
            got += len(data)
            reads += 1
    else:
        # `depth` overlapped reads pending at once, completed (and reissued) oldest first
        pending = []
        for buf in bufs:
            ov = pywintypes.OVERLAPPED()
            win32file.ReadFile(h, buf, ov)
            pending.append((ov, buf))
        while got < total:
            ov, buf = pending.pop(0)
            got += win32file.GetOverlappedResult(h, ov, True)
            reads += 1
            if got < total:
                ov = pywintypes.OVERLAPPED()
                win32file.ReadFile(h, buf, ov)
                pending.append((ov, buf))
        win32file.CancelIo(h)
    t1 = now()
    h.Close()
    report({"t1": t1, "bytes": got, "reads": reads})


def rz_writer(total: int, chunk: int, depth: int = 1) -> None:
    from ringzero.drivers.example_ioctl import EXAMPLE_BLOCKING_WRITES, IOCTL_EXAMPLE_SET_BLOCKING
    from ringzero.win32 import pywintypes, win32file
    from ringzero.win32.winerror import ERROR_IO_PENDING
    h = _open_pipe(win32file.FILE_FLAG_OVERLAPPED if depth > 1 else 0)
    # a write that finds the ring full waits for the reader to make room, as a pipe's does
    win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_BLOCKING, struct.pack("<I", EXAMPLE_BLOCKING_WRITES), 0)
    data = os.urandom(chunk)
    ready_then_wait()
    t0 = now()
    sent = stored = 0
    pending = collections.deque()     # overlapped writes waiting for room, oldest first
    while sent < total:
        n = min(chunk, total - sent)
        block = data[:n] if n < chunk else data
        if depth == 1:
            stored += win32file.WriteFile(h, block)[1]
        else:
            ov = pywintypes.OVERLAPPED()
            hr, w = win32file.WriteFile(h, block, ov)
            if hr == ERROR_IO_PENDING:
                pending.append(ov)
            else:
                stored += w
            while len(pending) >= depth or (pending and sent + n >= total):
                stored += win32file.GetOverlappedResult(h, pending.popleft(), True)
        sent += n
    if stored != total:
        raise RuntimeError(f"blocking writes stored {stored} of {total} bytes")
    report({"t0": t0, "bytes": sent})
    h.Close()


def sock_reader(fd: int, total: int, chunk: int) -> None:
    s = socket.socket(fileno=fd)
    buf = bytearray(chunk)
    ready_then_wait()
    got = reads = 0
    while got < total:
        n = s.recv_into(buf)
        if not n:
            break
        got += n
        reads += 1
    report({"t1": now(), "bytes": got, "reads": reads})


def _write_chunks(total: int, chunk: int, send) -> None:
    """A peer's writer: `total` bytes as `send(block)` calls of `chunk` bytes
    (the last may be shorter), timed from the release."""
    data = os.urandom(chunk)
    ready_then_wait()
    t0 = now()
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        send(data[:n] if n < chunk else data)
        sent += n
    report({"t0": t0, "bytes": sent})


def sock_writer(fd: int, total: int, chunk: int) -> None:
    _write_chunks(total, chunk, socket.socket(fileno=fd).sendall)


# -- the bare relay (the ceiling for a kernel in Python between two programs) ------

_RELAY_RING = 1 << 20          # each side's pair of rings, as big as a program's may be
_ACK_KIND, _DATA_KIND, _ASK_KIND = 1, 2, 3


def _relay_cpus() -> tuple[set[int], set[int]]:
    """(the relay's CPU, the programs' CPUs): the placement ringzero's kernel
    aims for, pinned here; nothing is pinned with a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    return {cpus[0]}, set(cpus[1:])


def _relay_rings(fd: int, side: str):
    mv = memoryview(mmap.mmap(fd, rings.region_size(_RELAY_RING)))
    return (rings.program_side if side == "program" else rings.kernel_side)(mv, _RELAY_RING)


def _frame_head(kind: int, length: int) -> bytes:
    return wire.HEADER.pack(length, kind, 0, 0, 0, 0)


def _next_frame(ring):
    """The next frame's view, spinning (and yielding the CPU) until there is one."""
    peek, yield_cpu = ring.peek, os.sched_yield
    while True:
        view = peek()
        if view is not None:
            return view
        yield_cpu()


def relay_send(req, resp, block) -> None:
    """A relay program's write: the chunk into the request ring, then the relay's ack."""
    while not req.put(_frame_head(_DATA_KIND, len(block)), block):
        os.sched_yield()
    _next_frame(resp)          # the ack: the relay has stored the chunk
    resp.advance()


def relay_receive(req, resp, ask: bytes, buf: bytearray) -> int:
    """A relay program's read: ask for a chunk, copy the answer into `buf`; its size."""
    while not req.put(ask):
        os.sched_yield()
    view = _next_frame(resp)
    n = len(view) - wire.HEADER_SIZE
    buf[:n] = view[wire.HEADER_SIZE:]
    resp.advance()
    return n


def relay_ask(chunk: int) -> bytes:
    return _frame_head(_ASK_KIND, 4) + struct.pack("<I", chunk)


def relay_writer(fd: int, total: int, chunk: int) -> None:
    os.sched_setaffinity(0, _relay_cpus()[1])
    req, resp = _relay_rings(fd, "program")
    _write_chunks(total, chunk, lambda block: relay_send(req, resp, block))


def relay_reader(fd: int, total: int, chunk: int) -> None:
    os.sched_setaffinity(0, _relay_cpus()[1])
    req, resp = _relay_rings(fd, "program")
    ask = relay_ask(chunk)
    buf = bytearray(chunk)
    ready_then_wait()
    got = reads = 0
    while got < total:
        got += relay_receive(req, resp, ask, buf)
        reads += 1
    report({"t1": now(), "bytes": got, "reads": reads})


class Relay:
    """The bare relay's work: store each write's data in a ring buffer and
    answer each read from it, copying as ringzero's kernel does: out of the
    request ring into the buffer, and out of it into the reply's room in the
    response ring (fast I/O gets the program's own buffers, where they lie).
    `step()` serves what the two request rings hold."""

    def __init__(self, wreq, wresp, rreq, rresp):
        self.wreq, self.wresp, self.rreq, self.rresp = wreq, wresp, rreq, rresp
        self.ack = _frame_head(_ACK_KIND, 0)
        self.store = memoryview(bytearray(1 << 20))
        self.head = self.queued = self.moved = 0     # where the oldest queued byte is, how many are queued, moved

    def step(self) -> bool:
        """One look at each request ring; whether there was anything to do."""
        did = False
        wreq, rreq, store, hs = self.wreq, self.rreq, self.store, wire.HEADER_SIZE
        size = len(store)
        view = wreq.peek()
        if view is not None and size - self.queued >= len(view) - hs:
            data = view[hs:]
            n = len(data)
            at = (self.head + self.queued) % size
            first = min(n, size - at)
            store[at:at + first] = data[:first]
            store[:n - first] = data[first:]
            wreq.advance()
            self.queued += n
            self.wresp.put(self.ack)
            did = True
        view = rreq.peek()
        if view is not None and self.queued:
            want = struct.unpack_from("<I", view, hs)[0]
            rreq.advance()
            head = self.head
            n = min(want, self.queued)
            while (out := self.rresp.reserve(wire.HEADER_SIZE, n)) is None:      # the reply's room
                os.sched_yield()
            first = min(n, size - head)
            out[:first] = store[head:head + first]
            out[first:] = store[:n - first]
            self.head = (head + n) % size
            self.queued -= n
            self.moved += n
            self.rresp.commit(_frame_head(_DATA_KIND, n), n)
            did = True
        return did


def relay(writer_fd: int, reader_fd: int, total: int, chunk: int) -> None:
    os.sched_setaffinity(0, _relay_cpus()[0])
    r = Relay(*_relay_rings(writer_fd, "kernel"), *_relay_rings(reader_fd, "kernel"))
    step, yield_cpu = r.step, os.sched_yield
    ready_then_wait()
    idle = 0
    while r.moved < total:
        if not step():
            idle += 1
            if not idle % LOOKS_PER_YIELD:       # (as the kernel's poller spins)
                yield_cpu()
    report({"bytes": r.moved})


# -- the runs ----------------------------------------------------------------------

# -- where the three processes ran ---------------------------------------------------

def _cpu_of(stat_path: str) -> tuple[int, str] | None:
    """(the CPU a task last ran on, its state) from its /proc stat, or None."""
    try:
        with open(stat_path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[36]), fields[0].decode()


def _in_background(loop):
    """Run loop(stop), a threading.Event, on a thread of its own; the callable
    returned sets `stop` and waits for the thread (a run_pair watch's end)."""
    stop = threading.Event()
    t = threading.Thread(target=loop, args=(stop,), daemon=True)
    t.start()

    def done():
        stop.set()
        t.join()
    return done


class Placement:
    """Samples, every few milliseconds while a stream runs, which CPU the
    kernel's busy thread, the writer and the reader are on: the stream's rate
    depends on it more than on anything else on a machine with 2 CPUs."""

    PERIOD = 0.01

    def __init__(self, kernel_pid: int | None):
        self.kernel_pid = kernel_pid
        self.counts = collections.Counter()

    def watch(self, writer_pid: int, reader_pid: int):
        if self.kernel_pid is None:
            return lambda: None

        def sample(stop: threading.Event):
            task_dir = f"/proc/{self.kernel_pid}/task"
            while not stop.wait(self.PERIOD):
                try:
                    tasks = os.listdir(task_dir)
                except OSError:
                    return
                running = [c for c in (_cpu_of(f"{task_dir}/{t}/stat") for t in tasks) if c and c[1] == "R"]
                w, r = _cpu_of(f"/proc/{writer_pid}/stat"), _cpu_of(f"/proc/{reader_pid}/stat")
                if not running or w is None or r is None:
                    continue
                k = running[0][0]
                self.counts["all three on one CPU" if k == w[0] == r[0] else
                            "the kernel sharing a CPU with a program" if k in (w[0], r[0]) else
                            "the kernel on a CPU of its own"] += 1
        return _in_background(sample)

    def summary(self) -> str:
        n = sum(self.counts.values())
        if not n:
            return "placement not sampled"
        return ", ".join(f"{what} {100 * c / n:.0f}%" for what, c in self.counts.most_common())


def run_ringzero(total: int, chunk: int, ring: int, depth: int, write_depth: int = 1,
                 placement: Placement | None = None) -> tuple[float, dict, dict]:
    w, r = run_pair(role_command(MODULE, "rz-writer", str(total), str(chunk), str(write_depth)),
                    role_command(MODULE, "rz-reader", str(total), str(chunk), str(ring), str(depth)),
                    watch=placement.watch if placement is not None else None)
    if r["bytes"] != total:
        raise RuntimeError(f"the reader got {r['bytes']} of {total} bytes")
    return gbps(total, r["t1"] - w["t0"]), w, r


def run_socket(total: int, chunk: int) -> float:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        w, r = run_pair(role_command(MODULE, "sock-writer", str(a.fileno()), str(total), str(chunk)),
                        role_command(MODULE, "sock-reader", str(b.fileno()), str(total), str(chunk)),
                        pass_fds=(a.fileno(), b.fileno()))
    finally:
        a.close()
        b.close()
    if r["bytes"] != total:
        raise RuntimeError(f"the socket reader got {r['bytes']} of {total} bytes")
    return gbps(total, r["t1"] - w["t0"])


def _ended_with(mediator: subprocess.Popen):
    """A run_pair watch: if the relay fails, its two programs (which would spin
    on for ever) are killed, so the run fails at once."""
    def watch(writer_pid: int, reader_pid: int):
        def guard(stop: threading.Event):
            while not stop.wait(0.05):
                if mediator.poll():
                    for pid in (writer_pid, reader_pid):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    return
        return _in_background(guard)
    return watch


def run_relay(total: int, chunk: int) -> float:
    """The bare relay between a writer and a reader (see the module's docstring)."""
    fds = []
    try:
        for name in ("writer", "reader"):
            fds.append(os.memfd_create(f"rz-bench-relay-{name}"))
            os.ftruncate(fds[-1], rings.region_size(_RELAY_RING))
            with mmap.mmap(fds[-1], rings.region_size(_RELAY_RING)) as m:
                rings.init_region(memoryview(m), _RELAY_RING)
        mediator = start_role(role_command(MODULE, "relay", str(fds[0]), str(fds[1]), str(total), str(chunk)), fds)
        try:
            release(mediator)
            try:
                w, r = run_pair(role_command(MODULE, "relay-writer", str(fds[0]), str(total), str(chunk)),
                                role_command(MODULE, "relay-reader", str(fds[1]), str(total), str(chunk)),
                                pass_fds=fds, timeout=120, watch=_ended_with(mediator))
            except RuntimeError:
                if mediator.poll():
                    raise RuntimeError(f"the relay failed (code {mediator.returncode}; its traceback is above)") \
                        from None
                raise
            mediator.communicate(timeout=60)
        finally:
            if mediator.poll() is None:
                mediator.kill()
                mediator.wait()
    finally:
        for fd in fds:
            os.close(fd)
    if r["bytes"] != total:
        raise RuntimeError(f"the relay's reader got {r['bytes']} of {total} bytes")
    return gbps(total, r["t1"] - w["t0"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.example_stream", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs of each (default 5)")
    ap.add_argument("--mib", type=int, default=256, help="MiB streamed per run (default 256)")
    ap.add_argument("--chunk", type=int, default=64 * 1024, help="bytes per write and per read (default 65536)")
    ap.add_argument("--ring", type=int, default=1 << 20, help="the context's ring-buffer size (default 1 MiB)")
    ap.add_argument("--depth", type=int, default=1,
                    help="overlapped reads the reader keeps pending (default 1: one synchronous read at a time)")
    ap.add_argument("--write-depth", type=int, default=1,
                    help="overlapped writes the writer keeps pending (default 1: one synchronous write at a time)")
    ap.add_argument("--no-relay", action="store_true", help="leave out the bare relay")
    ap.add_argument("--json", action="store_true", help="end with one JSON line of the medians and spreads")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.role:
        roles = {"rz-reader": rz_reader, "rz-writer": rz_writer, "sock-reader": sock_reader, "sock-writer": sock_writer,
                 "relay": relay, "relay-writer": relay_writer, "relay-reader": relay_reader}
        roles[a.role](*map(int, a.args))
        return 0

    from ringzero import client
    from ringzero.drivers.example_ioctl import EXAMPLE_MAX_BUFFER_SIZE
    if not 0 < a.ring <= EXAMPLE_MAX_BUFFER_SIZE:
        ap.error(f"--ring must be 1 .. {EXAMPLE_MAX_BUFFER_SIZE}")
    total = a.mib * 1024 * 1024
    client.start_embedded_kernel()       # a kernel of the benchmark's own; programs find it through the environment
    client.ensure_driver("Example", "ringzero.drivers.example")
    client.disconnect()
    print(f"{a.runs} runs of {a.mib} MiB in {a.chunk}-byte chunks; Example ring {a.ring} bytes, "
          f"{a.depth} read(s) and {a.write_depth} write(s) pending; "
          f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    relay_max = _RELAY_RING // 2 - 64
    with_relay = not a.no_relay and a.chunk <= relay_max
    if not a.no_relay and not with_relay:
        print(f"(no bare relay: its chunks go whole through its rings, which take up to {relay_max} bytes)")
    rz, sock, bare = [], [], []
    placed = collections.Counter()
    for i in range(a.runs):
        placement = Placement(client.embedded_kernel_pid())
        rate, w, r = run_ringzero(total, a.chunk, a.ring, a.depth, a.write_depth, placement)
        rz.append(rate)
        sock.append(run_socket(total, a.chunk))
        if with_relay:
            bare.append(run_relay(total, a.chunk))
        print(f"  run {i + 1}: Example {rz[-1]:.3f} GB/s ({r['reads']} reads of {total // a.chunk} chunks)   "
              f"socket {sock[-1]:.3f} GB/s" + (f"   bare relay {bare[-1]:.3f} GB/s" if bare else ""), flush=True)
        print(f"         {placement.summary()}", flush=True)
        placed += placement.counts
    (rm, rlo, rhi), (sm, slo, shi) = spread(rz), spread(sock)
    print(f"Example driver  median {rm:.3f} GB/s  (min {rlo:.3f}, max {rhi:.3f})")
    print(f"Unix socket     median {sm:.3f} GB/s  (min {slo:.3f}, max {shi:.3f})")
    relay_fields = {}
    if bare:
        bm, blo, bhi = spread(bare)
        print(f"bare relay      median {bm:.3f} GB/s  (min {blo:.3f}, max {bhi:.3f})")
        print(f"ratio           {rm / sm:.3f} of the raw socket; {rm / bm:.3f} of the bare relay, "
              f"which makes {bm / sm:.3f} of the raw socket")
        relay_fields = {"relay_gbps": bm, "relay_min": blo, "relay_max": bhi, "relay_ratio": rm / bm}
    else:
        print(f"ratio           {rm / sm:.3f} of the raw socket")
    total_placed = Placement(None)
    total_placed.counts = placed
    print(f"where the kernel's busy thread ran, over all runs: {total_placed.summary()}")
    client.stop_embedded_kernel()
    if a.json:
        print(json.dumps({"example_gbps": rm, "example_min": rlo, "example_max": rhi, "socket_gbps": sm,
                          "socket_min": slo, "socket_max": shi, "ratio": rm / sm, **relay_fields,
                          "placement": total_placed.summary()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
