"""The `ringzero` command group: the kernel, the tools driver developers know from
Windows (sc, obj, handles, poolmon, dbgview), the seed samples and the demo."""

from __future__ import annotations

import sys

import click

from ringzero import paths


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ringzero")
def main() -> None:
    """Windows kernel drivers and the programs that talk to them, in Python, on Linux.

    Start a kernel with `ringzero kernel`, then run programs against it; or run
    `ringzero demo` to see the seed systems work with nothing else running.
    Programs and tools find the kernel through $RINGZERO_SOCKET, else the
    per-user default socket.
    """


class _Size(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        from ringzero.kernel.boot import parse_size
        try:
            return parse_size(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


@main.command()
@click.option("--socket", "socket_path", metavar="PATH",
              help=f"Unix socket to listen on (default: ${paths.ENV_SOCKET}, else {paths.default_socket_path()}).")
@click.option("--load", "loads", multiple=True, metavar="PATH_OR_MODULE",
              help="Load a driver at start (a .py file or a module name); the service name is its stem. Repeatable.")
@click.option("--state", "state_dir", metavar="DIR",
              help=f"Where the service database lives (default: ${paths.ENV_STATE}, else {paths.default_state_dir()}).")
@click.option("--verbose", "-v", is_flag=True, help="Also print the debug log (DbgPrint) on stderr.")
@click.option("--no-verifier", is_flag=True,
              help="Turn off the driver verifier's checks (IRP completion, pending, Information, IRQL).")
@click.option("--fault-limit", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Mark a driver faulted (no new opens) after N faults in its routines; 0: never.")
@click.option("--max-handles", type=click.IntRange(min=1), default=1 << 20, show_default=True, metavar="N",
              help="Handles one program may hold; beyond it, STATUS_INSUFFICIENT_RESOURCES.  Each open handle is "
                   "also charged 1 KiB to the program's quota (--max-io-memory), about what a handle to a file "
                   "costs the kernel with its file object.")
@click.option("--max-pending", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Requests one program may have outstanding in drivers; 0: no limit.")
@click.option("--max-pool", type=_Size(), default=None, metavar="SIZE",
              help="Pool the drivers may have allocated at once (bytes, or 512M, 2G...); past it "
                   "ExAllocatePool returns NULL.  [default: a quarter of this machine's memory]")
@click.option("--max-io-memory", type=_Size(), default=None, metavar="SIZE",
              help="One program's quota: the pool its outstanding requests (IRPs and system buffers) and its open "
                   "handles may hold at once; past it a request or an open fails with ERROR_NOT_ENOUGH_QUOTA.  "
                   "[default: 256M]")
# default: boot.PRIORITY_BOOST, named here so that `ringzero` need not import the kernel (a test checks)
@click.option("--priority-boost", type=click.IntRange(0, 39), default=10, show_default=True, metavar="N",
              help="Run N nice levels above the programs, when permitted (root or CAP_SYS_NICE; otherwise it says "
                   "so and runs as they do); 0: at the nice value it was started with.")
def kernel(socket_path, loads, state_dir, verbose, no_verifier, fault_limit, max_handles, max_pending,
           max_pool, max_io_memory, priority_boost) -> None:
    """Run the kernel host in the foreground until Ctrl-C / SIGTERM.

    Drivers' DriverUnload runs for each loaded driver at shutdown, and the
    socket is removed.  A second kernel on a live socket refuses to start; a
    stale socket file is reclaimed.
    """
    from ringzero.kernel.boot import run
    sys.exit(run(socket_path, list(loads), state_dir, verbose, False, not no_verifier, fault_limit, max_handles,
                 max_pending, max_pool, max_io_memory, priority_boost))
