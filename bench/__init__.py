"""`python -m bench` / `make bench`: the benchmark suite (see bench/suite.py).

Every process a benchmark starts (its kernel, its programs, its peers) runs
this tree's ringzero, as the benchmark itself does: src/ goes first on the path
here and in PYTHONPATH, ahead of whatever ringzero the interpreter would find
(an editable install of another checkout, say)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")

if "ringzero" in sys.modules and not os.path.abspath(sys.modules["ringzero"].__file__).startswith(SRC + os.sep):
    raise ImportError(f"ringzero was imported from {sys.modules['ringzero'].__file__} before the benchmarks of {ROOT}")
sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = os.pathsep.join(
    dict.fromkeys(p for p in (SRC, ROOT, *os.environ.get("PYTHONPATH", "").split(os.pathsep)) if p))
