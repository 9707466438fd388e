"""Streaming through the Example driver against a raw Unix-socket stream.

A writer process writes CHUNK-byte chunks to \\\\.\\Example\\Bench, its handle
doing blocking writes, and a reader process, whose handle does blocking
reads, reads them back, through a kernel started for the benchmark; then the
same bytes go between two Python processes over a Unix stream socket.  Each
is run several times; the medians, their spread and the ratio are printed.

    PYTHONPATH=src python -m bench.example_stream [--runs 5] [--mib 256]

Throughput is the bytes moved over the time from the writer's start to the
reader's last byte.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import struct
import sys
import threading

from bench._common import gbps, now, ready_then_wait, report, role_command, run_pair, spread

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


def sock_writer(fd: int, total: int, chunk: int) -> None:
    s = socket.socket(fileno=fd)
    data = os.urandom(chunk)
    ready_then_wait()
    t0 = now()
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        s.sendall(data[:n] if n < chunk else data)
        sent += n
    report({"t0": t0, "bytes": sent})


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


class Placement:
    """Samples, every few milliseconds while a stream runs, which CPU the
    kernel's busy thread, the writer and the reader are on: the stream's rate
    depends on it more than on anything else on a machine with 2 CPUs."""

    PERIOD = 0.01

    def __init__(self, kernel_pid: int | None):
        self.kernel_pid = kernel_pid
        self.counts = collections.Counter()

    def watch(self, writer_pid: int, reader_pid: int):
        stop = threading.Event()
        if self.kernel_pid is None:
            return stop.set

        def sample():
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

        t = threading.Thread(target=sample, daemon=True)
        t.start()

        def done():
            stop.set()
            t.join()
        return done

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
    ap.add_argument("--json", action="store_true", help="end with one JSON line of the medians and spreads")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.role:
        roles = {"rz-reader": rz_reader, "rz-writer": rz_writer, "sock-reader": sock_reader, "sock-writer": sock_writer}
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
    rz, sock = [], []
    placed = collections.Counter()
    for i in range(a.runs):
        placement = Placement(client.embedded_kernel_pid())
        rate, w, r = run_ringzero(total, a.chunk, a.ring, a.depth, a.write_depth, placement)
        rz.append(rate)
        sock.append(run_socket(total, a.chunk))
        print(f"  run {i + 1}: Example {rz[-1]:.3f} GB/s ({r['reads']} reads of {total // a.chunk} chunks)   "
              f"socket {sock[-1]:.3f} GB/s", flush=True)
        print(f"         {placement.summary()}", flush=True)
        placed += placement.counts
    (rm, rlo, rhi), (sm, slo, shi) = spread(rz), spread(sock)
    print(f"Example driver  median {rm:.3f} GB/s  (min {rlo:.3f}, max {rhi:.3f})")
    print(f"Unix socket     median {sm:.3f} GB/s  (min {slo:.3f}, max {shi:.3f})")
    print(f"ratio           {rm / sm:.3f} of the raw socket")
    total_placed = Placement(None)
    total_placed.counts = placed
    print(f"where the kernel's busy thread ran, over all runs: {total_placed.summary()}")
    client.stop_embedded_kernel()
    if a.json:
        print(json.dumps({"example_gbps": rm, "example_min": rlo, "example_max": rhi, "socket_gbps": sm,
                          "socket_min": slo, "socket_max": shi, "ratio": rm / sm,
                          "placement": total_placed.summary()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
