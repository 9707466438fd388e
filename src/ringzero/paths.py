"""Where the kernel listens and keeps its state, for the kernel and programs alike."""

from __future__ import annotations

import os

ENV_SOCKET = "RINGZERO_SOCKET"
ENV_STATE = "RINGZERO_STATE"


def runtime_dir() -> str:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return os.path.join(xdg, "ringzero")
    return f"/tmp/ringzero-{os.getuid()}"


def default_socket_path() -> str:
    return os.environ.get(ENV_SOCKET) or os.path.join(runtime_dir(), "kernel.sock")


def default_state_dir() -> str:
    if os.environ.get(ENV_STATE):
        return os.environ[ENV_STATE]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "ringzero")


def service_name(image: str) -> str:
    """The service name a driver image loaded by `ringzero kernel --load` or
    `ringzero run --load` gets: a .py file's stem, else a module's last component."""
    return os.path.splitext(os.path.basename(image))[0] if image.endswith(".py") else image.rsplit(".", 1)[-1]
