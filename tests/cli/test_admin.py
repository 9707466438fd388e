"""`ringzero obj`, `handles` and `poolmon` against a real kernel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DRIVERS = Path(__file__).parents[1] / "kernel" / "svc" / "drivers"


def rz(k, *args):
    r = subprocess.run([sys.executable, "-m", "ringzero.cli.main", *args], env=k.env, capture_output=True, text=True,
                       timeout=60)
    return r.returncode, r.stdout, r.stderr


def test_obj_shows_the_namespace_like_winobj(kernel):
    code, out, _ = rz(kernel, "obj", "\\Device")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "Directory of \\Device"
    assert lines[2].split() == ["Name", "Type", "SymLink", "/", "Driver", "/", "State"]
    assert ["Echo", "Device", "\\Driver\\echo"] in [line.split() for line in lines]  # --load: named by module
    code, out, _ = rz(kernel, "obj", "\\??")
    assert ["Echo", "SymbolicLink", "\\Device\\Echo"] in [line.split() for line in out.splitlines()]
    code, out, _ = rz(kernel, "obj")
    names = [line.split()[0] for line in out.splitlines()[3:-2]]
    assert {"Device", "Driver", "??", "BaseNamedObjects"} <= set(names)
    code, out, _ = rz(kernel, "obj", "\\Driver\\Echo")
    assert out.split() == ["\\Driver\\echo", "Driver", "\\Device\\Echo"]
    code, out, _ = rz(kernel, "obj", "--json", "\\Device")
    d = json.loads(out)
    assert d["type"] == "Directory" and {"name": "Echo", "driver": "\\Driver\\echo"}.items() <= \
        next(c for c in d["children"] if c["name"] == "Echo").items()
    code, _, err = rz(kernel, "obj", "\\NoSuchThing")
    assert code == 1 and "no object named 'NoSuchThing'" in err


def test_handles_lists_a_programs_handles_like_handle_exe(kernel):
    holder = kernel.spawn("""
        import sys
        from ringzero.win32 import win32event, win32file
        f = win32file.CreateFile(r"\\\\.\\Echo", win32file.GENERIC_READ | win32file.GENERIC_WRITE, 0, None,
                                 win32file.OPEN_EXISTING, 0, None)
        e = win32event.CreateEvent(None, True, False, "RzHandlesTest")
        print(int(f), int(e), flush=True)
        sys.stdin.readline()
    """, stdin=subprocess.PIPE)
    try:
        f, e = map(int, holder.stdout.readline().split())
        code, out, _ = rz(kernel, "handles", "--pid", str(holder.pid))
        lines = out.splitlines()
        assert code == 0 and lines[1].split()[1:5] == ["pid:", str(holder.pid), "uid:", str(__import__("os").getuid())]
        assert lines[1].endswith("quota: 2 KiB of 256 MiB used")      # two handles, 1 KiB each
        rows = {int(line.split(":")[0], 16): line.split(":", 1)[1].split() for line in lines[2:-2]}
        assert rows[f][0] == "File" and rows[f][2] == "(RW-)" and rows[f][3] == "\\Device\\Echo"
        assert rows[e][0] == "Event" and rows[e][-1] == "\\BaseNamedObjects\\RzHandlesTest"
        assert lines[-1] == f"{len(rows)} handle(s) in 1 program(s)"
        code, out, _ = rz(kernel, "handles", "--pid", str(holder.pid), "--json")
        (p,) = json.loads(out)
        assert {h["handle"]: h["type"] for h in p["handles"]} == {f: "File", e: "Event"}
        code, _, err = rz(kernel, "handles", "--pid", "1")
        assert code == 1 and "no program with pid 1" in err
    finally:
        holder.kill()
        holder.wait()


def test_poolmon_shows_allocations_by_tag_and_driver(bare_kernel):
    k = bare_kernel
    assert rz(k, "sc", "create", "Leaky", "binPath=", str(DRIVERS / "leaky.py"))[0] == 0
    assert rz(k, "sc", "start", "Leaky")[0] == 0
    code, out, _ = rz(k, "poolmon", "--once")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["Tag", "Type", "Allocs", "Frees", "Diff", "Bytes", "Driver"]
    assert ["Leak", "Nonp", "1", "0", "1", "64", "Leaky"] in [line.split() for line in lines]
    code, out, _ = rz(k, "poolmon", "--json")
    row = next(r for r in json.loads(out) if r["tag"] == "Leak")
    assert (row["allocs"], row["frees"], row["bytes"], row["drivers"]) == (1, 0, 64, ["Leaky"])
    code, out, _ = rz(k, "poolmon", "--count", "2", "--interval", "0.05")
    assert code == 0 and "ringzero poolmon" in out and "Leak" in out and "Leaky" in out
    rz(k, "sc", "stop", "Leaky")       # the leak is taken back at unload: freed, as poolmon then shows
    code, out, _ = rz(k, "poolmon", "--json")
    row = next(r for r in json.loads(out) if r["tag"] == "Leak")
    assert (row["allocs"], row["frees"], row["bytes"], row["drivers"]) == (1, 1, 0, [])
