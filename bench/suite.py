"""ringzero's benchmark suite: every figure beside its peers, measured in the same run.

1. Null IOCTL round trip (16-byte METHOD_BUFFERED echo), against a raw Unix
   socket, multiprocessing.Pipe, pyzmq REQ/REP over ipc:// and two processes
   spinning on shared memory (the practical floor), with ratios.
2. CreateFile + CloseHandle pairs per second.
3. Event latency: the driver's KeSetEvent to the program's WaitForSingleObject.
4. Example-pipe streaming (bench.example_stream) against a raw socket stream
   and a bare Python relay over the same rings (the ceiling for a kernel in Python).
5. Scale: 8 programs at once; 1000 connected programs each holding a handle.

Each figure is the median of several runs, with the spread (min..max).
"""

from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing as mp
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from bench import ROOT
IOCTL_ECHO = 0x222000
IOCTL_SIGNAL = 0x222014
MSG = b"x" * 16


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))]


def summarize(runs: list[list[float]]) -> dict:
    """Round-trip samples (seconds) of several runs -> medians and spread in µs."""
    p50s = [pct(r, 0.50) * 1e6 for r in runs]
    p99s = [pct(r, 0.99) * 1e6 for r in runs]
    rates = [len(r) / sum(r) for r in runs]
    return {"p50_us": statistics.median(p50s), "p50_min": min(p50s), "p50_max": max(p50s),
            "p99_us": statistics.median(p99s), "p99_min": min(p99s), "p99_max": max(p99s),
            "per_s": statistics.median(rates)}


# -- a private kernel ------------------------------------------------------------

class Kernel:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ringzero-bench-")
        self.socket = os.path.join(self.dir, "k.sock")
        self.proc = subprocess.Popen([sys.executable, "-m", "ringzero.kernel", "--socket", self.socket, "--state",
                                      os.path.join(self.dir, "state"), "--load", "ringzero.drivers.echo", "--quiet"])
        from ringzero import client
        deadline = time.monotonic() + 20
        while not client.kernel_running(self.socket):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the benchmark kernel did not start")
            time.sleep(0.02)
        os.environ["RINGZERO_SOCKET"] = self.socket

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> None:
        from ringzero import client
        client.disconnect()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _open_echo():
    from ringzero.win32 import win32con, win32file
    return win32file.CreateFile(r"\\.\Echo", win32con.GENERIC_READ | win32con.GENERIC_WRITE, 0, None,
                                win32con.OPEN_EXISTING, 0, None)


def bench_ringzero_ioctl(n: int) -> list[float]:
    from ringzero.win32 import win32file
    h = _open_echo()
    dio = win32file.DeviceIoControl
    for _ in range(min(n, 2000)):
        dio(h, IOCTL_ECHO, MSG, 16)
    out = []
    pc = time.perf_counter
    for _ in range(n):
        t = pc()
        dio(h, IOCTL_ECHO, MSG, 16)
        out.append(pc() - t)
    h.Close()
    return out


def bench_open_close(n: int) -> float:
    from ringzero.win32 import win32api, win32con, win32file
    t = time.perf_counter()
    for _ in range(n):
        h = win32file.CreateFile(r"\\.\Echo", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)
        win32api.CloseHandle(h.Detach())
    return n / (time.perf_counter() - t)


def _waiter(event_name: str, n: int, conn) -> None:
    from ringzero.win32 import win32event
    ev = win32event.OpenEvent(win32event.EVENT_MODIFY_STATE | win32event.SYNCHRONIZE, False, event_name)
    conn.send("ready")
    wakes = []
    for _ in range(n):
        win32event.WaitForSingleObject(ev, 30_000)
        wakes.append(time.monotonic_ns())
        conn.send("woke")      # the signaler sets the event again only after this
    conn.send(wakes)


def bench_event_latency(n: int) -> list[float]:
    """The driver stamps KeQueryPerformanceCounter (CLOCK_MONOTONIC) just before
    KeSetEvent; the waiting program stamps the moment its wait returns."""
    from ringzero import client
    from ringzero.win32 import win32event, win32file
    name = f"RzBenchEvent{os.getpid()}"
    ev = win32event.CreateEvent(None, False, False, name)
    parent, child = mp.Pipe()
    p = mp.get_context("fork").Process(target=_waiter, args=(name, n, child))
    p.start()
    assert parent.recv() == "ready"
    h = _open_echo()
    sets = []
    for _ in range(n):
        time.sleep(0.0005)   # let the waiter park again, so every set is a wakeup
        out = win32file.DeviceIoControl(h, IOCTL_SIGNAL, struct.pack("<Q", int(ev)), 8)
        sets.append(struct.unpack("<q", out)[0] * 100)
        assert parent.recv() == "woke"
    wakes = parent.recv()
    p.join()
    h.Close()
    ev.Close()
    client.disconnect()
    return [(w - s) / 1e9 for s, w in zip(sets, wakes)]


# -- peers -------------------------------------------------------------------------

def _sock_server(fd: int, other: int) -> None:
    os.close(other)    # the parent's end, inherited by fork: without this no EOF ever comes
    s = socket.socket(fileno=fd)
    while True:
        m = s.recv(64)
        if not m:
            return
        s.send(m)


def _round_trips(send, recv, n: int, warmup: int = 1000) -> list[float]:
    """Time n request/response pairs after `warmup` untimed ones."""
    out = []
    pc = time.perf_counter
    for i in range(n + warmup):
        t = pc()
        send(MSG)
        recv()
        if i >= warmup:
            out.append(pc() - t)
    return out


def bench_socket(n: int) -> list[float]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    p = mp.get_context("fork").Process(target=_sock_server, args=(b.fileno(), a.fileno()))
    p.start()
    b.close()
    out = _round_trips(a.send, lambda: a.recv(64), n)
    a.close()
    p.join()
    return out


def _pipe_server(c, other) -> None:
    other.close()
    try:
        while True:
            c.send_bytes(c.recv_bytes())
    except EOFError:
        pass


def bench_mp_pipe(n: int) -> list[float]:
    a, b = mp.Pipe()
    p = mp.get_context("fork").Process(target=_pipe_server, args=(b, a))
    p.start()
    b.close()
    out = _round_trips(a.send_bytes, a.recv_bytes, n)
    a.close()
    p.join()
    return out


def _zmq_server(addr: str) -> None:
    import zmq
    s = zmq.Context().socket(zmq.REP)
    s.bind(addr)
    while True:
        m = s.recv()
        s.send(m)
        if m == b"stop":
            return


def bench_zmq(n: int) -> list[float] | None:
    try:
        import zmq
    except ImportError:
        return None
    addr = f"ipc://{tempfile.mkdtemp(prefix='rzb-zmq-')}/s"
    p = mp.get_context("fork").Process(target=_zmq_server, args=(addr,))
    p.start()
    s = zmq.Context().socket(zmq.REQ)
    s.connect(addr)
    out = _round_trips(s.send, s.recv, n)
    s.send(b"stop")
    s.recv()
    p.join()
    return out


def _spin_server(m) -> None:
    mv = memoryview(m).cast("Q")
    last = 0
    while True:
        v = mv[0]
        if v != last:
            if v == 0xFFFFFFFF:
                return
            last = v
            mv[8] = v


def bench_shm_spin(n: int) -> list[float]:
    m = mmap.mmap(-1, 4096)
    p = mp.get_context("fork").Process(target=_spin_server, args=(m,))
    p.start()
    mv = memoryview(m).cast("Q")
    out = []
    pc = time.perf_counter
    for i in range(1, n + 1001):
        t = pc()
        mv[0] = i
        while mv[8] != i:
            pass
        if i > 1000:
            out.append(pc() - t)
    mv[0] = 0xFFFFFFFF
    p.join()
    mv.release()
    return out


# -- scale ---------------------------------------------------------------------------

def _hammer(n: int, go, done) -> None:
    from ringzero.win32 import win32file
    h = _open_echo()
    done.put("ready")
    go.get()
    t0 = time.monotonic()
    for _ in range(n):
        win32file.DeviceIoControl(h, IOCTL_ECHO, MSG, 16)
    done.put((t0, time.monotonic()))


def bench_parallel(programs: int, n: int) -> float:
    ctx = mp.get_context("spawn")
    go, done = ctx.Queue(), ctx.Queue()
    ps = [ctx.Process(target=_hammer, args=(n, go, done)) for _ in range(programs)]
    for p in ps:
        p.start()
    for _ in ps:
        assert done.get(timeout=120) == "ready"
    for _ in ps:
        go.put(1)
    spans = [done.get(timeout=600) for _ in ps]
    for p in ps:
        p.join()
    start = min(s for s, _ in spans)
    end = max(e for _, e in spans)
    return programs * n / (end - start)


def _many(count: int, conn) -> None:
    import resource
    from ringzero import client
    from ringzero.protocol import wire
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    name = r"\\.\Echo".encode()
    conns = []
    for _ in range(count):
        c = client.Connection()
        status, h, _ = c.request(wire.Kind.CREATE_FILE, wire.CREATE_FILE.pack(0x80000000, 0, 3, 0, len(name)) + name)
        assert status == 0, hex(status)
        conns.append(c)
    conn.send("connected")
    conn.recv()


def bench_many(kernel: Kernel, count: int, probe_n: int) -> dict:
    from ringzero import client
    idle = bench_ringzero_ioctl(probe_n)
    base_rss = kernel.rss_kib()
    base_procs = client.connection().call("kernel.info")["processes"]
    parent, child = mp.Pipe()
    p = mp.get_context("fork").Process(target=_many, args=(count, child))
    p.start()
    msg = parent.recv() if parent.poll(600) else None
    if msg != "connected":
        p.kill()
        raise RuntimeError("the connecting process did not finish")
    time.sleep(0.5)
    rss = kernel.rss_kib()
    busy = bench_ringzero_ioctl(probe_n)
    t = time.monotonic()
    p.kill()
    p.join()
    while client.connection().call("kernel.info")["processes"] > base_procs:
        time.sleep(0.01)
    rundown = time.monotonic() - t
    return {"programs": count, "kernel_kib_per_program": (rss - base_rss) / count,
            "idle_p50_us": pct(idle, 0.5) * 1e6, "loaded_p50_us": pct(busy, 0.5) * 1e6,
            "loaded_over_idle": pct(busy, 0.5) / pct(idle, 0.5), "rundown_s": rundown}


def _raise_nofile() -> None:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _bench_json(module: str, *args: str, timeout: float) -> tuple[dict | None, str]:
    """Run another benchmark module of this tree with --json: (its last JSON
    line, or None if it failed; the end of its stderr)."""
    r = subprocess.run([sys.executable, "-m", module, *args, "--json"], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        return None, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), ""


# -- the table ---------------------------------------------------------------------------

def run(quick: bool = False, runs: int = 5, only: set | None = None, as_json: bool = False) -> dict:
    from rich.console import Console
    from rich.table import Table

    n = 500 if quick else 20_000
    runs = 1 if quick else runs
    console = Console(stderr=as_json)
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                 "date": time.strftime("%Y-%m-%d")}, "runs": runs, "round_trips": n}
    _raise_nofile()
    kernel = Kernel()
    try:
        def want(name):
            return only is None or name in only

        if want("ioctl"):
            with console.status("null IOCTL round trips..."):
                rt = {"ringzero (ring)": summarize([bench_ringzero_ioctl(n) for _ in range(runs)])}
                env_ring = os.environ.get("RINGZERO_RING")
                from ringzero import client
                client.disconnect()
                os.environ["RINGZERO_RING"] = "0"
                rt["ringzero (socket)"] = summarize([bench_ringzero_ioctl(n) for _ in range(runs)])
                client.disconnect()
                if env_ring is None:
                    os.environ.pop("RINGZERO_RING")
                else:
                    os.environ["RINGZERO_RING"] = env_ring
                rt["unix socket (SEQPACKET)"] = summarize([bench_socket(n) for _ in range(runs)])
                rt["multiprocessing.Pipe"] = summarize([bench_mp_pipe(n) for _ in range(runs)])
                z = [bench_zmq(n) for _ in range(runs)]
                if z[0] is not None:
                    rt["pyzmq REQ/REP ipc"] = summarize(z)
                rt["shared-memory spin (floor)"] = summarize([bench_shm_spin(n) for _ in range(runs)])
            results["round_trip"] = rt
            rz = rt["ringzero (ring)"]["p50_us"]
            t = Table(title=f"1. Null IOCTL round trip, 16 bytes ({n} per run, median of {runs} runs)")
            for col in ("peer", "p50 µs", "p50 spread", "p99 µs", "round trips/s", "peer p50 / ringzero p50"):
                t.add_column(col, justify="right" if col != "peer" else "left")
            for name, r in rt.items():
                t.add_row(name, f"{r['p50_us']:.1f}", f"{r['p50_min']:.1f}..{r['p50_max']:.1f}", f"{r['p99_us']:.1f}",
                          f"{r['per_s']:,.0f}", f"{r['p50_us'] / rz:.2f}x")
            console.print(t)

        if want("open"):
            with console.status("CreateFile + CloseHandle..."):
                rates = [bench_open_close(n // 4) for _ in range(runs)]
            results["open_close_per_s"] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
            console.print(f"2. CreateFile + CloseHandle: [bold]{statistics.median(rates):,.0f}[/bold] pairs/s "
                          f"({min(rates):,.0f}..{max(rates):,.0f})")

        if want("event"):
            with console.status("event latency..."):
                ev = summarize([bench_event_latency(n // 10) for _ in range(runs)])
            results["event_latency"] = ev
            console.print(f"3. KeSetEvent -> WaitForSingleObject returns: p50 [bold]{ev['p50_us']:.1f} µs[/bold] "
                          f"({ev['p50_min']:.1f}..{ev['p50_max']:.1f}), p99 {ev['p99_us']:.1f} µs")

        if want("stream"):
            with console.status("Example-pipe streaming..."):
                x, err = _bench_json("bench.example_stream", "--runs", str(runs), "--mib", "16" if quick else "512",
                                     timeout=1800)
            if x is not None:
                results["example_stream"] = x
                console.print(f"4. Example pipe streaming, 64 KiB chunks: [bold]{x['example_gbps']:.2f} GB/s[/bold] "
                              f"({x['example_min']:.2f}..{x['example_max']:.2f}) vs a raw Unix-socket stream "
                              f"{x['socket_gbps']:.2f} GB/s ({x['socket_min']:.2f}..{x['socket_max']:.2f}): "
                              f"{x['ratio']:.3f}x; samples of the kernel's busy thread: {x['placement']}")
                if "relay_gbps" in x:
                    console.print(f"   a bare Python relay over the same rings (the ceiling for a kernel in Python): "
                                  f"{x['relay_gbps']:.2f} GB/s ({x['relay_min']:.2f}..{x['relay_max']:.2f}), "
                                  f"of which the Example pipe makes {x['relay_ratio']:.3f}")
            else:
                console.print(f"4. Example pipe streaming failed:\n{err}")
            with console.status("the kernel's own work per chunk..."):
                rounds = 20 if quick else 300
                x, err = _bench_json("bench.kernel_path", "--rounds", str(rounds), timeout=600)
            if x is not None:
                results["kernel_path"] = x
                console.print(f"   one 64 KiB write and one read, in one process (best of {rounds} rounds; steadier "
                              f"than the rates above): the kernel's own work [bold]{x['kernel_us']:.1f} µs[/bold], "
                              f"the bare relay's {x['relay_us']:.1f} µs ({x['ratio']:.2f}x); the programs' "
                              f"[bold]{x['programs_us']:.1f} µs[/bold], the relay's programs' "
                              f"{x['relay_programs_us']:.1f} µs ({x['programs_ratio']:.2f}x)")
            else:
                console.print(f"   the kernel-path measurement failed:\n{err}")

        if want("scale"):
            with console.status("8 programs at once..."):
                agg = [bench_parallel(8, n // 8) for _ in range(max(1, runs // 2))]
            results["parallel_8_per_s"] = statistics.median(agg)
            console.print(f"5a. 8 programs at once: [bold]{statistics.median(agg):,.0f}[/bold] null IOCTLs/s in all")
            count = 100 if quick else 1000
            with console.status(f"{count} connected programs..."):
                many = bench_many(kernel, count, n // 4)
            results["many"] = many
            console.print(f"5b. {count} connected programs, each with an open handle: "
                          f"{many['kernel_kib_per_program']:.0f} KiB kernel RSS per program; null IOCTL p50 "
                          f"{many['loaded_p50_us']:.1f} µs vs {many['idle_p50_us']:.1f} µs idle "
                          f"({many['loaded_over_idle']:.2f}x); all run down in {many['rundown_s']:.2f} s")
    finally:
        kernel.stop()
    if as_json:
        print(json.dumps(results, indent=2))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few hundred round trips, one run: a smoke test")
    ap.add_argument("--runs", type=int, default=5, help="runs of each measurement (default 5)")
    ap.add_argument("--only", action="append", choices=["ioctl", "open", "event", "stream", "scale"],
                    help="run only this part (repeatable)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON (the table goes to stderr)")
    a = ap.parse_args(argv)
    run(a.quick, a.runs, set(a.only) if a.only else None, a.json)
    return 0
