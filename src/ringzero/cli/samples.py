"""`ringzero sample NAME ...`: the seed programs.

Each sample is a module in ringzero.samples with a click command named `cli`
(also runnable as `python -m ringzero.samples.NAME`).  Samples start an
embedded kernel and load their driver when none is running.
"""

from __future__ import annotations

import importlib

import click

from ringzero.cli.app import main

# name -> module; keep one line per sample.
SAMPLES = {
    "usedriver2": "ringzero.samples.usedriver2",
    "usedriver3": "ringzero.samples.usedriver3",
    "sharingmemory": "ringzero.samples.sharingmemory",
    "virttophys": "ringzero.samples.virttophys",
    "prmonitor": "ringzero.samples.prmonitor",
}


class _Samples(click.Group):
    def list_commands(self, ctx):
        return sorted(SAMPLES)

    def get_command(self, ctx, name):
        mod = SAMPLES.get(name)
        if mod is None:
            return None
        return importlib.import_module(mod).cli


@main.group(cls=_Samples)
def sample() -> None:
    """Run one of the seed programs (each starts a kernel and loads its driver if needed)."""
