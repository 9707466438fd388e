"""The process-events connector: wire parsing, and the real kernel feed."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import NOBODY, unprivileged_python
from ringzero.kernel.ps import connector
from ringzero.kernel.ps.connector import (
    ConnectorUnavailable,
    ProcEvent,
    ProcessEventSource,
    parse_messages,
)

NLMSG_DONE = 3
NLMSG_NOOP = 1
NLMSG_OVERRUN = 4
UNION_SIZE = 24


def netlink(payload: bytes, msg_type: int = NLMSG_DONE, seq: int = 0) -> bytes:
    length = 16 + len(payload)
    message = struct.pack("=IHHII", length, msg_type, 0, seq, 0) + payload
    return message + b"\0" * (-length % 4)


def cn_msg(body: bytes, idx: int = 1, val: int = 1, seq: int = 0, ack: int = 0) -> bytes:
    return struct.pack("=IIIIHH", idx, val, seq, ack, len(body), 0) + body


def proc_event(what: int, data: bytes, cpu: int = 1, timestamp_ns: int = 123_456_789) -> bytes:
    return struct.pack("=IIQ", what, cpu, timestamp_ns) + data.ljust(UNION_SIZE, b"\0")


def event_message(what: int, data: bytes, **kwargs: int) -> bytes:
    return netlink(cn_msg(proc_event(what, data, **kwargs)))


def fork_message(parent_tid: int, parent_pid: int, child_tid: int, child_pid: int, **kw: int) -> bytes:
    return event_message(0x1, struct.pack("=iiii", parent_tid, parent_pid, child_tid, child_pid), **kw)


def exec_message(tid: int, pid: int, **kw: int) -> bytes:
    return event_message(0x2, struct.pack("=ii", tid, pid), **kw)


def exit_message(tid: int, pid: int, code: int, signal: int, parent_tid: int, parent_pid: int,
                 **kw: int) -> bytes:
    return event_message(0x80000000, struct.pack("=iiIiii", tid, pid, code, signal,
                                                 parent_tid, parent_pid), **kw)


class TestParseMessages:
    def test_fork(self) -> None:
        [event] = parse_messages(fork_message(100, 100, 200, 200, cpu=3, timestamp_ns=42))
        assert event == ProcEvent("fork", pid=200, tid=200, parent_pid=100, parent_tid=100,
                                  timestamp_ns=42, cpu=3)
        assert not event.is_thread

    def test_fork_of_a_thread(self) -> None:
        [event] = parse_messages(fork_message(100, 100, 201, 100))
        assert (event.kind, event.pid, event.tid, event.parent_pid) == ("fork", 100, 201, 100)
        assert event.is_thread

    def test_exec(self) -> None:
        [event] = parse_messages(exec_message(300, 300, cpu=0, timestamp_ns=7))
        assert event == ProcEvent("exec", pid=300, tid=300, timestamp_ns=7, cpu=0)

    def test_exit_with_status(self) -> None:
        [event] = parse_messages(exit_message(400, 400, 3 << 8, 17, 1, 1))
        assert event == ProcEvent("exit", pid=400, tid=400, parent_pid=1, parent_tid=1,
                                  exit_code=0x300, exit_signal=17, timestamp_ns=123_456_789,
                                  cpu=1)
        assert event.returncode == 3
        assert not event.is_thread

    def test_exit_killed_by_signal(self) -> None:
        [event] = parse_messages(exit_message(400, 400, 9, 17, 1, 1))
        assert event.returncode == -9

    def test_exit_of_a_thread(self) -> None:
        [event] = parse_messages(exit_message(401, 400, 0, -1, 1, 1))
        assert (event.pid, event.tid, event.exit_signal) == (400, 401, -1)
        assert event.is_thread

    def test_exit_from_a_kernel_without_parent_fields(self) -> None:
        body = struct.pack("=IIQ", 0x80000000, 0, 5) + struct.pack("=iiIi", 9, 9, 0, 17)
        [event] = parse_messages(netlink(cn_msg(body)))
        assert (event.kind, event.pid, event.parent_pid, event.exit_signal) == ("exit", 9, 0, 17)

    def test_other_event_kinds(self) -> None:
        data = b"".join([
            event_message(0x4, struct.pack("=iiII", 11, 10, 1000, 0)),
            event_message(0x40, struct.pack("=iiII", 11, 10, 100, 101)),
            event_message(0x80, struct.pack("=ii", 10, 10)),
            event_message(0x100, struct.pack("=iiii", 11, 10, 21, 20)),
            event_message(0x200, struct.pack("=ii", 11, 10) + b"a) (b c\0junk\0\0\0\0\0\0\0\0"),
            event_message(0x40000000, struct.pack("=iiii", 10, 10, 5, 5)),
        ])
        uid, gid, sid, ptrace, comm, coredump = parse_messages(data)
        assert (uid.kind, uid.pid, uid.tid, uid.real_id, uid.effective_id) == ("uid", 10, 11, 1000, 0)
        assert (gid.kind, gid.real_id, gid.effective_id) == ("gid", 100, 101)
        assert (sid.kind, sid.pid) == ("sid", 10)
        assert (ptrace.kind, ptrace.tracer_pid, ptrace.tracer_tid) == ("ptrace", 20, 21)
        assert (comm.kind, comm.comm) == ("comm", "a) (b c")
        assert (coredump.kind, coredump.parent_pid) == ("coredump", 5)

    def test_several_messages_in_one_datagram(self) -> None:
        odd_noop = netlink(b"xyz", msg_type=NLMSG_NOOP)
        assert len(odd_noop) % 4 == 0 and len(odd_noop) > 16 + 3
        data = fork_message(1, 1, 50, 50) + odd_noop + exec_message(50, 50) + exit_message(
            50, 50, 0, 17, 1, 1)
        assert [(e.kind, e.pid) for e in parse_messages(data)] == [
            ("fork", 50), ("exec", 50), ("exit", 50)]

    def test_acknowledgements_are_not_events(self) -> None:
        ack = netlink(cn_msg(proc_event(0, struct.pack("=I", 0)), ack=8))
        assert parse_messages(ack + exec_message(5, 5)) == [ProcEvent("exec", pid=5, tid=5,
                                                                       timestamp_ns=123_456_789,
                                                                       cpu=1)]

    def test_overrun_message(self) -> None:
        assert [e.kind for e in parse_messages(netlink(b"", msg_type=NLMSG_OVERRUN))] == ["overrun"]

    def test_other_connector_channels_are_ignored(self) -> None:
        body = proc_event(0x2, struct.pack("=ii", 5, 5))
        assert parse_messages(netlink(cn_msg(body, idx=2))) == []
        assert parse_messages(netlink(cn_msg(body, val=2))) == []

    def test_unknown_event_kind_is_skipped(self) -> None:
        assert parse_messages(event_message(0x8, b"") + exec_message(5, 5))[0].kind == "exec"

    def test_every_truncation_keeps_only_whole_messages(self) -> None:
        messages = [fork_message(1, 1, 60, 60), exec_message(60, 60), exit_message(60, 60, 0, 17, 1, 1)]
        data = b"".join(messages)
        ends = [sum(len(m) for m in messages[:i + 1]) for i in range(len(messages))]
        for cut in range(len(data) + 1):
            complete = sum(1 for end in ends if end <= cut)
            assert len(parse_messages(data[:cut])) == complete, cut

    def test_connector_length_beyond_the_message(self) -> None:
        body = proc_event(0x2, struct.pack("=ii", 5, 5))
        header = struct.pack("=IIIIHH", 1, 1, 0, 0, len(body) + 100, 0)
        assert parse_messages(netlink(header + body)) == []

    def test_event_data_too_short_for_its_kind(self) -> None:
        short = struct.pack("=IIQ", 0x1, 0, 0) + struct.pack("=ii", 1, 1)
        assert parse_messages(netlink(cn_msg(short))) == []

    def test_netlink_length_smaller_than_its_header(self) -> None:
        assert parse_messages(struct.pack("=IHHII", 8, NLMSG_DONE, 0, 0, 0) + b"\0" * 64) == []

    def test_accepts_bytearray_and_memoryview(self) -> None:
        data = exec_message(5, 5)
        assert parse_messages(bytearray(data)) == parse_messages(memoryview(data)) == parse_messages(data)

    @settings(max_examples=500)
    @given(st.binary(max_size=512))
    def test_arbitrary_bytes_never_raise(self, data: bytes) -> None:
        events = parse_messages(data)
        assert all(isinstance(e, ProcEvent) for e in events)

    @settings(max_examples=300)
    @given(st.integers(0, 0xFFFFFFFF), st.binary(max_size=40), st.integers(0, 64))
    def test_well_framed_garbage_never_raises(self, what: int, body: bytes, declared: int) -> None:
        header = struct.pack("=IIQ", what, 0, 0)
        payload = struct.pack("=IIIIHH", 1, 1, 0, 0, declared, 0) + header + body
        assert all(isinstance(e, ProcEvent) for e in parse_messages(netlink(payload)))

    @given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=4, max_size=4),
           st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
    def test_fork_fields_round_trip(self, pids: list[int], cpu: int, timestamp: int) -> None:
        [event] = parse_messages(fork_message(*pids, cpu=cpu, timestamp_ns=timestamp))
        assert (event.parent_tid, event.parent_pid, event.tid, event.pid) == tuple(pids)
        assert (event.cpu, event.timestamp_ns) == (cpu, timestamp)


def test_permission_failure_explains_what_is_needed() -> None:
    error = ConnectorUnavailable.from_os_error(
        "join the CN_IDX_PROC multicast group", PermissionError(errno.EPERM, "Operation not permitted"))
    assert isinstance(error, OSError)
    assert error.errno == errno.EPERM
    assert "the process-events connector needs root (CAP_NET_ADMIN)" in str(error)


@pytest.fixture
def source():
    try:
        events = ProcessEventSource()
    except ConnectorUnavailable as exc:
        pytest.skip(f"process-events connector unavailable here: {exc}")
    with events:
        yield events


def test_sees_fork_exec_and_exit_of_every_child(source: ProcessEventSource) -> None:
    me = os.getpid()
    children = []
    for _ in range(20):
        child = subprocess.Popen(["/bin/true"])
        child.wait()
        children.append(child.pid)
    wanted = set(children)
    forked: set[int] = set()
    execed: set[int] = set()
    exited: dict[int, ProcEvent] = {}
    overruns = 0
    deadline = time.monotonic() + 60
    while (forked != wanted or execed != wanted or set(exited) != wanted) and time.monotonic() < deadline:
        for event in source.read(timeout=1.0):
            if event.kind == "overrun":
                overruns += 1
            elif event.pid in wanted and not event.is_thread:
                if event.kind == "fork" and event.parent_pid == me:
                    forked.add(event.pid)
                elif event.kind == "exec":
                    execed.add(event.pid)
                elif event.kind == "exit":
                    exited[event.pid] = event
    assert overruns == 0, "the kernel dropped events; the receive buffer is too small"
    assert forked == wanted
    assert execed == wanted
    assert set(exited) == wanted
    for event in exited.values():
        assert event.returncode == 0
        # the kernel reads the parent after the exit is reported to it, so a
        # parent that reaps at once can leave the fields 0
        assert event.parent_pid in (me, 0)


def test_thread_creation_and_exit_are_marked_as_threads(source: ProcessEventSource) -> None:
    native: list[int] = []
    worker = threading.Thread(target=lambda: native.append(threading.get_native_id()))
    worker.start()
    worker.join()
    [tid] = native
    seen: dict[str, ProcEvent] = {}
    deadline = time.monotonic() + 30
    while len(seen) < 2 and time.monotonic() < deadline:
        for event in source.read(timeout=1.0):
            if event.tid == tid and event.kind in ("fork", "exit"):
                seen[event.kind] = event
    assert set(seen) == {"fork", "exit"}
    assert seen["fork"].pid == os.getpid() and seen["fork"].is_thread
    assert seen["exit"].pid == os.getpid() and seen["exit"].is_thread
    assert seen["exit"].exit_signal == -1


def test_source_lifecycle(source: ProcessEventSource) -> None:
    assert source.fileno() >= 0
    assert isinstance(source.read(timeout=0), list)
    source.close()
    source.close()
    assert source.closed
    with pytest.raises(ValueError):
        source.read(timeout=0)
    with pytest.raises(ValueError):
        source.fileno()



def run_as_nobody(module_file: str, module_name: str, code: str) -> dict:
    """Run ``code`` as uid/gid 65534 with the module under test importable as module_name.

    The module is copied into a world-readable directory, since the source
    tree and this interpreter may live where the nobody user cannot read.
    """
    python = unprivileged_python()
    workdir = tempfile.mkdtemp(prefix="ringzero-nobody-")
    try:
        os.chmod(workdir, 0o755)
        shutil.copyfile(module_file, Path(workdir, f"{module_name}.py"))
        os.chmod(Path(workdir, f"{module_name}.py"), 0o644)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": workdir, "PYTHONDONTWRITEBYTECODE": "1",
               "LANG": "C.UTF-8"}
        done = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python,
             "-c", textwrap.dedent(code)],
            capture_output=True, text=True, env=env, cwd=workdir, timeout=60)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_unprivileged_process_gets_a_clear_answer() -> None:
    result = run_as_nobody(connector.__file__, "rz_connector", """
        import json, os, socket, subprocess, time
        import rz_connector as c
        result = {"uid": os.getuid(), "euid": os.geteuid()}
        raw = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, c.NETLINK_CONNECTOR)
        try:
            raw.bind((0, c.CN_IDX_PROC))
            result["raw_bind_errno"] = 0
        except OSError as exc:
            result["raw_bind_errno"] = exc.errno
        finally:
            raw.close()
        try:
            source = c.ProcessEventSource()
        except c.ConnectorUnavailable as exc:
            result.update(outcome="unavailable", message=str(exc), errno=exc.errno)
        else:
            with source:
                child = subprocess.Popen(["/bin/true"])
                child.wait()
                kinds = set()
                deadline = time.monotonic() + 30
                while len(kinds) < 3 and time.monotonic() < deadline:
                    kinds |= {e.kind for e in source.read(1.0) if e.pid == child.pid}
            result.update(outcome="opened", kinds=sorted(kinds))
        print(json.dumps(result))
        """)
    assert (result["uid"], result["euid"]) == (NOBODY, NOBODY)
    if result["raw_bind_errno"] == errno.EPERM:
        assert result["outcome"] == "unavailable"
        assert result["errno"] == errno.EPERM
        assert "the process-events connector needs root (CAP_NET_ADMIN)" in result["message"]
    else:
        assert result["raw_bind_errno"] == 0, os.strerror(result["raw_bind_errno"])
        assert result["outcome"] == "opened", (
            "this kernel lets unprivileged processes join CN_IDX_PROC, so the source must open")
        assert result["kinds"] == ["exec", "exit", "fork"]


def test_kernel_dropping_events_is_reported_as_overrun() -> None:
    try:
        events = ProcessEventSource(receive_buffer=1)
    except ConnectorUnavailable as exc:
        pytest.skip(f"process-events connector unavailable here: {exc}")
    with events:
        for _ in range(40):
            subprocess.run(["/bin/true"], check=True)
        kinds: list[str] = []
        deadline = time.monotonic() + 30
        while "overrun" not in kinds and time.monotonic() < deadline:
            kinds.extend(event.kind for event in events.read(timeout=1.0))
        assert "overrun" in kinds
        while events.read(timeout=0):
            pass
        child = subprocess.Popen(["/bin/true"])
        child.wait()
        forked = False
        deadline = time.monotonic() + 30
        while not forked and time.monotonic() < deadline:
            forked = any(event.kind == "fork" and event.pid == child.pid
                         for event in events.read(timeout=1.0))
        assert forked, "no events arrived after the overrun"
