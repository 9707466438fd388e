"""win32api's calls that need no kernel: they answer as pywin32's do, with real values."""

from ringzero.win32 import win32api


def test_get_tick_count_is_the_time_since_boot_in_milliseconds():
    with open("/proc/uptime") as f:
        uptime_ms = float(f.read().split()[0]) * 1000
    assert abs(win32api.GetTickCount() - (int(uptime_ms) & 0xFFFFFFFF)) < 5000


def test_sleep_returns_zero_as_an_unalerted_sleep_does():
    assert win32api.Sleep(1) == 0
    assert win32api.Sleep(0, True) == 0
