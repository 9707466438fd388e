"""The one kernel of this host process: its namespace, processes and drivers.

Kernel components reach shared state through `system`; it is created once at
boot (`boot()`), and tests may boot a fresh one in-process.
"""

from __future__ import annotations

import os
import threading

from ringzero.kernel.ob.namespace import Namespace


class System:
    def __init__(self, state_dir: str | None = None):
        from ringzero.kernel.ps.process import EPROCESS
        self.namespace = Namespace()
        self.lock = threading.RLock()
        self.processes: dict[int, EPROCESS] = {}
        self.drivers: dict[str, object] = {}
        self.state_dir = state_dir
        self.admin_uids = {0, os.getuid()}
        self.system_process = EPROCESS(pid=4, uid=os.getuid(), gid=os.getgid(), image="System", system=True)
        self.counters = {"requests": 0, "connections": 0, "protocol_errors": 0}
        self.scm = None           # the service control manager, once booted


system: System | None = None


def boot(state_dir: str | None = None) -> System:
    global system
    from ringzero.kernel.context import current
    from ringzero.kernel.ke import timer
    system = System(state_dir)
    current.process = system.system_process
    timer.start(system.system_process)
    return system


def get() -> System:
    if system is None:
        raise RuntimeError("the kernel is not booted")
    return system
