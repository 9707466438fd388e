"""What usedriver2 and usedriver3 share: opening \\\\.\\Example\\NAME (starting
an embedded kernel and loading the Example driver when needed), and the demo
scene in which two pairs of them talk through the driver at once.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import signal
import subprocess
import sys
import time

import click

from ringzero import client
from ringzero.nt import status as st
from ringzero.win32 import pywintypes, win32file
from ringzero.win32.winerror import ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND

SERVICE = "Example"
IMAGE = "ringzero.drivers.example"


def pipe_path(name: str) -> str:
    return "\\\\.\\Example\\" + name


def _note(text: str) -> None:
    click.echo(text, err=True)


def open_pipe(name: str, access: int, prog: str) -> pywintypes.HANDLEType:
    """A handle on \\\\.\\Example\\NAME.  With no kernel running an embedded one
    starts (said on stderr, with how to share it); with no Example device the
    driver is loaded.  Failures become click errors with the Win32 reason."""
    path, started = client.ensure_kernel()
    if started:
        _note(f"{prog}: no kernel was running; started one for this program at {path}.\n"
              f"{prog}: other programs reach it with RINGZERO_SOCKET={path}; "
              f"run `ringzero kernel` in another terminal to share one between terminals.")
    try:
        try:
            return win32file.CreateFile(pipe_path(name), access, 0, None, win32file.OPEN_EXISTING, 0, None)
        except pywintypes.error as e:
            if e.winerror not in (ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND):
                raise
        _load_driver(prog)
        return win32file.CreateFile(pipe_path(name), access, 0, None, win32file.OPEN_EXISTING, 0, None)
    except pywintypes.error as e:
        raise click.ClickException(f"cannot open {pipe_path(name)}: {e.strerror} (Win32 error {e.winerror})") from None


def run_on_pipe(name: str, body, prog: str) -> None:
    r"""Open \\.\Example\NAME, run body(handle), close.  A Win32 failure becomes
    a clear CLI error; Ctrl-C just ends the program (the kernel closes its handle)."""
    h = open_pipe(name, win32file.GENERIC_READ | win32file.GENERIC_WRITE, prog)
    try:
        body(h)
    except KeyboardInterrupt:
        return
    except pywintypes.error as e:
        raise click.ClickException(f"{e.funcname} on {pipe_path(name)} failed: {e.strerror} (Win32 error {e.winerror})") from None
    except (client.KernelGone, client.KernelNotRunning) as e:
        raise click.ClickException(f"{e}; {pipe_path(name)} is gone with it") from None
    h.Close()


def _load_driver(prog: str) -> None:
    try:
        if client.ensure_driver(SERVICE, IMAGE):
            _note(f"{prog}: loaded the Example driver")
    except client.CallFailed as e:
        if e.status == st.STATUS_IMAGE_ALREADY_LOADED:
            return      # loaded meanwhile, by another program
        raise click.ClickException(f"the Example driver is not loaded and loading it failed: {e}") from None


# -- the demo scene ------------------------------------------------------------------

SCENE = {
    "HELLO": ["Hello from usedriver2!", "each line goes through the driver's ring",
              "and usedriver3 prints it as it arrives."],
    "Temp": ["A second pair uses the name Temp:", "its own context, its own ring,", "nothing crosses over."],
}


def _python_m(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class _Lines:
    """Lines from a child's pipe, with a deadline (never blocking past it)."""

    def __init__(self, stream):
        self.fd = stream.fileno()
        self.buf = b""
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.fd, selectors.EVENT_READ)

    def next(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sel.select(left):
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("utf-8", "replace")


def _names_free_on_this_kernel(console) -> dict[str, list[str]]:
    """SCENE, with a name of its own for each context another program has open
    or has left data in (a `usedriver3 HELLO --follow` in another terminal would
    otherwise take this scene's lines): asked of the driver (IOCTL_EXAMPLE_QUERY)."""
    from ringzero.drivers.example_ioctl import IOCTL_EXAMPLE_QUERY, EXAMPLE_QUERY_INFORMATION, query_name
    probe = win32file.CreateFile(pipe_path(f"demo-probe-{os.getpid()}"), 0, 0, None, win32file.OPEN_EXISTING, 0, None)
    scene = {}
    try:
        for name, lines in SCENE.items():
            q = EXAMPLE_QUERY_INFORMATION.from_buffer_copy(
                win32file.DeviceIoControl(probe, IOCTL_EXAMPLE_QUERY, query_name(name),
                                          ctypes.sizeof(EXAMPLE_QUERY_INFORMATION)))
            if q.ReferenceCount or q.BytesQueued:
                own = f"{name}-{os.getpid()}"
                console.print(f"  [yellow]{name} is in use on this kernel ({q.ReferenceCount} handles open, "
                              f"{q.BytesQueued} bytes queued): this pair uses {own}[/yellow]")
                name = own
            scene[name] = lines
    finally:
        probe.Close()
    return scene


def demo(console=None, timeout: float = 20.0) -> bool:
    """Two programs exchange text through \\\\.\\Example\\HELLO while a second pair
    uses \\\\.\\Example\\Temp: each pair is a `usedriver2 NAME` fed lines on its
    standard input and a `usedriver3 NAME --follow` printing what arrives, four
    processes on one kernel (an embedded one if none runs).  Prints the scene on
    `console` (a rich Console); True when each reader printed exactly its own
    writer's lines, in order, else RuntimeError."""
    if console is None:
        from rich.console import Console
        console = Console()
    client.ensure_kernel()
    try:
        client.ensure_driver(SERVICE, IMAGE)
    except client.CallFailed as e:
        if e.status != st.STATUS_IMAGE_ALREADY_LOADED:
            raise
    scene = _names_free_on_this_kernel(console)
    procs: list[subprocess.Popen] = []
    readers, writers, out = {}, {}, {}
    ok = True
    try:
        for name in scene:
            r = subprocess.Popen(_python_m("ringzero.samples.usedriver3", name, "--follow"),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs.append(r)
            readers[name], out[name] = r, _Lines(r.stdout)
            ready = _Lines(r.stderr).next(timeout)
            if ready is None:
                raise RuntimeError(f"usedriver3 {name} did not start: {r.stderr.read().decode(errors='replace')}")
            console.print(f"  [cyan]usedriver3 {name}[/cyan] (pid {r.pid}) is waiting for data")
        for name in scene:
            w = subprocess.Popen(_python_m("ringzero.samples.usedriver2", name), stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            procs.append(w)
            writers[name] = w
            console.print(f"  [green]usedriver2 {name}[/green] (pid {w.pid}) started")
        for i in range(max(len(v) for v in scene.values())):
            for name, lines in scene.items():
                if i >= len(lines):
                    continue
                w = writers[name]
                w.stdin.write((lines[i] + "\n").encode())
                w.stdin.flush()
                got = out[name].next(timeout)
                match = got == lines[i]
                ok &= match
                console.print(f"  {name:>5}  usedriver2 → usedriver3  {got!r}" if match else
                              f"  {name:>5}  [red]usedriver2 wrote {lines[i]!r}, usedriver3 printed {got!r}[/red]")
        for w in writers.values():
            w.stdin.close()
            ok &= w.wait(timeout) == 0
        for r in readers.values():
            r.send_signal(signal.SIGINT)
            ok &= r.wait(timeout) == 0
        if not ok:
            raise RuntimeError("a reader did not print exactly its writer's lines, or a program failed")
        console.print("  writers done; Ctrl-C ended the readers and the kernel cancelled their reads")
        return ok
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
