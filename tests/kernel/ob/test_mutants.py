"""Mutexes as programs use them (NtCreateMutant & co.), across real programs:
owned by a thread, recursive, released only by their owner, and abandoned when
the owning thread or its program ends."""

import os
import subprocess
import threading
import uuid

import pytest

from conftest import wait_until
from ringzero.win32 import pywintypes, win32api, win32event, winerror


def _name() -> str:
    return f"RzTestMutex-{uuid.uuid4().hex[:8]}"


def test_the_owner_takes_it_again_and_only_the_owner_releases_it(kernel):
    m = win32event.CreateMutex(None, True, None)
    assert win32event.WaitForSingleObject(m, 0) == win32event.WAIT_OBJECT_0     # owned twice now
    win32event.ReleaseMutex(m)
    win32event.ReleaseMutex(m)
    with pytest.raises(pywintypes.error) as e:
        win32event.ReleaseMutex(m)                     # free: nobody owns it
    assert (e.value.winerror, e.value.funcname) == (winerror.ERROR_NOT_OWNER, "ReleaseMutex")

    taken, go = threading.Event(), threading.Event()
    results = {}

    def other():
        results["wait"] = win32event.WaitForSingleObject(m, 10_000)
        taken.set()
        go.wait(10)
        win32event.ReleaseMutex(m)
    t = threading.Thread(target=other)
    t.start()
    assert taken.wait(10)
    assert win32event.WaitForSingleObject(m, 0) == win32event.WAIT_TIMEOUT      # the other thread owns it
    with pytest.raises(pywintypes.error) as e:
        win32event.ReleaseMutex(m)
    assert e.value.winerror == winerror.ERROR_NOT_OWNER
    go.set()
    t.join()
    assert results["wait"] == win32event.WAIT_OBJECT_0
    assert win32event.WaitForSingleObject(m, 10_000) == win32event.WAIT_OBJECT_0
    win32event.ReleaseMutex(m)
    m.Close()


def test_a_named_mutex_is_shared_and_its_second_creator_does_not_own_it(kernel):
    name = _name()
    m = win32event.CreateMutex(None, True, name)
    assert win32api.GetLastError() == 0
    r = kernel.run(f"""
        from ringzero.win32 import win32api, win32event, winerror
        m = win32event.CreateMutex(None, True, "{name}")
        print(win32api.GetLastError() == winerror.ERROR_ALREADY_EXISTS)
        print(win32event.WaitForSingleObject(m, 0))       # the first creator still owns it
        o = win32event.OpenMutex(win32event.SYNCHRONIZE, False, "{name}")
        print(win32event.WaitForSingleObject(o, 0))
    """)
    assert r.stdout.split() == ["True", str(win32event.WAIT_TIMEOUT), str(win32event.WAIT_TIMEOUT)]
    win32event.ReleaseMutex(m)
    with pytest.raises(pywintypes.error) as e:
        win32event.OpenEvent(win32event.SYNCHRONIZE, False, name)    # a mutex is not an event
    assert e.value.winerror == winerror.ERROR_INVALID_HANDLE
    m.Close()
    with pytest.raises(pywintypes.error) as e:
        win32event.OpenMutex(win32event.SYNCHRONIZE, False, name)    # gone with its last handle
    assert e.value.winerror == winerror.ERROR_FILE_NOT_FOUND


def test_a_program_that_dies_owning_a_mutex_abandons_it(kernel):
    name = _name()
    m = win32event.CreateMutex(None, False, name)
    owner = kernel.spawn(f"""
        import sys
        from ringzero.win32 import win32event
        m = win32event.OpenMutex(win32event.SYNCHRONIZE, False, "{name}")
        print(win32event.WaitForSingleObject(m, 10_000), flush=True)
        sys.stdin.read()
    """, stdin=subprocess.PIPE)
    assert owner.stdout.readline().strip() == str(win32event.WAIT_OBJECT_0)
    assert win32event.WaitForSingleObject(m, 0) == win32event.WAIT_TIMEOUT
    owner.kill()
    owner.wait()
    assert win32event.WaitForSingleObject(m, 30_000) == win32event.WAIT_ABANDONED   # and this thread owns it now
    assert win32event.WaitForSingleObject(m, 0) == win32event.WAIT_OBJECT_0         # (abandoned only once)
    win32event.ReleaseMutex(m)
    win32event.ReleaseMutex(m)
    m.Close()


def test_a_thread_that_ends_owning_a_mutex_abandons_it(kernel):
    m = win32event.CreateMutex(None, False, None)
    t = threading.Thread(target=lambda: win32event.WaitForSingleObject(m, 10_000))
    t.start()
    t.join()
    assert wait_until(lambda: win32event.WaitForSingleObject(m, 0) == win32event.WAIT_ABANDONED, timeout=30)
    win32event.ReleaseMutex(m)
    m.Close()


def _listed(kernel, name: str) -> dict:
    return next(d for d in kernel.call("obj.list", path="\\BaseNamedObjects")["children"] if d["name"] == name)


def test_obj_shows_who_owns_a_named_mutex(kernel):
    name = _name()
    m = win32event.CreateMutex(None, True, name)
    row = _listed(kernel, name)
    assert (row["type"], row["owner"], row["depth"]) == ("Mutant", {"pid": os.getpid(),
                                                                   "tid": threading.get_native_id()}, 1)
    win32event.ReleaseMutex(m)
    assert _listed(kernel, name)["owner"] is None
    m.Close()
