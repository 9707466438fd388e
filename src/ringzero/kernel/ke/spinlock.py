"""KSPIN_LOCK: a lock usable at DISPATCH_LEVEL (from timer routines and DPCs)."""

from __future__ import annotations

import threading

from ringzero.kernel.context import DISPATCH_LEVEL, current


class KSPIN_LOCK:
    __slots__ = ("_lock",)

    def __init__(self):
        self._lock = threading.Lock()


def KeInitializeSpinLock(SpinLock: KSPIN_LOCK) -> None:
    SpinLock._lock = threading.Lock()


def KeAcquireSpinLock(SpinLock: KSPIN_LOCK) -> int:
    """Raise to DISPATCH_LEVEL and take the lock; returns the old IRQL."""
    SpinLock._lock.acquire()
    old, current.irql = current.irql, DISPATCH_LEVEL
    return old


def KeReleaseSpinLock(SpinLock: KSPIN_LOCK, NewIrql: int) -> None:
    current.irql = NewIrql
    SpinLock._lock.release()


def KeAcquireSpinLockAtDpcLevel(SpinLock: KSPIN_LOCK) -> None:
    SpinLock._lock.acquire()


def KeReleaseSpinLockFromDpcLevel(SpinLock: KSPIN_LOCK) -> None:
    SpinLock._lock.release()
