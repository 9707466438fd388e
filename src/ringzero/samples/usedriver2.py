"""usedriver2 NAME: write each line of standard input to \\\\.\\Example\\NAME.

The tutorial's writer.  By default the driver never blocks a write: it stores
what fits in the pipe's ring buffer and says how much, so a line that did not
fit (the ring is full because nobody reads) is reported, not retried.  With
--wait the handle does blocking writes (EXAMPLE_BLOCKING_WRITES): a line that
does not fit waits until readers have made room for all of it.
"""

from __future__ import annotations

import struct
import sys

import click

from ringzero.drivers.example_ioctl import EXAMPLE_BLOCKING_WRITES, IOCTL_EXAMPLE_SET_BLOCKING, IOCTL_EXAMPLE_SET_SIZE
from ringzero.samples.example_pipe import demo, pipe_path, run_on_pipe  # noqa: F401  (demo: `ringzero demo`'s scene)
from ringzero.win32 import pywintypes, win32file

PROG = "usedriver2"


@click.command()
@click.argument("name")
@click.option("--size", type=int, metavar="BYTES",
              help="First set the pipe's ring-buffer size (IOCTL_EXAMPLE_SET_SIZE; default 4096).")
@click.option("--wait", is_flag=True,
              help="Blocking writes: a line that does not fit waits for a reader to make room, instead of "
                   "being cut short (IOCTL_EXAMPLE_SET_BLOCKING with EXAMPLE_BLOCKING_WRITES).")
def cli(name: str, size: int | None, wait: bool) -> None:
    """Write each line of standard input to \\\\.\\Example\\NAME.

    Run `usedriver3 NAME` against the same kernel to read them; NAME is
    compared without regard to case.  A line that does not fit in the ring
    buffer is reported on stderr with how much of it was stored (with --wait,
    it waits for room instead).
    """
    def body(h):
        if size is not None:
            try:
                win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_SIZE, struct.pack("<I", size), 0)
            except pywintypes.error as e:
                raise click.ClickException(f"cannot set the ring size to {size}: {e.strerror}") from None
        if wait:
            win32file.DeviceIoControl(h, IOCTL_EXAMPLE_SET_BLOCKING, struct.pack("<I", EXAMPLE_BLOCKING_WRITES), 0)
        if sys.stdin.isatty():
            click.echo(f"Type lines to send to {pipe_path(name)}; Ctrl-D ends.", err=True)
        for line in sys.stdin.buffer:
            _, written = win32file.WriteFile(h, line)
            if written < len(line):
                click.echo(f"{PROG}: the pipe is full: {written} of {len(line)} bytes stored", err=True)

    run_on_pipe(name, body, PROG)


if __name__ == "__main__":
    cli(prog_name=PROG)
