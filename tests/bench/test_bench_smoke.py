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


def _run_json(module: str, *args: str) -> tuple[dict, str]:
    """Run a benchmark module with --json on this tree: (its last JSON line, its stdout)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, ROOT]))
    env.pop("RINGZERO_SOCKET", None)
    r = subprocess.run([sys.executable, "-m", module, *args, "--json"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stdout


def test_example_stream_smoke():
    # the stream, the raw socket and the bare relay each move every byte (each role checks its count)
    out, text = _run_json("bench.example_stream", "--runs", "1", "--mib", "4")
    assert out["example_gbps"] > 0 and out["socket_gbps"] > 0 and out["relay_gbps"] > 0
    assert "bare relay" in text


def test_kernel_path_smoke():
    # every timed request is answered in full (the benchmark checks each answer's status and size)
    out, text = _run_json("bench.kernel_path", "--rounds", "3", "--pairs", "10")
    assert out["kernel_us"] > 0 and out["relay_us"] > 0 and out["programs_us"] > 0 and out["relay_programs_us"] > 0
    assert "bare relay" in text
