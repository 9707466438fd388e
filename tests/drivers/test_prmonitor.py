"""PRMonitor across real processes: the seed's event model and the inverted
call, the sample program, the seed's defects (bad handles, short buffers,
references), per-handle bounded queues, cancel and program death, unload."""

from __future__ import annotations

import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time

import pytest

from conftest import wait_until
from ringzero.drivers import prmonitor_ioctl as P
from ringzero.nt import status as st
from ringzero.win32 import pywintypes, win32con, win32event, win32file, winerror

SPAWNED = 200


def open_dev(overlapped: bool = False):
    flags = win32file.FILE_FLAG_OVERLAPPED if overlapped else 0
    return win32file.CreateFile(P.DOS_NAME, win32con.GENERIC_READ | win32con.GENERIC_WRITE, 0, None,
                                win32con.OPEN_EXISTING, flags, None)


def getinfo(h, size: int = P.PRM_MAX_RECORD):
    return win32file.DeviceIoControl(h, P.IOCTL_GETINFO, None, size)


def drain(h) -> list[P.ProcessRecord]:
    out = []
    while True:
        try:
            out.append(P.parse_record(getinfo(h)))
        except pywintypes.error as e:
            assert e.winerror == winerror.ERROR_NO_MORE_ITEMS, e
            return out


def spawn_true(n: int, pause: float = 0.0) -> list[int]:
    pids = []
    for _ in range(n):
        p = subprocess.Popen(["/bin/true"])
        p.wait()
        pids.append(p.pid)
        if pause:
            time.sleep(pause)
    return pids


def kdprint_statuses(kernel) -> list[int]:
    """The statuses PRMonitor's STARTHOOK logged, oldest first."""
    out = []
    for r in kernel.call("dbg.recent", count=4000):
        if r["source"] == "PRMonitor" and r["text"].startswith("PRMonitor: STARTHOOK handle"):
            out.append(int(r["text"].split(": ")[2].split(",")[0], 16))
    return out


@pytest.fixture
def prm(kernel):
    kernel.load(P.DRIVER_MODULE, P.SERVICE_NAME)
    return kernel


class Monitor:
    """The sample program, run as its own process with --json; its lines are
    collected by a thread."""

    def __init__(self, kernel, mode: str, outstanding: int | None = None):
        if outstanding is None:
            cmd = [sys.executable, "-m", "ringzero.samples.prmonitor", "--mode", mode, "--json"]
        else:       # the sample's inverted loop with more requests pending
            cmd = [sys.executable, "-c", f"""if True:
                import sys
                from ringzero.samples import prmonitor as m
                h = m.open_device(overlapped=True)
                ready = lambda: print("monitoring process creation", file=sys.stderr, flush=True)
                m.monitor_inverted(h, m.Printer(None, True), ready, outstanding={outstanding})"""]
        self.proc = subprocess.Popen(cmd, env=kernel.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        banner = self.proc.stderr.readline()
        assert "monitoring process creation" in banner, banner + self.proc.stderr.read()
        self.lines: queue.Queue = queue.Queue()
        self.records: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def collect_until(self, predicate, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            try:
                self.records.append(self.lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                return False
        return True

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.stderr.read()


@pytest.mark.parametrize("mode", ["event", "inverted"])
def test_every_short_lived_process_is_reported_created_and_exited(prm, mode, capsys):
    """Each of 200 /bin/true processes is reported created and exited.  A
    monitor starved of CPU for long (a loaded machine) can fall more than
    PRM_QUEUE_DEPTH records behind; then the driver drops the oldest and says
    so: every gap in the records' Sequence is their Dropped count, and every
    event of ours that did not arrive is among those counted."""
    mon = Monitor(prm, mode)
    try:
        order = spawn_true(SPAWNED)
        pids, last = set(order), order[-1]
        seen: dict[int, set] = {}
        counted = [0]

        def all_arrived():
            for rec in mon.records[counted[0]:]:
                seen.setdefault(rec["pid"], set()).add(rec["event"])
            counted[0] = len(mon.records)
            # (records come in order: once the last exit is here, all the others came or were dropped)
            return all(seen.get(pid) == {"create", "exit"} for pid in pids) or "exit" in seen.get(last, ())

        assert mon.collect_until(all_arrived), f"the last process's exit never came: {len(mon.records)} records"
    finally:
        err = mon.stop()
    assert "Traceback" not in err, err
    for prev, rec in zip(mon.records, mon.records[1:]):
        assert rec["sequence"] - prev["sequence"] - 1 == rec["dropped"], (prev, rec)   # nothing lost uncounted
    dropped = sum(r["dropped"] for r in mon.records)
    missing = sum(2 - len(seen.get(pid, ())) for pid in pids)
    assert missing <= dropped, f"{missing} events of ours missing, {dropped} counted as dropped"
    mine = [r for r in mon.records if r["pid"] in pids]
    creates = [r for r in mine if r["event"] == "create"]
    exits = [r for r in mine if r["event"] == "exit"]
    assert len(creates) + len(exits) == 2 * SPAWNED - missing       # none reported twice
    assert len(creates) <= SPAWNED and len(exits) <= SPAWNED
    if dropped:
        with capsys.disabled():
            print(f"\nPRMonitor {mode} mode: the monitor fell behind (a loaded machine); the driver dropped "
                  f"{dropped} records and said so, {missing} of them ours")
    assert all(r["ppid"] == os.getpid() for r in mine)
    assert all(r["exit_status"] == 0 for r in exits)
    # the name is the full path when the kernel read it before /bin/true was gone,
    # else the task name, or nothing once it had been reaped; never another program's
    for r in creates:
        assert r["image"] in (os.path.realpath("/bin/true"), "true", ""), r
        assert r["full_image_name"] == (r["image"] == os.path.realpath("/bin/true")), r
        assert r["command_line"] in ("/bin/true", ""), r
    latencies = sorted(r["latency_us"] for r in creates)
    with capsys.disabled():
        print(f"\nPRMonitor {mode} mode, fork -> program's print, {len(creates)} /bin/true: "
              f"p50 {statistics.median(latencies) / 1000:.2f} ms, "
              f"p99 {latencies[int(0.99 * (len(latencies) - 1))] / 1000:.2f} ms, "
              f"max {latencies[-1] / 1000:.2f} ms; full image names read for "
              f"{sum(r['full_image_name'] for r in creates)} of {len(creates)}")


def test_starthook_accepts_only_an_event_handle_of_the_caller_with_modify_access(prm):
    h = open_dev()
    cases = []
    # not an event: the device's own file handle
    cases.append((int(h), st.STATUS_OBJECT_TYPE_MISMATCH, winerror.ERROR_INVALID_HANDLE))
    # a closed handle
    ev = win32event.CreateEvent(None, False, False, None)
    closed = int(ev)
    ev.Close()
    cases.append((closed, st.STATUS_INVALID_HANDLE, winerror.ERROR_INVALID_HANDLE))
    # a number that is no handle of ours
    cases.append((0x7FFFF0, st.STATUS_INVALID_HANDLE, winerror.ERROR_INVALID_HANDLE))
    # an event opened without EVENT_MODIFY_STATE (the seed's KernelMode would have taken it)
    named = win32event.CreateEvent(None, False, False, "prm-test-sync-only")
    sync_only = win32event.OpenEvent(win32con.SYNCHRONIZE, False, "prm-test-sync-only")
    cases.append((int(sync_only), st.STATUS_ACCESS_DENIED, winerror.ERROR_ACCESS_DENIED))
    for handle, status, winerr in cases:
        with pytest.raises(pywintypes.error) as e:
            win32file.DeviceIoControl(h, P.IOCTL_STARTHOOK, P.pack_handle(handle), None)
        assert e.value.winerror == winerr, (handle, e.value)
        assert kdprint_statuses(prm)[-1] == status, (handle, hex(status))
    # the seed's size check, now honoured: a HANDLE is 8 bytes
    for short in (b"", b"\x04\x00\x00\x00"):
        with pytest.raises(pywintypes.error) as e:
            win32file.DeviceIoControl(h, P.IOCTL_STARTHOOK, short, None)
        assert e.value.winerror == winerror.ERROR_INVALID_USER_BUFFER     # STATUS_INVALID_BUFFER_SIZE
    # none of it started monitoring
    assert prm.call("ps.notify")["routines"] == []
    with pytest.raises(pywintypes.error) as e:
        getinfo(h)
    assert e.value.winerror == winerror.ERROR_BAD_COMMAND                # STATUS_INVALID_DEVICE_STATE
    named.Close()
    sync_only.Close()
    h.Close()


def test_an_event_handle_of_another_program_cannot_be_used(prm):
    other = prm.spawn("""
        import sys
        from ringzero.win32 import win32event
        hs = [win32event.CreateEvent(None, False, False, None) for _ in range(40)]
        print(int(hs[-1]), flush=True)
        sys.stdin.readline()
        # the driver never signalled it
        print(win32event.WaitForSingleObject(hs[-1], 0), flush=True)
    """, stdin=subprocess.PIPE)
    theirs = int(other.stdout.readline())
    h = open_dev()
    with pytest.raises(pywintypes.error) as e:
        win32file.DeviceIoControl(h, P.IOCTL_STARTHOOK, P.pack_handle(theirs), None)
    assert e.value.winerror == winerror.ERROR_INVALID_HANDLE
    assert kdprint_statuses(prm)[-1] == st.STATUS_INVALID_HANDLE
    # processes come and go; their event stays unset
    mine = win32event.CreateEvent(None, False, False, None)
    win32file.DeviceIoControl(h, P.IOCTL_STARTHOOK, P.pack_handle(mine), None)
    pid = spawn_true(1)[0]
    assert win32event.WaitForSingleObject(mine, 20_000) == win32event.WAIT_OBJECT_0
    assert wait_until(lambda: any(r.pid == pid and r.exited for r in drain(h)))
    other.stdin.write("\n")
    other.stdin.flush()
    assert int(other.stdout.readline()) == win32event.WAIT_TIMEOUT
    assert other.wait(timeout=20) == 0
    h.Close()
    mine.Close()


def test_getinfo_never_writes_past_the_output_buffer(prm):
    h = open_dev()
    ev = win32event.CreateEvent(None, False, False, None)
    win32file.DeviceIoControl(h, P.IOCTL_STARTHOOK, P.pack_handle(ev), None)
    p = subprocess.Popen(["/bin/sleep", "0.2"])   # long enough for its command line to be read
    p.wait()
    target = None
    while target is None:
        assert win32event.WaitForSingleObject(ev, 20_000) == win32event.WAIT_OBJECT_0
        while target is None:
            # look at the head with a header-sized buffer: the header alone comes
            # back (ERROR_MORE_DATA) and the record stays queued
            try:
                head = getinfo(h, P.PRM_HEADER_SIZE)
            except pywintypes.error as e:
                assert e.winerror == winerror.ERROR_NO_MORE_ITEMS
                break
            size, type_, _, pid = P.parse_header(head)[:4]
            assert len(head) == P.PRM_HEADER_SIZE
            if size > P.PRM_HEADER_SIZE:
                assert pywintypes.get_last_error() == winerror.ERROR_MORE_DATA
            if pid == p.pid and type_ == P.PRM_PROCESS_CREATE:
                target = size
            else:
                assert P.parse_record(getinfo(h)).pid == pid      # consume it: it was the head
    # too small for even the header: nothing written, nothing consumed
    with pytest.raises(pywintypes.error) as e:
        getinfo(h, P.PRM_HEADER_SIZE - 1)
    assert e.value.winerror == winerror.ERROR_INSUFFICIENT_BUFFER
    # into a caller's buffer bigger than the record: exactly Size bytes, the rest untouched
    buf = bytearray(b"\xee" * (target + 100))
    out = win32file.DeviceIoControl(h, P.IOCTL_GETINFO, None, buf)
    assert len(out) == target
    assert buf[target:] == b"\xee" * 100
    rec = P.parse_record(bytes(out))
    assert (rec.pid, rec.created, rec.command_line) == (p.pid, True, "/bin/sleep 0.2")
    assert rec.image == os.path.realpath("/bin/sleep") and rec.flags & P.PRM_FLAG_FULL_IMAGE_NAME
    h.Close()
    ev.Close()


def test_cleanup_dereferences_the_event(prm):
    ev = win32event.CreateEvent(None, False, False, "prm-test-refs")

    def references():
        return prm.call("obj.list", path=r"\BaseNamedObjects\prm-test-refs")["references"]

    alone = references()
    h = open_dev()
    win32file.DeviceIoControl(h, P.IOCTL_STARTHOOK, P.pack_handle(ev), None)
    assert references() == alone + 1
    # a second STARTHOOK on the same handle replaces the event, the old one dereferenced
    ev2 = win32event.CreateEvent(None, False, False, None)
    win32file.DeviceIoControl(h, P.IOCTL_STARTHOOK, P.pack_handle(ev2), None)
    assert references() == alone
    win32file.DeviceIoControl(h, P.IOCTL_STARTHOOK, P.pack_handle(ev), None)
    assert references() == alone + 1
    h.Close()
    assert references() == alone
    assert prm.call("ps.notify")["routines"] == []
    ev.Close()
    ev2.Close()


def test_queue_policy_keeps_the_newest_and_counts_what_it_dropped():
    """The driver's queue, driven directly: 1000 records offered, none read."""
    from ringzero.drivers import prmonitor as driver
    ctx = driver.MONITOR_CONTEXT()
    done = []
    for i in range(1000):
        driver.OfferRecord(ctx, P.build_record(P.PRM_PROCESS_CREATE, 10_000 + i, 1, 0, 0, "x", ""), done)
    assert done == []
    assert len(ctx.Queue) == P.PRM_QUEUE_DEPTH
    assert ctx.Dropped == 1000 - P.PRM_QUEUE_DEPTH
    assert [seq for seq, _ in ctx.Queue] == list(range(1000 - P.PRM_QUEUE_DEPTH + 1, 1001))


def test_a_handle_that_does_not_read_loses_the_oldest_and_says_exactly_how_many(prm):
    witness = Monitor(prm, "inverted", outstanding=64)     # sees every event, in order, and must drop none
    try:
        h = open_dev()
        ev = win32event.CreateEvent(None, False, False, None)
        win32file.DeviceIoControl(h, P.IOCTL_STARTHOOK, P.pack_handle(ev), None)
        marker = spawn_true(1)[0]
        before: list[P.ProcessRecord] = []
        assert wait_until(lambda: before.extend(drain(h)) or any(r.pid == marker and r.exited for r in before),
                          timeout=20)
        last = before[-1]
        # 1000 events of ours (500 processes), and whatever else the machine does, unread;
        # paced so that the witness, which does read, keeps up
        pids = spawn_true(500, pause=0.002)
        assert witness.collect_until(lambda: any(r["pid"] == pids[-1] and r["event"] == "exit"
                                                 for r in witness.records[-50:]), timeout=120)
        after = drain(h)
    finally:
        witness.stop()
    assert not any(r["dropped"] for r in witness.records), "the witness itself dropped records"
    first = after[0]
    assert first.dropped >= 1000 - P.PRM_QUEUE_DEPTH               # bounded: most of ours were dropped
    assert first.dropped == first.sequence - last.sequence - 1     # and the count is the gap in sequence
    for prev, rec in zip(after, after[1:]):
        assert rec.sequence == prev.sequence + 1 and rec.dropped == 0
    # exact: the witness saw the same stream; our records sit at the places their sequence says
    stream = [(r["pid"], r["event"]) for r in witness.records]
    at = stream.index((last.pid, "exit" if last.exited else "create"))
    for rec in after:
        i = at + rec.sequence - last.sequence
        if i >= len(stream):
            break
        assert stream[i] == (rec.pid, "exit" if rec.exited else "create"), (rec, i)
    h.Close()
    ev.Close()


def _post(h, size=P.PRM_MAX_RECORD):
    ov = pywintypes.OVERLAPPED()
    ov.hEvent = win32event.CreateEvent(None, True, False, None)
    buf = win32file.AllocateReadBuffer(size)
    win32file.DeviceIoControl(h, P.IOCTL_WAITINFO, None, buf, ov)
    return ov, buf


def test_waitinfo_requests_pend_complete_oldest_first_and_cancel(prm):
    h = open_dev(overlapped=True)
    with pytest.raises(pywintypes.error) as e:
        win32file.DeviceIoControl(h, P.IOCTL_WAITINFO, None, P.PRM_HEADER_SIZE - 1)
    assert e.value.winerror == winerror.ERROR_INSUFFICIENT_BUFFER
    slots = [_post(h) for _ in range(4)]
    assert prm.call("ps.notify")["routines"] == [{"driver": "PRMonitor", "routine": "ProcessNotifyEx", "ex": True}]
    spawn_true(2)
    # records go to the oldest requests first: sequences rise in the order of posting
    sequences = []
    for ov, buf in slots:
        n = win32file.GetOverlappedResult(h, ov, True)
        sequences.append(P.parse_record(bytes(buf[:n])).sequence)
    assert sequences == list(range(sequences[0], sequences[0] + 4))
    # CancelIo: what is still pending completes with ERROR_OPERATION_ABORTED (what other
    # processes of the machine completed first carries a record)
    slots = [_post(h) for _ in range(3)]
    win32file.CancelIo(h)
    outcomes = []
    for ov, buf in slots:
        try:
            n = win32file.GetOverlappedResult(h, ov, True)
            P.parse_record(bytes(buf[:n]))
            outcomes.append("record")
        except pywintypes.error as e:
            assert e.winerror == winerror.ERROR_OPERATION_ABORTED
            outcomes.append("aborted")
    assert wait_until(lambda: prm.call("handles.list", pid=os.getpid())[0]["pending_irps"] == 0)
    # and the handle still works
    ov, buf = _post(h)
    spawn_true(1)
    P.parse_record(bytes(buf[:win32file.GetOverlappedResult(h, ov, True)]))
    h.Close()
    assert prm.call("ps.notify")["routines"] == []


def test_a_program_that_dies_with_requests_pending(prm):
    p = prm.spawn(f"""
        import sys
        from ringzero.win32 import pywintypes, win32con, win32event, win32file
        h = win32file.CreateFile({P.DOS_NAME!r}, win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING,
                                 win32file.FILE_FLAG_OVERLAPPED, None)
        keep = []
        for _ in range(3):
            ov = pywintypes.OVERLAPPED()
            buf = win32file.AllocateReadBuffer(256)   # too small for most records: they stay queued
            win32file.DeviceIoControl(h, {P.IOCTL_WAITINFO}, None, buf, ov)
            keep.append((ov, buf))
        print("ready", flush=True)
        sys.stdin.readline()
    """, stdin=subprocess.PIPE)
    assert p.stdout.readline().strip() == "ready"
    assert prm.call("ps.notify")["routines"] != []
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert wait_until(lambda: not prm.call("handles.list", pid=p.pid))
    assert wait_until(lambda: prm.call("ps.notify")["routines"] == [])
    faults = [r for r in prm.call("dbg.recent", count=4000) if r["level"] in ("fault", "verifier")]
    assert faults == []


def test_unload_removes_the_notify_routine(prm):
    h = open_dev()
    ev = win32event.CreateEvent(None, False, False, None)
    win32file.DeviceIoControl(h, P.IOCTL_STARTHOOK, P.pack_handle(ev), None)
    assert prm.call("ps.notify")["routines"] == [{"driver": "PRMonitor", "routine": "ProcessNotifyEx", "ex": True}]
    # NT unloads only once no handle is open: until then the driver still reports
    result = prm.call("driver.unload", service=P.SERVICE_NAME)
    assert result["deferred"] is True
    pid = spawn_true(1)[0]
    assert win32event.WaitForSingleObject(ev, 20_000) == win32event.WAIT_OBJECT_0
    assert wait_until(lambda: any(r.pid == pid for r in drain(h)))
    created_before = prm.call("ps.notify")["stats"]["created"]
    h.Close()
    # processes that ran before the close may have set the event; after it, nothing may
    win32event.ResetEvent(ev)
    assert wait_until(lambda: P.SERVICE_NAME not in prm.call("kernel.info")["drivers"])
    assert prm.call("ps.notify")["routines"] == []
    # no routine left, no callbacks: the process manager creates nothing for anyone
    spawn_true(5)
    time.sleep(0.2)
    assert prm.call("ps.notify")["stats"]["created"] == created_before
    log = [r for r in prm.call("dbg.recent", count=4000) if r["source"] == "PRMonitor"]
    assert not any(r["level"] in ("leak", "fault") for r in log), log
    assert win32event.WaitForSingleObject(ev, 0) == win32event.WAIT_TIMEOUT
    ev.Close()


def test_the_demo_scene_reports_its_own_processes(prm):
    r = prm.run("""
        from ringzero.samples import prmonitor
        class Console:
            def print(self, text, **style):
                print(text, flush=True)
        assert prmonitor.demo(Console())
    """, timeout=120)
    assert "PRMonitor, event mode" in r.stdout and "PRMonitor, inverted mode" in r.stdout
    assert r.stdout.count("start  pid") == 6 and r.stdout.count("exit   pid") == 6
