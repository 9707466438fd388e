"""usedriver3 NAME: read what was written to \\\\.\\Example\\NAME.

The tutorial's reader: each time Enter is pressed it reads the pipe and
prints what was there.  With --follow it switches its handle to blocking
reads (IOCTL_EXAMPLE_SET_BLOCKING) and prints data as it arrives until
Ctrl-C, which cancels the pending read (CancelIoEx).
"""

from __future__ import annotations

import struct
import sys
import threading

import click

from ringzero import client
from ringzero.drivers.example_ioctl import EXAMPLE_BLOCKING_READS, IOCTL_EXAMPLE_SET_BLOCKING
from ringzero.samples.example_pipe import pipe_path, run_on_pipe
from ringzero.win32 import pywintypes, win32file
from ringzero.win32.winerror import ERROR_NOT_FOUND, ERROR_OPERATION_ABORTED

PROG = "usedriver3"
READ_SIZE = 64 * 1024


def _show(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _follow(h, name: str) -> None:
    """Blocking reads on a thread of their own; Ctrl-C in the main thread
    cancels the pending one with CancelIoEx, as a Windows console program would."""
    win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_BLOCKING, struct.pack("<I", EXAMPLE_BLOCKING_READS), 0)
    failure: list = []
    stop = threading.Event()
    # the reader's own word that it is done: a Thread.join() that Ctrl-C
    # interrupts can leave is_alive() False while the thread still runs, and
    # closing the handle then would wait for its read (the file object's lock)
    finished = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                _show(win32file.ReadFile(h, READ_SIZE)[1])
        except pywintypes.error as e:
            if e.winerror != ERROR_OPERATION_ABORTED:
                failure.append(e)
        except client.KernelGone as e:      # the kernel stopped: said by the main thread
            failure.append(e)
        finally:
            finished.set()

    t = threading.Thread(target=reader, name="usedriver3-reader", daemon=True)
    t.start()
    click.echo(f"{PROG}: printing what arrives on {pipe_path(name)}; Ctrl-C stops.", err=True)
    try:
        while not finished.wait(0.5):
            pass
    except KeyboardInterrupt:
        stop.set()
        while not finished.is_set():
            # the reader may be between two reads: then there is nothing to
            # cancel yet (ERROR_NOT_FOUND), and the next try finds its read
            try:
                win32file.CancelIoEx(h)
            except pywintypes.error as e:
                if e.winerror != ERROR_NOT_FOUND:
                    raise
            finished.wait(0.05)
    if failure:
        raise failure[0]


def _on_enter(h, name: str) -> None:
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"Press Enter to read {pipe_path(name)}; Ctrl-D ends.", err=True)
    for _ in sys.stdin:
        got = 0
        while True:
            _, data = win32file.ReadFile(h, READ_SIZE)
            if not data:
                break
            got += len(data)
            _show(data)
        if not got and interactive:
            click.echo("(nothing was written)", err=True)


@click.command()
@click.argument("name")
@click.option("--follow", is_flag=True, help="Wait for data and print it as it arrives, until Ctrl-C.")
def cli(name: str, follow: bool) -> None:
    """Print what was written to \\\\.\\Example\\NAME each time Enter is pressed.

    With --follow, print data as it arrives instead (blocking reads).
    """
    run_on_pipe(name, (lambda h: _follow(h, name)) if follow else (lambda h: _on_enter(h, name)), PROG)

if __name__ == "__main__":
    cli(prog_name=PROG)
