"""`ringzero kernel`'s robustness flags reach the kernel it starts."""

import os
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import SRC, TEST_DRIVERS
from ringzero import client
from ringzero.win32 import pywintypes, win32con, win32file, winerror

sys.path.insert(0, TEST_DRIVERS)
import misbehave as M  # noqa: E402


@pytest.fixture
def cli_kernel(tmp_path, monkeypatch):
    sockdir = tempfile.mkdtemp(prefix="rz-cli-")
    sock = os.path.join(sockdir, "k.sock")
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.Popen([sys.executable, "-m", "ringzero.cli.main", "kernel", "--socket", sock,
                             "--state", str(tmp_path / "state"), "--load", os.path.join(TEST_DRIVERS, "misbehave.py"),
                             "--no-verifier", "--fault-limit", "1", "--max-handles", "2", "--max-pool", "3MiB"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not client.kernel_running(sock):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.02)
    monkeypatch.setenv("RINGZERO_SOCKET", sock)
    client.disconnect()
    yield proc
    client.disconnect()
    proc.terminate()
    proc.wait(timeout=30)
    proc.stdout.close()


def open_dev():
    return win32file.CreateFile(r"\\.\Misbehave", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None)


def test_the_flags_of_ringzero_kernel(cli_kernel):
    assert client.connection().call("kernel.info")["pool"]["limit"] == 3 << 20     # --max-pool 3MiB
    h = open_dev()
    # --no-verifier: no verifier line for Information past the buffer
    win32file.DeviceIoControl(h, M.IOCTL_INFO_TOO_LARGE, None, 4)
    assert [r for r in client.connection().call("dbg.recent", count=4096) if r["level"] == "verifier"] == []
    # --max-handles 2
    h2 = open_dev()
    with pytest.raises(pywintypes.error) as e:
        open_dev()
    assert e.value.winerror == winerror.ERROR_NO_SYSTEM_RESOURCES
    h2.Close()
    # --fault-limit 1: one fault and the driver refuses new opens
    win32file.DeviceIoControl(h, M.IOCTL_TOUCH_AFTER, None, 0)
    with pytest.raises(pywintypes.error) as e:
        open_dev()
    assert e.value.winerror == winerror.ERROR_IO_DEVICE
    h.Close()


@pytest.mark.parametrize("text, size", [("1048576", 1 << 20), ("512M", 512 << 20), ("2G", 2 << 30),
                                        ("3MiB", 3 << 20), ("1.5k", 1536), ("64KB", 64 << 10)])
def test_sizes_are_read_with_their_units(text, size):
    from ringzero.kernel.boot import parse_size
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "lots", "0", "-5M", "12X"])
def test_a_bad_size_is_refused_with_a_clear_message(text):
    r = subprocess.run([sys.executable, "-m", "ringzero.cli.main", "kernel", "--max-pool", text],
                       env=dict(os.environ, PYTHONPATH=SRC), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--max-pool" in r.stderr and "size" in r.stderr


def test_the_priority_boost_default_is_the_kernels_own():
    # the CLI names the default itself (importing the kernel would slow every `ringzero` command)
    from ringzero.cli.app import kernel
    from ringzero.kernel.boot import PRIORITY_BOOST
    option = next(p for p in kernel.params if p.name == "priority_boost")
    assert option.default == PRIORITY_BOOST
