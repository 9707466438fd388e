"""Whose context a kernel thread is running in: the process, the driver, the IRQL.

A dispatch routine of a top-level driver runs in the context of the program
that made the request; timer routines, DPCs and notify routines run on the
kernel's own threads, in the system process.  Every kernel thread carries one
`ThreadContext`, set by whoever calls into a driver.
"""

from __future__ import annotations

import threading

PASSIVE_LEVEL = 0
APC_LEVEL = 1
DISPATCH_LEVEL = 2


class ThreadContext(threading.local):
    process = None          # the EPROCESS whose context this is (None before boot)
    program_thread = 0      # the program's thread id that made the request
    driver = None           # the DRIVER_OBJECT being called, for fault and leak reports
    irql = PASSIVE_LEVEL
    connection = None       # the host connection this thread is the reader of
    reader_token = None     # proof that this thread still holds that reader role
    poller_token = None     # proof that this thread is the ring poller


current = ThreadContext()


class calling_driver:
    """Context manager: mark that `driver` is running on this thread."""

    __slots__ = ("driver", "irql", "_saved")

    def __init__(self, driver, irql: int = PASSIVE_LEVEL):
        self.driver = driver
        self.irql = irql

    def __enter__(self):
        self._saved = (current.driver, current.irql)
        current.driver = self.driver
        current.irql = self.irql
        return self

    def __exit__(self, *exc):
        current.driver, current.irql = self._saved
        return False


class in_process:
    """Context manager: attach this thread to `process` (KeStackAttachProcess)."""

    __slots__ = ("process", "_saved")

    def __init__(self, process):
        self.process = process

    def __enter__(self):
        self._saved = current.process
        current.process = self.process
        return self

    def __exit__(self, *exc):
        current.process = self._saved
        return False
