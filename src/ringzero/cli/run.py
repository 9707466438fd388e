"""`ringzero run`: a program written for Windows, run unchanged against a kernel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import click

from ringzero import client, paths
from ringzero.cli.app import main
from ringzero.win32 import PYWIN32_PATH


def _note(text: str) -> None:
    click.echo(f"ringzero run: {text}", err=True)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--load", "loads", multiple=True, metavar="PATH_OR_MODULE",
              help="Load this driver first unless a driver of its name is loaded (a .py file or a module name; "
                   "the service name is its stem). Repeatable.")
@click.option("-m", "module", metavar="MODULE", help="Run a module, as `python -m` does, instead of a script.")
@click.option("--verbose", "-v", is_flag=True,
              help="Print the debug log (DbgPrint, driver faults) of a kernel started for the program on stderr "
                   "(a running kernel's: `ringzero dbgview`).")
@click.argument("program", nargs=-1, type=click.UNPROCESSED, metavar="[SCRIPT] [ARGS]...")
def run(loads, module, verbose, program) -> None:
    """Run a Python program written for Windows, its pywin32 imports unchanged.

    `import win32file` (and win32event, win32service, win32api, win32con,
    winioctlcon, winerror, pywintypes) gives the program ringzero's module of
    that name, and so do the Python programs it starts.  It talks to the
    running kernel; with none running, to one started for it and the programs
    it starts, which stops when it exits.  The exit status is the program's.

    \b
    ringzero run --load mydriver.py client.py --its-own-flag
    ringzero run -v --load ringzero.drivers.echo -m mypackage.client
    """
    if module is None and not program:
        raise click.UsageError("name a SCRIPT to run, or a MODULE with -m")
    try:
        path, started = client.ensure_kernel(verbose=verbose)
    except RuntimeError as e:       # the embedded kernel would not start
        raise click.ClickException(str(e)) from None
    if started:
        _note(f"no kernel was running; started one for this program at {path} (it stops when the program exits)")
    elif verbose:
        _note(f"the kernel at {path} was already running: `ringzero dbgview` prints its debug log")
    for image in loads:
        if image.endswith(".py"):
            if not os.path.isfile(image):
                raise click.ClickException(f"no driver file {image}")
            image = os.path.abspath(image)      # the kernel imports it from its own working directory
        service = paths.service_name(image)
        try:
            if client.ensure_driver(service, image):
                _note(f"loaded {image} as {service}")
        except (client.CallFailed, client.KernelNotRunning, client.KernelGone) as e:
            raise click.ClickException(f"loading {image} failed: {e}") from None
    client.disconnect()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PYWIN32_PATH, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, *(("-m", module) if module is not None else ()), *program]
    # SIGTERM and SIGHUP go on to the program, so that it ends before the kernel
    # it uses; one that comes while it is being started is passed on once it is
    started: list = []
    early: list[int] = []

    def forward(signum, _frame):
        if started:
            started[0].send_signal(signum)
        else:
            early.append(signum)
    for forwarded in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(forwarded, forward)
    child = subprocess.Popen(cmd, env=env)
    started.append(child)
    for signum in early:
        child.send_signal(signum)
    while True:
        try:
            code = child.wait()
            break
        except KeyboardInterrupt:
            continue        # Ctrl-C reached the program too (one process group): it decides
    if code < 0:
        sig = -code
        _note(f"the program was killed by {signal.Signals(sig).name}")
        code = 128 + sig
    sys.exit(code)

