"""The kernel host's life: one kernel per socket, stale sockets, clean shutdown."""

import os
import signal
import socket
import subprocess
import sys

from conftest import KernelProcess, start_kernel


def test_second_kernel_on_a_live_socket_refuses(kernel):
    r = subprocess.run([sys.executable, "-m", "ringzero.kernel", "--socket", kernel.socket, "--state",
                        kernel.state + "2"], env=kernel.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "another ringzero kernel is already listening on" in r.stderr
    assert kernel.call("kernel.info")["pid"] == kernel.pid       # the first one is untouched


def test_stale_socket_is_reclaimed_and_shutdown_is_clean(tmp_path):
    first = KernelProcess(tmp_path, loads=["ringzero.drivers.echo"])
    path = first.socket
    first.proc.kill()                      # dies without removing its socket
    first.proc.wait()
    assert os.path.exists(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert s.connect_ex(path) != 0     # nobody listens: stale
    finally:
        s.close()
    log = tmp_path / "second.log"
    with open(log, "w") as out:
        p = subprocess.Popen([sys.executable, "-m", "ringzero.kernel", "--socket", path, "--state", first.state,
                              "--load", "ringzero.drivers.echo", "--verbose"], env=first.env,
                             stdout=out, stderr=subprocess.STDOUT)
        from conftest import wait_until
        from ringzero import client
        assert wait_until(lambda: client.kernel_running(path), timeout=20)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
    text = log.read_text()
    assert f"listening on {path}" in text
    assert "driver echo unloaded" in text          # DriverUnload ran at shutdown
    assert not os.path.exists(path)                # and the socket is gone
    first._log.close()


def test_ensure_driver_matches_service_names_without_case(tmp_path, monkeypatch):
    k = start_kernel(tmp_path, monkeypatch, loads=["ringzero.drivers.echo"])     # service "echo"
    from ringzero import client
    try:
        assert client.ensure_driver("ECHO", "ringzero.drivers.echo") is False
        assert client.ensure_driver("Recorder2", os.path.join(os.path.dirname(__file__), "..", "drivers",
                                                              "recorder.py")) is True
    finally:
        k.stop()


HANGING_UNLOAD = '''
import time
from ringzero.ddk import *


def DriverUnload(DriverObject):
    time.sleep(3600)


def DriverEntry(DriverObject, RegistryPath):
    DriverObject.DriverUnload = DriverUnload
    return STATUS_SUCCESS
'''


def test_a_driver_unload_that_never_returns_does_not_keep_the_kernel_from_stopping(tmp_path, monkeypatch):
    """(It waits out the 10 s the kernel gives a DriverUnload at shutdown.)"""
    image = tmp_path / "Hang.py"
    image.write_text(HANGING_UNLOAD)
    k = start_kernel(tmp_path, monkeypatch, loads=[str(image)])
    try:
        from ringzero import client
        client.disconnect()
        k.proc.terminate()
        assert k.proc.wait(timeout=60) == 0
        assert "DriverUnload of Hang did not return in 10 s; the kernel stops without it" in k.log()
    finally:
        k.stop()
