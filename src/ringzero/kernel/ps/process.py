"""Processes as the kernel sees them: one EPROCESS per connected program.

Invariant: `pending` holds every IRP issued by this process that has not
completed; `views` every user-mode mapping made into it and not yet unmapped;
both are emptied by rundown when the program goes away, before its handles
are closed.
"""

from __future__ import annotations

import threading

from ringzero.kernel.ob.handles import HandleTable
from ringzero.kernel.ob.object import ObjectHeader


class EPROCESS(ObjectHeader):
    type_name = "Process"

    def __init__(self, pid: int, uid: int, gid: int, image: str = "", system: bool = False,
                 start_time: int | None = None, groups: frozenset = frozenset(), handle_limit: int = 1 << 24):
        self.UniqueProcessId = pid
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.image = image
        self.start_time = start_time
        self.is_system = system
        self.handles = HandleTable(handle_limit)
        self.pending: set = set()
        self.io_charged = 0        # bytes its outstanding requests hold, IRPs and system buffers (file.py's quota)
        self.views: dict[int, object] = {}
        self.lock = threading.Lock()
        self.exiting = False
        self.connection = None     # the host connection (None for the system process)
        self.tids_here = False     # its requests' thread ids name tasks in our pid namespace (file.py; set at HELLO)
        self.lock_waits = 0        # its requests waiting for a file object's lock (file.py)
        self.counters = {"requests": 0}

    @property
    def pid(self) -> int:
        return self.UniqueProcessId

    @property
    def is_admin(self) -> bool:
        from ringzero.kernel import system
        return self.is_system or self.uid in system.get().admin_uids

    def __repr__(self) -> str:
        return f"<EPROCESS pid={self.pid} uid={self.uid} {self.image!r}>"
