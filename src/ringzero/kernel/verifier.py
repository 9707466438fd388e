"""Driver verifier: named errors for driver bugs NT would bugcheck on.

Each check raises `DriverBugcheck` in the offending driver's call (so its own
traceback points at the line) and logs a `verifier` line with the driver's name
and NT's bug-check name.  `enabled` is on by default; `ringzero kernel
--no-verifier` turns the checks that cost time off.
"""

from __future__ import annotations

from ringzero.kernel import dbg
from ringzero.kernel.context import current

enabled = True
fault_limit = 0  # the kernel's --fault-limit: faults after which a driver is marked faulted (0: never)

MULTIPLE_IRP_COMPLETE_REQUESTS = "MULTIPLE_IRP_COMPLETE_REQUESTS"
IRP_NOT_MARKED_PENDING = "DRIVER_VERIFIER_IOMANAGER_VIOLATION: STATUS_PENDING returned without IoMarkIrpPending"
IRP_MARKED_PENDING_NOT_RETURNED = "DRIVER_VERIFIER_IOMANAGER_VIOLATION: IoMarkIrpPending but returned a final status"
IRP_NOT_COMPLETED = "DRIVER_VERIFIER_IOMANAGER_VIOLATION: dispatch returned without completing or pending the IRP"
INFORMATION_TOO_LARGE = "DRIVER_VERIFIER_IOMANAGER_VIOLATION: IoStatus.Information larger than the output buffer"
IRP_TOUCHED_AFTER_COMPLETION = "DRIVER_VERIFIER_IOMANAGER_VIOLATION: IRP used after IoCompleteRequest"
IRQL_NOT_LESS_OR_EQUAL = "IRQL_NOT_LESS_OR_EQUAL: a wait at DISPATCH_LEVEL"
IRQL_GT_ZERO_AT_SYSTEM_SERVICE = "IRQL_GT_ZERO_AT_SYSTEM_SERVICE: a dispatch routine returned above PASSIVE_LEVEL"
DRIVER_LEFT_LOCKED_PAGES = "DRIVER_LEFT_LOCKED_PAGES_IN_PROCESS"
THREAD_NOT_MUTEX_OWNER = "THREAD_NOT_MUTEX_OWNER"


class DriverBugcheck(RuntimeError):
    """A driver did what NT would bug-check on; `code` is NT's name for it."""

    def __init__(self, code: str, detail: str = "", driver=None):
        drv = driver if driver is not None else current.driver
        self.code = code
        self.driver_name = drv.name if drv is not None else "kernel"
        super().__init__(f"{self.driver_name}: {code}" + (f" ({detail})" if detail else ""))


def violation(code: str, detail: str = "", driver=None, raise_it: bool = True) -> DriverBugcheck:
    err = DriverBugcheck(code, detail, driver)
    dbg.emit(str(err), level="verifier", source=err.driver_name)
    drv = driver if driver is not None else current.driver
    if drv is not None:
        drv.counters["verifier"] = drv.counters.get("verifier", 0) + 1
    if raise_it:
        raise err          # a fault where it is caught, like any exception of the driver's
    if drv is not None:
        drv.note_fault()   # the I/O manager repaired it, but it is a fault all the same
    return err
