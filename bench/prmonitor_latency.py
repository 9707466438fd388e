"""Fork-to-print latency of PRMonitor: the seed's event model, the inverted
call, and the raw process-events connector they are built on.

For each way of listening, a monitor process runs and this script starts
/bin/true processes one after another (back to back, or `--interval` ms
apart); each monitor prints, for every creation, how long after the fork it
printed it.  The peer is the floor: a process reading the netlink connector
itself, printing at the child's exec as PRMonitor reports at it.

    PYTHONPATH=src python3 bench/prmonitor_latency.py [--count 200] [--rounds 2] [--interval 0]

Uses the kernel at $RINGZERO_SOCKET, else starts an embedded one.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time

RAW_LISTENER = r"""
import json, sys, time
from ringzero.kernel.ps.connector import ProcessEventSource
src = ProcessEventSource()
forks = {}
print("monitoring", file=sys.stderr, flush=True)
while True:
    for ev in src.read(None):
        if ev.kind == "fork" and not ev.is_thread:
            forks[ev.pid] = ev.timestamp_ns
        elif ev.kind == "exec" and ev.pid in forks:
            fork_ns = forks.pop(ev.pid)
            print(json.dumps({"event": "create", "pid": ev.pid,
                              "latency_us": (time.monotonic_ns() - fork_ns) / 1000}), flush=True)
"""


def monitor_command(way: str) -> list[str]:
    if way == "connector":
        return [sys.executable, "-c", RAW_LISTENER]
    return [sys.executable, "-m", "ringzero.samples.prmonitor", "--mode", way, "--json"]


def measure(way: str, count: int, interval: float) -> list[float]:
    mon = subprocess.Popen(monitor_command(way), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = mon.stderr.readline()
        if "monitoring" not in banner:
            raise RuntimeError(f"{way} monitor did not start: {banner}{mon.stderr.read()}")
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(json.loads(x)) for x in mon.stdout], daemon=True).start()
        pids = set()
        for _ in range(count):
            p = subprocess.Popen(["/bin/true"])
            p.wait()
            pids.add(p.pid)
            if interval:
                time.sleep(interval)
        got: dict[int, float] = {}
        deadline = time.monotonic() + 60
        while len(got) < len(pids) and time.monotonic() < deadline:
            try:
                rec = lines.get(timeout=1)
            except queue.Empty:
                continue
            if rec["event"] == "create" and rec["pid"] in pids:
                got[rec["pid"]] = rec["latency_us"]
        if len(got) < len(pids):
            print(f"  {way}: {len(pids) - len(got)} of {len(pids)} creations never reported", file=sys.stderr)
        return sorted(got.values())
    finally:
        mon.terminate()
        mon.wait()


def summary(latencies: list[float]) -> str:
    if not latencies:
        return "no data"
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return (f"p50 {statistics.median(latencies) / 1000:6.2f} ms   p99 {p99 / 1000:6.2f} ms   "
            f"max {latencies[-1] / 1000:6.2f} ms   (n={len(latencies)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=200, help="processes per round and way")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, the ways taking turns")
    ap.add_argument("--interval", type=float, default=0.0, help="ms between process starts (0: back to back)")
    args = ap.parse_args()
    from ringzero import client
    from ringzero.drivers.prmonitor_ioctl import DRIVER_MODULE, SERVICE_NAME
    client.ensure_kernel()
    client.ensure_driver(SERVICE_NAME, DRIVER_MODULE)
    client.disconnect()
    ways = ["connector", "event", "inverted"]
    results: dict[str, list[float]] = {w: [] for w in ways}
    for _ in range(args.rounds):
        for way in ways:
            results[way] += measure(way, args.count, args.interval / 1000)
    print(f"fork -> print of /bin/true creations, {args.rounds} x {args.count} per way, "
          f"{'back to back' if not args.interval else f'{args.interval:g} ms apart'}, {os.cpu_count()} CPUs")
    for way in ways:
        label = {"connector": "raw connector (peer)", "event": "PRMonitor event mode",
                 "inverted": "PRMonitor inverted"}[way]
        print(f"  {label:<22} {summary(sorted(results[way]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
