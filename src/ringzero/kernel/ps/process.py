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


# The pool one program may hold at once, as NT charges its pool quota: the IRPs
# and system buffers of its outstanding requests (io/file.py) and its open
# handles with their objects (ob/handles.py), so that neither pending requests
# nor handles grow the kernel without bound.  Past it a request or an open
# fails with STATUS_QUOTA_EXCEEDED (ERROR_NOT_ENOUGH_QUOTA).  The system
# process is not charged.  `ringzero kernel --max-io-memory`.
quota = 256 * 1024 * 1024


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
        self.handles = HandleTable(self.charge, handle_limit)
        self.pending: set = set()
        self.io_charged = 0        # bytes of its quota in use: outstanding requests' and open handles'
        self.views: dict[int, object] = {}
        self.lock = threading.Lock()
        self.exiting = False
        self.connection = None     # the host connection (None for the system process)
        self.tids_here = False     # its requests' thread ids name tasks in our pid namespace (file.py; set at HELLO)
        self.lock_waits = 0        # its requests waiting for a file object's lock (file.py)
        self.counters = {"requests": 0}
        self.read_buffers: list = []   # its last fast read's buffer, for its next (io/file.py)

    def charge_locked(self, n: int) -> bool:
        """Charge `n` bytes to this process's quota (a negative `n` gives them
        back); False, nothing charged, if that would pass it.  `lock` held."""
        if n > 0 and not self.is_system and self.io_charged + n > quota:
            return False
        self.io_charged += n
        return True

    def charge(self, n: int) -> bool:
        with self.lock:
            return self.charge_locked(n)

    @property
    def pid(self) -> int:
        return self.UniqueProcessId

    @property
    def is_admin(self) -> bool:
        from ringzero.kernel import system
        return self.is_system or self.uid in system.get().admin_uids

    def __repr__(self) -> str:
        return f"<EPROCESS pid={self.pid} uid={self.uid} {self.image!r}>"
