"""Process facts from /proc, for live, zombie, exited and kernel processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringzero.kernel.ps import procinfo

NOBODY = 65534
PF_KTHREAD = 0x00200000


def wait_until(condition: Callable[[], bool], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def process_state(pid: int) -> bytes:
    with open(f"/proc/{pid}/stat", "rb") as file:
        return file.read().rsplit(b")", 1)[1].split()[0]


def uptime_ticks() -> float:
    with open("/proc/uptime") as file:
        return float(file.read().split()[0]) * os.sysconf("SC_CLK_TCK")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    sleep = shutil.which("sleep")
    if sleep is None:
        pytest.skip("no sleep executable on PATH")
    child = subprocess.Popen([sleep, "30"])
    try:
        wait_until(lambda: procinfo.command_line(child.pid).endswith(" 30"))
        yield child
    finally:
        child.kill()
        child.wait()


def test_sleep_process(sleeper: subprocess.Popen) -> None:
    binary = os.path.realpath(shutil.which("sleep"))
    assert procinfo.image_path(sleeper.pid) == binary
    assert procinfo.image_file_name(sleeper.pid) == os.path.basename(binary)
    assert procinfo.command_line(sleeper.pid) == f"{shutil.which('sleep')} 30"
    assert procinfo.parent_pid(sleeper.pid) == os.getpid()
    assert procinfo.credentials(sleeper.pid) == (os.getuid(), os.getgid())


def test_start_time_identifies_the_process(sleeper: subprocess.Popen) -> None:
    started = procinfo.start_time(sleeper.pid)
    assert isinstance(started, int)
    assert started == procinfo.start_time(sleeper.pid)
    assert started >= procinfo.start_time(os.getpid())
    assert started <= uptime_ticks() + os.sysconf("SC_CLK_TCK")


def test_start_time_is_the_spawn_moment() -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    before = uptime_ticks()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    after = uptime_ticks()
    try:
        started = procinfo.start_time(child.pid)
        assert started is not None
        assert before - ticks <= started <= after + ticks
    finally:
        child.kill()
        child.wait()


def test_credentials_of_another_user() -> None:
    if os.geteuid() != 0:
        pytest.skip("starting a process as another user needs root")
    sleep = shutil.which("sleep")
    if sleep is None:
        pytest.skip("no sleep executable on PATH")
    child = subprocess.Popen([sleep, "30"], user=NOBODY, group=NOBODY, extra_groups=[], cwd="/")
    try:
        wait_until(lambda: procinfo.credentials(child.pid) == (NOBODY, NOBODY))
        assert procinfo.credentials(child.pid) == (NOBODY, NOBODY)
    finally:
        child.kill()
        child.wait()


def test_comm_with_spaces_and_parentheses() -> None:
    code = ("import sys, time\n"
            "open('/proc/self/comm', 'w').write(') (x) y ')\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        with open(f"/proc/{child.pid}/comm") as file:
            assert file.read() == ") (x) y \n"
        assert procinfo.parent_pid(child.pid) == os.getpid()
        assert procinfo.start_time(child.pid) >= procinfo.start_time(os.getpid())
        assert procinfo.image_file_name(child.pid) == os.path.basename(os.path.realpath(sys.executable))
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


def test_command_line_quotes_arguments() -> None:
    args = ["-c", "import time; time.sleep(30)", "two words", "", 'say "hi"', "back\\slash",
            "trailing\\ ", "plain"]
    child = subprocess.Popen([sys.executable, *args])
    try:
        wait_until(lambda: "plain" in procinfo.command_line(child.pid))
        assert procinfo.command_line(child.pid) == (
            f'{sys.executable} -c "import time; time.sleep(30)" "two words" "" '
            r'"say \"hi\"" back\slash "trailing\ " plain')
    finally:
        child.kill()
        child.wait()


def command_line_to_argv(line: str) -> list[str]:
    """Windows' CommandLineToArgvW splitting rules for arguments after the first."""
    args: list[str] = []
    current: list[str] = []
    in_quotes = False
    have_arg = False
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\":
            run = 0
            while i < len(line) and line[i] == "\\":
                run += 1
                i += 1
            if i < len(line) and line[i] == '"':
                current.append("\\" * (run // 2))
                if run % 2:
                    current.append('"')
                    i += 1
            else:
                current.append("\\" * run)
            have_arg = True
            continue
        if ch == '"':
            in_quotes = not in_quotes
            have_arg = True
        elif ch in " \t" and not in_quotes:
            if have_arg:
                args.append("".join(current))
                current, have_arg = [], False
        else:
            current.append(ch)
            have_arg = True
        i += 1
    if have_arg:
        args.append("".join(current))
    return args


@given(st.lists(st.text(alphabet=st.sampled_from('ab \t\\"'), max_size=8), min_size=1, max_size=5))
def test_quoting_splits_back_into_the_same_arguments(args: list[str]) -> None:
    line = " ".join(procinfo._quote(arg) for arg in args)
    assert command_line_to_argv(line) == args


def test_zombie_keeps_its_stat_but_not_its_image() -> None:
    child = subprocess.Popen(["/bin/true"])
    try:
        wait_until(lambda: process_state(child.pid) == b"Z")
        assert process_state(child.pid) == b"Z"
        assert procinfo.image_path(child.pid) is None
        assert procinfo.command_line(child.pid) == ""
        assert procinfo.image_file_name(child.pid) == "true"
        assert procinfo.parent_pid(child.pid) == os.getpid()
        assert isinstance(procinfo.start_time(child.pid), int)
        assert procinfo.credentials(child.pid) == (os.getuid(), os.getgid())
    finally:
        child.wait()


def test_exited_process() -> None:
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    gone = child.pid
    assert procinfo.image_path(gone) is None
    assert procinfo.image_file_name(gone) == ""
    assert procinfo.command_line(gone) == ""
    assert procinfo.parent_pid(gone) is None
    assert procinfo.start_time(gone) is None
    assert procinfo.credentials(gone) is None


@pytest.mark.parametrize("pid", [0, -1, 2**22 + 1])
def test_pids_that_never_exist(pid: int) -> None:
    assert procinfo.image_path(pid) is None
    assert procinfo.parent_pid(pid) is None
    assert procinfo.start_time(pid) is None
    assert procinfo.credentials(pid) is None
    assert procinfo.command_line(pid) == ""


def find_kernel_thread() -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                fields = file.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[6]) & PF_KTHREAD:
            return int(entry)
    return None


def test_kernel_thread_is_named_by_comm() -> None:
    pid = find_kernel_thread()
    if pid is None:
        pytest.skip("no kernel threads are visible in this pid namespace")
    with open(f"/proc/{pid}/comm") as file:
        comm = file.read().rstrip("\n")
    assert procinfo.image_path(pid) is None
    assert procinfo.image_file_name(pid) == comm
    assert procinfo.command_line(pid) == ""
