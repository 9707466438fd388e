"""The kernel debug log: DbgPrint / KdPrint lines and fault reports.

Lines go to a bounded ring (so `ringzero dbgview` can show recent history) and
to every live subscriber.  A subscriber is a callable taking one `LogRecord`;
one that raises is dropped, never the log.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass

from ringzero.kernel.context import current

log = logging.getLogger("ringzero.kernel")

RING_SIZE = 4096


@dataclass(slots=True)
class LogRecord:
    seq: int
    time: float
    pid: int
    source: str
    level: str
    text: str

    def as_dict(self) -> dict:
        return {"seq": self.seq, "time": self.time, "pid": self.pid, "source": self.source,
                "level": self.level, "text": self.text}


_lock = threading.Lock()
_ring: collections.deque[LogRecord] = collections.deque(maxlen=RING_SIZE)
_subscribers: list = []
_seq = 0
echo = False  # the kernel's --verbose: also print each line on stderr


def emit(text: str, level: str = "info", source: str | None = None) -> LogRecord:
    global _seq
    proc = current.process
    if source is None:
        drv = current.driver
        source = drv.name if drv is not None else "kernel"
    with _lock:
        _seq += 1
        rec = LogRecord(_seq, time.time(), proc.pid if proc is not None else os.getpid(), source, level, text)
        _ring.append(rec)
        subs = list(_subscribers)
    for sub in subs:
        try:
            sub(rec)
        except Exception:
            unsubscribe(sub)
    if echo or level in ("fault", "leak", "verifier"):
        log.log(logging.WARNING if level != "info" else logging.INFO, "[%s] %s", source, text)
    return rec


def subscribe(callback, history: int = 0) -> list[LogRecord]:
    with _lock:
        _subscribers.append(callback)
        return list(_ring)[-history:] if history else []


def unsubscribe(callback) -> None:
    with _lock:
        try:
            _subscribers.remove(callback)
        except ValueError:
            pass


def recent(n: int = RING_SIZE) -> list[LogRecord]:
    with _lock:
        return list(_ring)[-n:]


def fault(where: str, exc: BaseException, driver=None) -> None:
    """A driver raised where it must not; log it with its traceback and name."""
    drv = driver if driver is not None else current.driver
    name = drv.name if drv is not None else "kernel"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    emit(f"{name}: exception in {where}: {exc!r}\n{tb}", level="fault", source=name)
    if drv is not None:
        drv.note_fault()


def _format(fmt: str, args: tuple) -> str:
    """printf-style formatting as drivers write it (%08X, %wZ, %ws, %p...)."""
    if not args:
        return fmt
    fixed = (fmt.replace("%wZ", "%s").replace("%ws", "%s").replace("%S", "%s")
                .replace("%p", "%X").replace("%I64", "%").replace("%ll", "%").replace("%l", "%"))
    conv = []
    for a in args:
        if hasattr(a, "Buffer") and isinstance(getattr(a, "Buffer"), str):
            a = a.Buffer
        elif isinstance(a, (bytes, bytearray)):
            a = bytes(a).split(b"\0", 1)[0].decode("latin-1")
        elif not isinstance(a, (int, float, str)):
            a = id(a)
        conv.append(a)
    try:
        return fixed % tuple(conv)
    except (TypeError, ValueError):
        return fmt + " " + " ".join(map(str, conv))


def DbgPrint(Format: str, *args) -> int:
    text = _format(Format, args).replace("\r\n", "\n").rstrip("\n")
    emit(text)
    return 0


def KdPrint(args) -> int:
    """KdPrint((fmt, ...)) takes one parenthesised tuple, as the C macro does."""
    if isinstance(args, tuple):
        return DbgPrint(*args)
    return DbgPrint(args)
