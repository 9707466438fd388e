"""Copies to and from a program's memory (process_vm_readv / writev), and the
check that the process behind a connected program's pid is still the one that
connected."""

import ctypes
import os
import subprocess
import sys

import pytest

from ringzero.kernel.mm import user


def _pidfds() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
        return True
    except OSError:
        return False


needs_pidfds = pytest.mark.skipif(not _pidfds(), reason="this Linux has no pidfd_open (5.3 and later have it)")


def test_copies_reach_this_process_and_bad_addresses_are_access_violations():
    here = ctypes.create_string_buffer(b"0123456789", 10)
    pid = os.getpid()
    assert user.read_process(pid, ctypes.addressof(here), 10) == b"0123456789"
    user.write_process(pid, ctypes.addressof(here) + 2, b"ab")
    dest = bytearray(4)
    user.read_into(pid, ctypes.addressof(here), dest)
    assert dest == b"01ab"
    user.write_from(pid, ctypes.addressof(here), memoryview(bytearray(b"XY")))
    assert here.raw == b"XYab456789"
    for address in (0x10, 1 << 62):
        with pytest.raises(user.AccessViolation):
            user.read_process(pid, address, 4)


@needs_pidfds
def test_a_pid_whose_program_has_exited_is_not_read_or_written():
    """What a pid reused after a program's death looks like to the kernel: the
    pid it watches names a live process, but not the one that connected."""
    here = ctypes.create_string_buffer(b"secret", 6)
    me = os.getpid()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_fd = os.pidfd_open(gone.pid)
    gone.wait()
    user._watched[me] = [gone_fd, 1]          # as if `me` were the pid the dead program had
    try:
        with pytest.raises(user.AccessViolation, match="exited"):
            user.read_process(me, ctypes.addressof(here), 6)
        with pytest.raises(user.AccessViolation, match="exited"):
            user.write_from(me, ctypes.addressof(here), memoryview(bytearray(b"stolen")))
        assert here.raw == b"secret"
    finally:
        user.unwatch_process(me)
    assert me not in user._watched
    assert user.read_process(me, ctypes.addressof(here), 6) == b"secret"     # unwatched: no check


@needs_pidfds
def test_watching_counts_connections_of_one_pid():
    me = os.getpid()
    user.watch_process(me)
    user.watch_process(me)
    fd = user._watched[me][0]
    user.unwatch_process(me)
    assert user._watched[me] == [fd, 1]
    here = ctypes.create_string_buffer(b"alive", 5)
    assert user.read_process(me, ctypes.addressof(here), 5) == b"alive"      # the watched process lives
    user.unwatch_process(me)
    assert me not in user._watched
