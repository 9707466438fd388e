"""The benchmark code runs (a few hundred round trips); no figure is asserted."""

import json
import os
import subprocess
import sys

from conftest import ROOT, SRC


def test_bench_quick_smoke():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, ROOT]))
    env.pop("RINGZERO_SOCKET", None)
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "ioctl", "--only", "open",
                        "--only", "event", "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert {"ringzero (ring)", "ringzero (socket)", "unix socket (SEQPACKET)", "multiprocessing.Pipe",
            "shared-memory spin (floor)"} <= set(out["round_trip"])
    assert all(v["per_s"] > 0 for v in out["round_trip"].values())
    assert out["open_close_per_s"]["median"] > 0
    assert out["event_latency"]["p50_us"] > 0


def test_example_stream_smoke():
    # the stream, the raw socket and the bare relay each move every byte (each role checks its count)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, ROOT]))
    env.pop("RINGZERO_SOCKET", None)
    r = subprocess.run([sys.executable, "-m", "bench.example_stream", "--runs", "1", "--mib", "4", "--json"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["example_gbps"] > 0 and out["socket_gbps"] > 0 and out["relay_gbps"] > 0
    assert "bare relay" in r.stdout
