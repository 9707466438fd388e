"""Dispatcher objects in-process: NT's wait semantics, exactly."""

import threading
import time

import pytest

from ringzero.kernel.ke import dispatcher as ke
from ringzero.nt import status as st

TIMEOUT_0 = 0
SHORT = -200_000   # 20 ms, relative, in 100 ns units


def waiter(objs, wait_all=False, seconds=10):
    out = []
    t = threading.Thread(target=lambda: out.append(ke.wait(objs, wait_all, seconds)))
    t.start()
    return t, out


def settle(t_list):
    for t in t_list:
        t.join(10)


def test_notification_event_releases_every_waiter_and_stays_set():
    ev = ke.KEVENT(ke.NotificationEvent, False)
    ts = [waiter([ev]) for _ in range(5)]
    time.sleep(0.05)
    ke.KeSetEvent(ev)
    settle([t for t, _ in ts])
    assert [o for _, o in ts] == [[st.STATUS_WAIT_0]] * 5
    assert ke.KeReadStateEvent(ev) == 1
    assert ke.KeWaitForSingleObject(ev, Timeout=TIMEOUT_0) == st.STATUS_WAIT_0


def test_synchronization_event_releases_exactly_one_waiter_per_set():
    ev = ke.KEVENT(ke.SynchronizationEvent, False)
    ts = [waiter([ev], seconds=1.0) for _ in range(3)]
    time.sleep(0.05)
    ke.KeSetEvent(ev)
    settle([t for t, _ in ts])
    results = sorted(o[0] for _, o in ts)
    assert results == [st.STATUS_WAIT_0, st.STATUS_TIMEOUT, st.STATUS_TIMEOUT]
    assert ke.KeReadStateEvent(ev) == 0


def test_pulse_wakes_current_waiters_and_leaves_event_clear():
    ev = ke.KEVENT(ke.NotificationEvent, False)
    ts = [waiter([ev]) for _ in range(2)]
    time.sleep(0.05)
    ke.KePulseEvent(ev)
    settle([t for t, _ in ts])
    assert [o for _, o in ts] == [[st.STATUS_WAIT_0]] * 2
    assert ke.KeReadStateEvent(ev) == 0
    assert ke.KeWaitForSingleObject(ev, Timeout=TIMEOUT_0) == st.STATUS_TIMEOUT


def test_timeouts_relative_and_zero():
    ev = ke.KEVENT(ke.NotificationEvent, False)
    assert ke.KeWaitForSingleObject(ev, Timeout=TIMEOUT_0) == st.STATUS_TIMEOUT
    assert ke.KeWaitForSingleObject(ev, Timeout=SHORT) == st.STATUS_TIMEOUT
    ke.KeSetEvent(ev)
    assert ke.KeWaitForSingleObject(ev, Timeout=SHORT) == st.STATUS_WAIT_0


def test_wait_any_reports_the_index_and_wait_all_needs_all():
    a, b = ke.KEVENT(ke.SynchronizationEvent), ke.KEVENT(ke.SynchronizationEvent)
    ke.KeSetEvent(b)
    assert ke.KeWaitForMultipleObjects(2, [a, b], ke.WaitAny, Timeout=TIMEOUT_0) == st.STATUS_WAIT_0 + 1
    ke.KeSetEvent(a)
    assert ke.KeWaitForMultipleObjects(2, [a, b], ke.WaitAll, Timeout=TIMEOUT_0) == st.STATUS_TIMEOUT
    assert ke.KeReadStateEvent(a) == 1   # a failed WaitAll consumes nothing
    t, out = waiter([a, b], wait_all=True)
    time.sleep(0.05)
    ke.KeSetEvent(b)
    settle([t])
    assert out == [st.STATUS_WAIT_0]
    assert ke.KeReadStateEvent(a) == ke.KeReadStateEvent(b) == 0


def test_mutex_is_owned_and_recursive():
    m = ke.KMUTEX()
    assert ke.KeWaitForMutexObject(m, Timeout=TIMEOUT_0) == st.STATUS_WAIT_0
    assert ke.KeWaitForMutexObject(m, Timeout=TIMEOUT_0) == st.STATUS_WAIT_0   # recursive
    t, out = waiter([m], seconds=0.1)
    settle([t])
    assert out == [st.STATUS_TIMEOUT]
    ke.KeReleaseMutex(m)
    t, out = waiter([m], seconds=0.1)
    settle([t])
    assert out == [st.STATUS_TIMEOUT]   # still owned once
    ke.KeReleaseMutex(m)
    t, out = waiter([m], seconds=5)
    settle([t])
    assert out == [st.STATUS_WAIT_0]


def test_an_abandoned_mutex_is_reported_to_its_next_owner_once():
    m = ke.KMUTEX()
    t = threading.Thread(target=lambda: ke.KeWaitForMutexObject(m, Timeout=TIMEOUT_0))
    t.start()
    t.join(10)
    ke.release_owned_mutexes(t.ident, [m])        # its owner went away holding it
    assert ke.KeWaitForMutexObject(m, Timeout=TIMEOUT_0) == st.STATUS_ABANDONED_WAIT_0
    assert m.OwnerThread == threading.get_ident()
    assert ke.KeWaitForMutexObject(m, Timeout=TIMEOUT_0) == st.STATUS_WAIT_0   # recursive, no longer abandoned
    ke.KeReleaseMutex(m)
    ke.KeReleaseMutex(m)
    assert ke.KeReadStateMutex(m) == 1
    t, out = waiter([m], seconds=5)                  # the general path agrees
    settle([t])
    assert out == [st.STATUS_WAIT_0]


def test_releasing_a_mutex_not_owned_is_a_named_error():
    m = ke.KMUTEX()
    with pytest.raises(ke.MutexNotOwned, match="THREAD_NOT_MUTEX_OWNER"):
        ke.KeReleaseMutex(m)


def test_semaphore_counts_and_limit():
    s = ke.KSEMAPHORE(0, 2)
    ke.KeReleaseSemaphore(s, 0, 2)
    with pytest.raises(ke.SemaphoreLimitExceeded):
        ke.KeReleaseSemaphore(s, 0, 1)
    assert ke.KeWaitForSingleObject(s, Timeout=TIMEOUT_0) == st.STATUS_WAIT_0
    assert ke.KeWaitForSingleObject(s, Timeout=TIMEOUT_0) == st.STATUS_WAIT_0
    assert ke.KeWaitForSingleObject(s, Timeout=TIMEOUT_0) == st.STATUS_TIMEOUT


def test_alert_ends_a_wait():
    ev = ke.KEVENT()
    out = []
    ident = []

    def run():
        ident.append(threading.get_ident())
        out.append(ke.wait([ev], False, None))

    t = threading.Thread(target=run)
    t.start()
    while not ke.alert_thread(ident[0] if ident else 0):
        time.sleep(0.01)
    t.join(10)
    assert out == [st.STATUS_ALERTED]
