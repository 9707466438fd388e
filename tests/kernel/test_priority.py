"""The kernel runs above the programs' priority when it may (boot.PRIORITY_BOOST),
every thread of it, and says so when it may not."""

import os
import subprocess

import pytest

from conftest import SRC, KernelProcess, as_user
from ringzero.kernel import boot


def thread_nices(pid: int) -> set[int]:
    """The nice value of every thread of `pid` (field 19 of /proc/.../stat)."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            data = f.read()
        out.add(int(data[data.rindex(b")") + 2:].split()[16]))
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a priority needs root or CAP_SYS_NICE")
def test_every_kernel_thread_runs_boosted_and_a_boost_of_0_keeps_the_nice_value(kernel, tmp_path):
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    kernel.call("dbg.recent", count=1)          # the ring poller and the connection's threads exist now
    assert thread_nices(kernel.pid) == {max(-20, mine - boot.PRIORITY_BOOST)}
    (tmp_path / "plain").mkdir()
    plain = KernelProcess(tmp_path / "plain", extra_args=["--priority-boost", "0"])
    try:
        assert thread_nices(plain.pid) == {mine}
    finally:
        plain.stop()


def test_a_kernel_that_may_not_raise_its_priority_says_so():
    r = subprocess.run(as_user("nobody") + ["-c", "from ringzero.kernel.boot import raise_priority as r; print(r(10))"],
                       env={"PYTHONPATH": SRC, "PATH": os.environ.get("PATH", "")}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "not permitted to raise its priority" in r.stdout and "CAP_SYS_NICE" in r.stdout
