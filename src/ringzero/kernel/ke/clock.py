"""System time as NT counts it: 100 ns units since 1601-01-01 UTC."""

from __future__ import annotations

import time

EPOCH_DIFFERENCE_100NS = 116444736000000000  # 1601-01-01 to 1970-01-01
_perf_frequency = 10_000_000


class LARGE_INTEGER:
    """A 64-bit value with the union's views (QuadPart, LowPart, HighPart)."""

    __slots__ = ("QuadPart",)

    def __init__(self, QuadPart: int = 0):
        self.QuadPart = QuadPart

    @property
    def LowPart(self) -> int:
        return self.QuadPart & 0xFFFFFFFF

    @property
    def HighPart(self) -> int:
        return (self.QuadPart >> 32) & 0xFFFFFFFF if self.QuadPart >= 0 else -((-self.QuadPart) >> 32)

    def __int__(self) -> int:
        return self.QuadPart

    __index__ = __int__

    def __eq__(self, other) -> bool:
        return int(self) == int(other)

    def __repr__(self) -> str:
        return f"LARGE_INTEGER({self.QuadPart:#x})"


def KeQuerySystemTime(CurrentTime: LARGE_INTEGER | None = None) -> int:
    """The system time; stored into `CurrentTime` too when one is given."""
    now = time.time_ns() // 100 + EPOCH_DIFFERENCE_100NS
    if CurrentTime is not None:
        CurrentTime.QuadPart = now
    return now


def local_offset_100ns(system_time: int) -> int:
    """The system time zone's offset from UTC at `system_time`, in 100 ns units."""
    seconds = (system_time - EPOCH_DIFFERENCE_100NS) / 1e7
    return time.localtime(seconds).tm_gmtoff * 10_000_000


def ExSystemTimeToLocalTime(SystemTime, LocalTime=None) -> int:
    """Local time for `SystemTime`; written into `LocalTime` when it is given.

    `LocalTime` may be a LARGE_INTEGER or a writable buffer of at least 8 bytes
    (a pool block, a mapped page), as drivers pass the address of either."""
    system = int(getattr(SystemTime, "QuadPart", SystemTime))
    local = system + local_offset_100ns(system)
    if LocalTime is not None:
        if isinstance(LocalTime, LARGE_INTEGER):
            LocalTime.QuadPart = local
        else:
            memoryview(LocalTime).cast("B")[:8] = local.to_bytes(8, "little", signed=True)
    return local


def ExLocalTimeToSystemTime(LocalTime, SystemTime=None) -> int:
    local = int(getattr(LocalTime, "QuadPart", LocalTime))
    system = local - local_offset_100ns(local)
    if SystemTime is not None:
        SystemTime.QuadPart = system
    return system


def KeQueryPerformanceCounter(PerformanceFrequency: LARGE_INTEGER | None = None) -> int:
    if PerformanceFrequency is not None:
        PerformanceFrequency.QuadPart = _perf_frequency
    return time.monotonic_ns() // 100


def KeQueryInterruptTime() -> int:
    return time.monotonic_ns() // 100
