"""Entry point of the `ringzero` command: the group from app.py plus every command module."""

from __future__ import annotations

import importlib

from ringzero.cli.app import main

# Each module adds its commands to `main`; keep one line per module.
COMMAND_MODULES = [
    "ringzero.cli.tools",
    "ringzero.cli.samples",
    "ringzero.cli.sc",
    "ringzero.cli.admin",
    "ringzero.cli.demo",
    "ringzero.cli.run",
]

for _name in COMMAND_MODULES:
    importlib.import_module(_name)

__all__ = ["main"]

if __name__ == "__main__":
    main()
