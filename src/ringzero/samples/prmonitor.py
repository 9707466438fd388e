"""The PRMonitor program: one line for every process started or exited on this machine.

Two ways to hear from the driver, chosen with --mode:

* event (the seed's): create an event, hand its handle to the driver with
  IOCTL_STARTHOOK, then loop: WaitForSingleObject, and IOCTL_GETINFO until
  the driver says there is nothing more (ERROR_NO_MORE_ITEMS).
* inverted: keep several overlapped IOCTL_WAITINFO requests pending in the
  driver; each completes carrying one record and is sent again at once.

Each line has the time, the event, pid, parent pid, image and command line;
--json prints one JSON object per line instead, with the fork-to-print
latency of each creation (`latency_us`).  It starts an embedded kernel and
loads the driver when none is running.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time

import click

from ringzero import client
from ringzero.drivers.prmonitor_ioctl import (DOS_NAME, DRIVER_MODULE, IOCTL_GETINFO, IOCTL_STARTHOOK,
                                              IOCTL_WAITINFO, PRM_FLAG_FULL_IMAGE_NAME, PRM_MAX_RECORD,
                                              SERVICE_NAME, ProcessRecord, pack_handle, parse_record)
from ringzero.kernel.ke.clock import EPOCH_DIFFERENCE_100NS
from ringzero.win32 import pywintypes, win32con, win32event, win32file, winerror

OUTSTANDING = 8     # WAITINFO requests kept pending in inverted mode
EPOCH_1601 = datetime.datetime(1601, 1, 1, tzinfo=datetime.timezone.utc)


def system_time_now() -> int:
    return time.time_ns() // 100 + EPOCH_DIFFERENCE_100NS


def as_dict(rec: ProcessRecord, printed_at: int) -> dict:
    when = EPOCH_1601 + datetime.timedelta(microseconds=rec.time // 10)
    d = {"event": "create" if rec.created else "exit", "time": when.astimezone().isoformat(timespec="microseconds"),
         "pid": rec.pid, "ppid": rec.parent_pid, "image": rec.image,
         "full_image_name": bool(rec.flags & PRM_FLAG_FULL_IMAGE_NAME), "sequence": rec.sequence,
         "dropped": rec.dropped, "latency_us": (printed_at - rec.time) / 10}
    if rec.created:
        d["command_line"] = rec.command_line
    else:
        d["exit_status"] = rec.exit_status
    return d


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]} | {0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r"}


def one_line(text: str) -> str:
    """Control characters (a command line may hold newlines) escaped, so a record stays one line."""
    return text.translate(_CONTROL)


def format_line(rec: ProcessRecord) -> str:
    when = (EPOCH_1601 + datetime.timedelta(microseconds=rec.time // 10)).astimezone()
    head = f"{when:%H:%M:%S}.{when.microsecond // 1000:03d}  "
    if rec.created:
        return (f"{head}start  pid {rec.pid:>7}  ppid {rec.parent_pid:>7}  {one_line(rec.image) or '?'}  "
                f"{one_line(rec.command_line)}").rstrip()
    return (f"{head}exit   pid {rec.pid:>7}  ppid {rec.parent_pid:>7}  {one_line(rec.image) or '?'}  "
            f"(status {rec.exit_status})")


class Printer:
    """Prints records and counts them; `done` once `count` were printed."""

    def __init__(self, count: int | None, as_json: bool, out=None, want=None):
        self.count = count
        self.as_json = as_json
        self.out = out if out is not None else sys.stdout
        self.want = want          # a predicate: print only the records it accepts
        self.printed = 0

    @property
    def done(self) -> bool:
        return self.count is not None and self.printed >= self.count

    def show(self, data) -> None:
        rec = parse_record(data)
        if self.want is not None and not self.want(rec):
            return
        if rec.dropped and not self.as_json:
            print(f"  ... {rec.dropped} earlier events lost: the driver's queue for this handle was full",
                  file=self.out)
        if self.as_json:
            line = json.dumps(as_dict(rec, system_time_now()))
        else:
            line = format_line(rec)
        print(line, file=self.out, flush=True)
        self.printed += 1


def open_device(overlapped: bool):
    flags = win32con.FILE_ATTRIBUTE_SYSTEM | (win32file.FILE_FLAG_OVERLAPPED if overlapped else 0)
    return win32file.CreateFile(DOS_NAME, win32con.GENERIC_READ | win32con.GENERIC_WRITE, 0, None,
                                win32con.OPEN_EXISTING, flags, None)


def monitor_with_event(hDevice, printer: Printer, ready=None) -> None:
    """The seed's loop, with its one flaw fixed: after each wake it drains the
    queue.  (The seed fetched one record per wake and then called ResetEvent,
    losing any record whose KeSetEvent fell between its GETINFO and its
    ResetEvent; with an auto-reset event the reset is not needed at all.)"""
    m_hEvent = win32event.CreateEvent(None, False, False, None)
    try:
        win32file.DeviceIoControl(hDevice, IOCTL_STARTHOOK, pack_handle(m_hEvent), None)
        if ready is not None:
            ready()
        while not printer.done:
            win32event.WaitForSingleObject(m_hEvent, win32event.INFINITE)
            while not printer.done:
                try:
                    data = win32file.DeviceIoControl(hDevice, IOCTL_GETINFO, None, PRM_MAX_RECORD)
                except pywintypes.error as e:
                    if e.winerror == winerror.ERROR_NO_MORE_ITEMS:
                        break
                    raise
                printer.show(data)
    finally:
        m_hEvent.Close()


def monitor_inverted(hDevice, printer: Printer, ready=None, outstanding: int = OUTSTANDING) -> None:
    """Keep `outstanding` WAITINFO requests pending; the driver completes them
    oldest first, so the oldest is always the one to wait for.  Each request
    keeps its OVERLAPPED (and event) and buffer, and is sent again as soon as
    its record is printed."""
    slots = []
    pending = []      # posted and not yet collected, oldest first
    try:
        for _ in range(outstanding):
            ov = pywintypes.OVERLAPPED()
            ov.hEvent = win32event.CreateEvent(None, True, False, None)
            slots.append((ov, win32file.AllocateReadBuffer(PRM_MAX_RECORD)))
        for ov, buf in slots:
            win32file.DeviceIoControl(hDevice, IOCTL_WAITINFO, None, buf, ov)
            pending.append((ov, buf))
        if ready is not None:
            ready()
        while not printer.done:
            ov, buf = pending[0]
            n = win32file.GetOverlappedResult(hDevice, ov, True)
            pending.pop(0)
            printer.show(bytes(buf[:n]))
            win32file.DeviceIoControl(hDevice, IOCTL_WAITINFO, None, buf, ov)
            pending.append((ov, buf))
    finally:
        if pending:
            try:
                win32file.CancelIo(hDevice)
            except pywintypes.error:
                pass
        for ov, _ in pending:
            try:
                win32file.GetOverlappedResult(hDevice, ov, True)
            except pywintypes.error as e:
                if e.winerror != winerror.ERROR_OPERATION_ABORTED:
                    raise
        for ov, _ in slots:
            ov.hEvent.Close()


def start() -> None:
    """A kernel (the running one, else an embedded one) with the driver loaded."""
    client.ensure_kernel()
    client.ensure_driver(SERVICE_NAME, DRIVER_MODULE)


def run(count: int | None, mode: str, as_json: bool, out=None, ready=None) -> int:
    start()
    try:
        hDevice = open_device(overlapped=mode == "inverted")
    except pywintypes.error as e:
        print(f"Failed to obtain device with error code: {e.winerror} ({e.strerror})", file=sys.stderr)
        return 1
    printer = Printer(count, as_json, out)

    def announce():
        print(f"monitoring process creation and exit ({mode} mode); Ctrl-C to stop", file=sys.stderr, flush=True)
        if ready is not None:
            ready()

    try:
        if mode == "event":
            monitor_with_event(hDevice, printer, announce)
        else:
            monitor_inverted(hDevice, printer, announce)
    except pywintypes.error as e:
        print(f"{e.funcname} failed with error code: {e.winerror} ({e.strerror})", file=sys.stderr)
        if e.winerror in (winerror.ERROR_ACCESS_DENIED, winerror.ERROR_NOT_SUPPORTED):
            print("the kernel cannot use the Linux process-events connector here; see `ringzero dbgview` "
                  "for why (it needs the initial user and pid namespaces, and root on kernels before 6.x)",
                  file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        hDevice.Close()
    return 0


def demo(console, processes=(["/bin/true"], ["/bin/echo", "hello from a child"], ["/bin/sleep", "0.2"])) -> bool:
    """For `ringzero demo`: in each mode, start monitoring, start a few
    processes, and show the driver reporting each one's start and exit (the
    machine's other processes are left out).  Raises when one was missed."""
    start()
    intro = {
        "event": "CreateEvent, then DeviceIoControl(IOCTL_STARTHOOK, its handle): the driver references "
                 "our event; on each wake, IOCTL_GETINFO until ERROR_NO_MORE_ITEMS",
        "inverted": f"{OUTSTANDING} overlapped IOCTL_WAITINFO requests pending in the driver; each completes "
                    "carrying one record and is sent again",
    }
    for mode in ("event", "inverted"):
        hDevice = open_device(overlapped=mode == "inverted")
        try:
            mine: set[int] = set()
            seen: dict[int, set] = {}
            lines: list[str] = []

            class _Lines:
                def write(self, s):
                    if s.strip():
                        lines.append(s.rstrip("\n"))

                def flush(self):
                    pass

            def want(rec, mine=mine, seen=seen):
                if rec.pid not in mine:
                    return False
                seen.setdefault(rec.pid, set()).add("create" if rec.created else "exit")
                return True

            def spawn_them(mine=mine):
                for argv in processes:
                    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
                    mine.add(p.pid)
                    p.wait()
                console.print(f"  started {', '.join(' '.join(a) for a in processes)}; the driver reports:")

            console.print(f"PRMonitor, {mode} mode: {intro[mode]}")
            try:
                if mode == "event":
                    monitor_with_event(hDevice, Printer(2 * len(processes), False, _Lines(), want), spawn_them)
                else:
                    monitor_inverted(hDevice, Printer(2 * len(processes), False, _Lines(), want), spawn_them)
            except pywintypes.error as e:
                raise RuntimeError(f"{e.funcname}: {e.strerror} (error {e.winerror}); the kernel cannot use the "
                                   "Linux process-events connector here, see `ringzero dbgview`") from None
            for line in lines:
                console.print("    " + line, markup=False, highlight=False)
            missed = [pid for pid in mine if seen.get(pid) != {"create", "exit"}]
            if missed:
                raise RuntimeError(f"processes {missed} were not reported both started and exited")
        finally:
            hDevice.Close()
    return True


@click.command(name="prmonitor")
@click.option("--count", type=int, default=None, help="Stop after this many lines (default: run until Ctrl-C).")
@click.option("--mode", type=click.Choice(["event", "inverted"]), default="event", show_default=True,
              help="event: the seed's STARTHOOK event + GETINFO; inverted: pending WAITINFO requests.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, for scripts.")
def cli(count, mode, as_json) -> None:
    """Print a line for every process started or exited on this machine (the PRMonitor seed)."""
    sys.exit(run(count, mode, as_json))


if __name__ == "__main__":
    cli()
