"""What the benchmarks share: a writer and a reader process started together,
timed on the system-wide monotonic clock, and medians with their spread."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from bench import ROOT


def now() -> float:
    """CLOCK_MONOTONIC: one clock for every process on the machine."""
    return time.monotonic()


def role_command(module: str, role: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, "--role", role, *args]


def start_role(cmd: list[str], pass_fds=()) -> subprocess.Popen:
    """Start a benchmark process (it runs this tree: see bench/__init__.py),
    and wait until it says "ready" (release() lets it go)."""
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, pass_fds=pass_fds)
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill()
        p.wait()
        raise RuntimeError(f"{' '.join(cmd)} did not start (said {line!r})")
    return p


def release(p: subprocess.Popen) -> None:
    p.stdin.write("go\n")
    p.stdin.flush()


def run_pair(writer: list[str], reader: list[str], pass_fds=(), timeout: float = 300.0,
             watch=None) -> tuple[dict, dict]:
    """Start `reader` then `writer`; each prints "ready", waits for a line on
    stdin, runs, and prints one JSON line.  Both are released together.  With
    `watch`, `watch(writer_pid, reader_pid)` is called as they are released and
    returns a callable called once both have finished."""
    procs = []
    try:
        for cmd in (reader, writer):
            procs.append(start_role(cmd, pass_fds))
        done = watch(procs[1].pid, procs[0].pid) if watch is not None else None
        for p in procs:
            release(p)
        results = []
        try:
            for p in procs:
                out, _ = p.communicate(timeout=timeout)
                if p.returncode != 0:
                    raise RuntimeError(f"a benchmark process failed with code {p.returncode}")
                results.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            if done is not None:
                done()
        return results[1], results[0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def ready_then_wait() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


def report(result: dict) -> None:
    print(json.dumps(result), flush=True)


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def gbps(n_bytes: int, seconds: float) -> float:
    return n_bytes / seconds / 1e9
