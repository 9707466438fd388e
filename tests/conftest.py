"""Shared fixtures: a real kernel process per test, and real program processes.

`kernel` starts `python -m ringzero.kernel` on a private socket and state
directory; the test process itself talks to it as a program (through
RINGZERO_SOCKET), and `kernel.run(code)` / `kernel.spawn(code)` start other
program processes with the same environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
TEST_DRIVERS = os.path.join(ROOT, "tests", "drivers")


class KernelProcess:
    def __init__(self, tmp_path, loads=(), extra_args=(), preexec_fn=None):
        self.dir = tmp_path
        # a directory other users can reach, so programs run as them can connect
        self.sockdir = tempfile.mkdtemp(prefix="rz-test-")
        os.chmod(self.sockdir, 0o755)
        self.socket = os.path.join(self.sockdir, "kernel.sock")
        self.state = str(tmp_path / "state")
        self.env = dict(os.environ)
        self.env["RINGZERO_SOCKET"] = self.socket
        self.env["RINGZERO_STATE"] = self.state
        self.env["PYTHONPATH"] = SRC + os.pathsep + self.env.get("PYTHONPATH", "")
        self.log_path = tmp_path / "kernel.log"
        self._log = open(self.log_path, "w")
        cmd = [sys.executable, "-m", "ringzero.kernel", "--socket", self.socket, "--state", self.state, "--verbose"]
        for image in loads:
            cmd += ["--load", image]
        cmd += list(extra_args)
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=preexec_fn)
        deadline = time.monotonic() + 20
        from ringzero import client
        while not client.kernel_running(self.socket):
            if self.proc.poll() is not None:
                raise RuntimeError(f"kernel exited at start:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"kernel did not start:\n{self.log()}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def program_code(self, code: str) -> str:
        return textwrap.dedent(code)

    def run(self, code: str, timeout: float = 60, check: bool = True, user: str | None = None, **kw):
        """Run `code` as a separate program process; CompletedProcess (text)."""
        cmd = (as_user(user) if user is not None else [sys.executable]) + ["-c", textwrap.dedent(code)]
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"program failed ({r.returncode}):\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}\nkernel log:\n{self.log()[-4000:]}")
        return r

    def spawn(self, code: str, user: str | None = None, **kw) -> subprocess.Popen:
        cmd = (as_user(user) if user is not None else [sys.executable]) + ["-c", textwrap.dedent(code)]
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(cmd, env=self.env, text=True, **kw)

    def call(self, method: str, **args):
        from ringzero import client
        return client.connection().call(method, **args)

    def load(self, image: str, service: str | None = None):
        return self.call("driver.load", image=image, service=service)

    def stop(self):
        from ringzero import client
        client.disconnect()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)


_python_for: dict[str, str] = {}


def as_user(user: str) -> list[str]:
    """A command prefix that runs a Python program as `user` (name or uid) with
    its own group: setpriv plus a Python >= 3.11 that user can run and that can
    import ringzero's program side from this checkout.  Skips the test, saying
    why, where there is none (not root, no setpriv, an unreadable checkout)."""
    import pwd
    import shutil
    if os.geteuid() != 0:
        pytest.skip("running a program as another user needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    pw = pwd.getpwnam(user) if not str(user).isdigit() else pwd.getpwuid(int(user))
    prefix = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]
    if user not in _python_for:
        probe = "import sys, ringzero.win32.win32file; assert sys.version_info >= (3, 11)"
        env = {"PYTHONPATH": SRC, "PATH": os.environ.get("PATH", "")}
        for py in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
            if os.path.exists(py) and subprocess.run(prefix + [py, "-c", probe], env=env, capture_output=True).returncode == 0:
                _python_for[user] = py
                break
        else:
            pytest.skip(f"no Python >= 3.11 that user {user} can run can import this checkout")
    return prefix + [_python_for[user]]


NOBODY = 65534


def unprivileged_python() -> str:
    """A Python >= 3.11 that uid NOBODY may execute (one that need not reach
    this checkout: the caller hands it what it runs), or skip, saying why."""
    if os.geteuid() != 0:
        pytest.skip("switching to the nobody user needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    candidates = [os.path.realpath(sys.executable), os.path.realpath(sys._base_executable),
                  "/usr/bin/python3", "/usr/local/bin/python3"]
    for candidate in dict.fromkeys(candidates):
        probe = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", candidate,
             "-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
            capture_output=True, cwd="/")
        if probe.returncode == 0:
            return candidate
    pytest.skip(f"no Python >= 3.11 that uid {NOBODY} may execute (tried {candidates})")


def start_kernel(tmp_path, monkeypatch, loads=(), extra_args=(), preexec_fn=None) -> KernelProcess:
    """A kernel process this test process is (from now on) a program of."""
    k = KernelProcess(tmp_path, loads=loads, extra_args=extra_args, preexec_fn=preexec_fn)
    monkeypatch.setenv("RINGZERO_SOCKET", k.socket)
    monkeypatch.setenv("RINGZERO_STATE", k.state)
    from ringzero import client
    client.disconnect()
    return k


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernel process with the echo driver loaded; this test is a program of it."""
    k = start_kernel(tmp_path, monkeypatch, loads=["ringzero.drivers.echo"])
    try:
        yield k
    finally:
        k.stop()


@pytest.fixture
def bare_kernel(tmp_path, monkeypatch):
    """A kernel process with no driver loaded."""
    k = start_kernel(tmp_path, monkeypatch)
    try:
        yield k
    finally:
        k.stop()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01):
    """Poll `predicate` until true; the deadline only ends the loop (never asserted as a time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(interval)
    return predicate()
