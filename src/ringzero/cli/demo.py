"""`ringzero demo`: the four seed systems, end to end, with nothing set up first.

Each scene is a sample module's `demo(console)`; the demo starts an embedded
kernel when none is running, and each scene loads its own driver.
"""

from __future__ import annotations

import importlib
import sys
import time

import click
from rich.console import Console
from rich.rule import Rule

from ringzero import client
from ringzero.cli.app import main

SCENES = [
    ("VirtToPhys", "ringzero.samples.virttophys",
     "IOCTLs through the I/O manager: virtual to physical addresses, loaded through the service control manager"),
    ("SharingMemory", "ringzero.samples.sharingmemory",
     "a kernel page mapped into this program, refreshed by the driver's timer"),
    ("Example", "ringzero.samples.usedriver2",
     "a driver-mediated pipe: programs exchanging text through per-name ring buffers"),
    ("PRMonitor", "ringzero.samples.prmonitor",
     "a driver signalling a program's event on every process start"),
]


@main.command()
@click.option("--only", multiple=True, type=click.Choice([s[0] for s in SCENES], case_sensitive=False),
              help="Run only these scenes (repeatable).")
def demo(only) -> None:
    """Show the seed systems working: VirtToPhys, SharingMemory, Example, PRMonitor."""
    console = Console()
    path, started = client.ensure_kernel()
    console.print(f"[bold]ringzero demo[/bold]  kernel: {'embedded, ' if started else ''}{path}")
    failures = 0
    for name, module, what in SCENES:
        if only and name.lower() not in {o.lower() for o in only}:
            continue
        console.print(Rule(f"[bold cyan]{name}[/bold cyan]: {what}"))
        try:
            scene = getattr(importlib.import_module(module), "demo")
        except (ImportError, AttributeError):
            console.print("[yellow]not available in this build[/yellow]")
            continue
        t = time.monotonic()
        try:
            scene(console)
        except Exception as e:  # one scene's failure must not hide the others
            failures += 1
            console.print(f"[bold red]{name} failed:[/bold red] {e}")
        else:
            console.print(f"[green]{name} done[/green] in {time.monotonic() - t:.1f} s")
    client.disconnect()
    sys.exit(1 if failures else 0)
