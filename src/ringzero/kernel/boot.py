"""Starting and stopping the kernel host: `ringzero kernel`."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading

from ringzero import paths
from ringzero.kernel import calls as _calls  # noqa: F401  (registers the CALL methods)
from ringzero.kernel import dbg, system, verifier
from ringzero.kernel.host import KernelHost
from ringzero.kernel.io import driver as iodriver
from ringzero.kernel.io import file as iofile
from ringzero.kernel.ke import timer
from ringzero.kernel.mm import pool
from ringzero.kernel.ob import events as obev
from ringzero.kernel.ps import process

log = logging.getLogger("ringzero.kernel")


class Kernel:
    """A booted kernel: the system, the host listening for programs, and the
    drivers loaded at start.  `start()` returns once it listens."""

    def __init__(self, socket_path: str | None = None, state_dir: str | None = None, verbose: bool = False,
                 max_handles: int = 1 << 20, max_pending: int = 0):
        self.socket_path = socket_path or paths.default_socket_path()
        self.state_dir = state_dir or paths.default_state_dir()
        self.verbose = verbose
        self.max_handles = max_handles
        self.max_pending = max_pending
        self.host: KernelHost | None = None
        self.system = None
        self.thread_watch = None

    def start(self, loads: list[str] = ()) -> None:
        dbg.echo = self.verbose
        self.system = system.boot(self.state_dir)
        self.host = KernelHost(self.socket_path, handle_limit=self.max_handles, pending_limit=self.max_pending)
        self.host.bind()
        self._boot_services()
        for image in loads:
            _calls.load_driver(paths.service_name(image), image)
        self.host.start_background()
        self.thread_watch = iofile.ThreadWatch(self.system.system_process, self.system.processes,
                                               also=(obev.abandon_mutants_of_exited_threads,)).start()

    def _boot_services(self) -> None:
        try:
            from ringzero.kernel.svc import scm
        except ImportError:
            return
        scm.boot(self.system, self.state_dir)

    def stop(self) -> None:
        if self.thread_watch is not None:
            self.thread_watch.stop()
        if self.host is not None:
            self.host.stop()
        for drv in list(self.system.drivers.values()) if self.system else []:
            _unload_at_shutdown(drv)
        svc = getattr(self.system, "scm", None) if self.system else None
        if svc is not None and hasattr(svc, "close"):
            svc.close()
        timer.stop()


UNLOAD_AT_SHUTDOWN_SECONDS = 10.0


def _unload_at_shutdown(drv) -> None:
    """Unload `drv` as the kernel stops, giving its DriverUnload this long: one
    that never returns is said and left behind, and the kernel stops all the same."""
    def unload():
        try:
            iodriver.unload_driver(drv)
        except BaseException as exc:
            dbg.fault("unload at shutdown", exc, drv)

    t = threading.Thread(target=unload, name=f"ringzero-unload-{getattr(drv, 'name', '?')}", daemon=True)
    t.start()
    t.join(UNLOAD_AT_SHUTDOWN_SECONDS)
    if t.is_alive():
        text = (f"DriverUnload of {getattr(drv, 'name', '?')} did not return in {UNLOAD_AT_SHUTDOWN_SECONDS:g} s; "
                "the kernel stops without it")
        dbg.emit(text, level="fault", source=getattr(drv, "name", "kernel"))
        print(f"ringzero kernel: {text}", file=sys.stderr, flush=True)


def _lean_threads() -> None:
    """A thread per connected program must stay cheap: small stacks, and glibc's
    malloc kept to two arenas instead of one per thread."""
    import ctypes
    import ctypes.util
    threading.stack_size(256 * 1024)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_ARENA_MAX = -8
        libc.mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass


def _raise_fd_limit() -> None:
    """Each connected program costs the kernel a few descriptors, and each pool
    section two (pool.section_limit): take what we may."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from '1048576', '512M', '2G' (K, M, G, T: powers of 1024)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _SIZE_UNITS else ""
    number = t[:len(t) - len(unit)]
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a size (bytes, or a number with K, M, G or T)") from None
    if value <= 0:
        raise ValueError(f"{text!r}: a size must be positive")
    return int(value)


# How many nice levels the kernel runs above the programs that started at the
# same nice value, when it may (`ringzero kernel --priority-boost`).  Its ring
# thread spins while programs wait for it, and they spin while it works for
# them: on a CPU both share, the scheduler would give each half, so every
# microsecond a waiting program spins would be one the kernel loses.
PRIORITY_BOOST = 10


def raise_priority(boost: int) -> str | None:
    """Lower this process's nice value by `boost`, before it starts threads
    (they inherit it); a sentence saying why not, if it may not."""
    if boost <= 0:
        return None
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, max(-20, nice - boost))
    except PermissionError:
        return (f"not permitted to raise its priority (that needs root or CAP_SYS_NICE): it runs at nice {nice}, "
                "as the programs do")
    return None


def run(socket_path: str | None, loads: list[str], state_dir: str | None, verbose: bool, quiet: bool = False,
        verifier_enabled: bool = True, fault_limit: int = 0, max_handles: int = 1 << 20, max_pending: int = 0,
        max_pool: int | None = None, max_io_memory: int | None = None, priority_boost: int = PRIORITY_BOOST,
        scratch: str | None = None) -> int:
    """Foreground kernel: prints where it listens, stops cleanly on SIGINT/SIGTERM.
    `scratch`, a directory of its own (an embedded kernel's), goes when it stops."""
    try:
        return _run(socket_path, loads, state_dir, verbose, quiet, verifier_enabled, fault_limit, max_handles,
                    max_pending, max_pool, max_io_memory, priority_boost)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(socket_path, loads, state_dir, verbose, quiet, verifier_enabled, fault_limit, max_handles, max_pending,
         max_pool, max_io_memory, priority_boost) -> int:
    priority_note = raise_priority(priority_boost)
    if max_pool is not None:
        pool.limit = max_pool
    if max_io_memory is not None:
        process.quota = max_io_memory
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s", stream=sys.stderr)
    if priority_note and not quiet:
        print(f"ringzero kernel: {priority_note}", file=sys.stderr, flush=True)
    _raise_fd_limit()
    _lean_threads()
    verifier.enabled = verifier_enabled
    verifier.fault_limit = fault_limit
    k = Kernel(socket_path, state_dir, verbose, max_handles, max_pending)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):   # before we listen: a signal at start still stops cleanly
        signal.signal(sig, lambda *_: stop.set())
    try:
        k.start(loads)
    except iodriver.DriverLoadError as e:
        print(f"ringzero kernel: cannot load driver: {e}", file=sys.stderr)
        k.stop()
        return 1
    except (RuntimeError, OSError) as e:
        print(f"ringzero kernel: {e}", file=sys.stderr)
        return 1
    if not quiet:
        print(f"ringzero kernel {os.getpid()} listening on {k.socket_path}", flush=True)
    while not stop.wait(3600):
        pass
    k.stop()
    if not quiet:
        print("ringzero kernel stopped", flush=True)
    return 0
