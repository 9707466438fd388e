"""Access control across real users: the same opens, IOCTLs and named events
tried by root (an administrator), by `nobody` and by `daemon`, each a real
process whose identity the kernel takes from the socket."""

import json
import os
import sys

import pytest

from conftest import TEST_DRIVERS

SECURED = os.path.join(TEST_DRIVERS, "secured.py")
GR, GW, GA = 0x80000000, 0x40000000, 0x10000000
OK, DENIED, BUSY = 0, 5, 5   # ERROR_ACCESS_DENIED for a refused check and for a second open of an exclusive device

# a program that tries each attempt and prints what Windows would tell it
PROBE = f"""
import json, sys
sys.path.insert(0, {TEST_DRIVERS!r})
from ringzero.win32 import win32file, win32event, win32con, pywintypes
import secured as S
def attempt(fn):
    try:
        r = fn()
        return 0
    except pywintypes.error as e:
        return e.winerror
def open_(name, access):
    return win32file.CreateFile("\\\\\\\\.\\\\" + name, access, 0, None, win32con.OPEN_EXISTING, 0, None)
out = {{}}
for name, access in ATTEMPTS:
    out[f"{{name}}:{{access:#x}}"] = attempt(lambda: open_(name, access).Close())
h = open_("SecShared", {GR})
for label, code in (("any", S.IOCTL_ANY), ("read", S.IOCTL_READ), ("write", S.IOCTL_WRITE)):
    out["ioctl-r:" + label] = attempt(lambda: win32file.DeviceIoControl(h, code, None, 0))
h.Close()
h = open_("SecShared", {GW})
for label, code in (("any", S.IOCTL_ANY), ("read", S.IOCTL_READ), ("write", S.IOCTL_WRITE)):
    out["ioctl-w:" + label] = attempt(lambda: win32file.DeviceIoControl(h, code, None, 0))
h.Close()
out["event"] = attempt(lambda: win32event.OpenEvent(win32event.EVENT_ALL_ACCESS, False, "RzRootsEvent"))
out["event-sync"] = attempt(lambda: win32event.OpenEvent(win32event.SYNCHRONIZE, False, "RzRootsEvent"))
print(json.dumps(out))
"""

ATTEMPTS = [
    ("SecShared", GR | GW), ("SecShared", GA),
    ("SecRead", GR), ("SecRead", GR | GW),
    ("SecUser", GR | GW),
    ("SecOpen", GR), ("SecOpen\\anything", GR),
    ("SecLoose", GR), ("SecLoose\\anything", GR),
]

# what each identity gets, attempt by attempt
EXPECTED = {
    "root": {"SecShared:0xc0000000": OK, "SecShared:0x10000000": OK, "SecRead:0x80000000": OK,
             "SecRead:0xc0000000": OK, "SecUser:0xc0000000": OK, "SecOpen:0x80000000": OK,
             "SecOpen\\anything:0x80000000": OK, "SecLoose:0x80000000": OK, "SecLoose\\anything:0x80000000": OK},
    "nobody": {"SecShared:0xc0000000": OK, "SecShared:0x10000000": DENIED, "SecRead:0x80000000": OK,
               "SecRead:0xc0000000": DENIED, "SecUser:0xc0000000": OK, "SecOpen:0x80000000": DENIED,
               "SecOpen\\anything:0x80000000": DENIED, "SecLoose:0x80000000": DENIED,
               "SecLoose\\anything:0x80000000": OK},
    "daemon": {"SecShared:0xc0000000": OK, "SecShared:0x10000000": DENIED, "SecRead:0x80000000": OK,
               "SecRead:0xc0000000": DENIED, "SecUser:0xc0000000": DENIED, "SecOpen:0x80000000": DENIED,
               "SecOpen\\anything:0x80000000": DENIED, "SecLoose:0x80000000": DENIED,
               "SecLoose\\anything:0x80000000": OK},
}
# the IOCTL access bits are checked against the handle, whoever holds it
IOCTLS = {"ioctl-r:any": OK, "ioctl-r:read": OK, "ioctl-r:write": DENIED,
          "ioctl-w:any": OK, "ioctl-w:read": DENIED, "ioctl-w:write": OK}


@pytest.fixture
def secured(kernel):
    from ringzero.win32 import win32event
    kernel.load(SECURED, "Secured")
    # a named event created by root: its creator's security, so no other user opens it
    ev = win32event.CreateEvent(None, True, False, "RzRootsEvent")
    yield kernel
    ev.Close()


@pytest.mark.parametrize("user", ["root", "nobody", "daemon"])
def test_each_access_rule_allows_the_allowed_and_refuses_the_rest(secured, user):
    code = f"ATTEMPTS = {ATTEMPTS!r}\n" + PROBE
    r = secured.run(code, user=None if user == "root" else user)
    got = json.loads(r.stdout)
    want = dict(EXPECTED[user], **IOCTLS)
    want["event"] = want["event-sync"] = OK if user == "root" else DENIED
    assert got == want


def test_an_exclusive_device_allows_one_open_at_a_time(secured):
    from ringzero.win32 import pywintypes, win32con, win32file

    def open_excl():
        return win32file.CreateFile(r"\\.\SecExcl", GR, 0, None, win32con.OPEN_EXISTING, 0, None)
    h = open_excl()
    with pytest.raises(pywintypes.error) as e:
        open_excl()
    assert e.value.winerror == BUSY
    # nor from another program, even of another user
    r = secured.run(f"""
        import sys
        from ringzero.win32 import win32file, win32con, pywintypes
        try:
            win32file.CreateFile(r"\\\\.\\SecExcl", {GR}, 0, None, win32con.OPEN_EXISTING, 0, None)
            print("opened")
        except pywintypes.error as e:
            print(e.winerror)
    """, user="nobody")
    assert r.stdout.strip() == str(BUSY)
    h.Close()
    open_excl().Close()


def test_the_kernel_socket_is_reachable_by_everyone_and_its_directory_not_writable(kernel):
    import stat
    st_sock = os.stat(kernel.socket)
    assert stat.S_ISSOCK(st_sock.st_mode) and stat.S_IMODE(st_sock.st_mode) == 0o666
    # identity comes from SO_PEERCRED, not from the socket's mode: nobody is nobody
    r = kernel.run("""
        from ringzero import client
        print(client.connection().call("kernel.info")["caller"])
    """, user="nobody")
    caller = eval(r.stdout)
    assert caller["uid"] == 65534 and caller["admin"] is False


def test_the_debug_log_is_an_administrators_to_read(kernel):
    r = kernel.run("""
        from ringzero import client
        for method in ("dbg.recent", "dbg.subscribe"):
            try:
                client.connection().call(method)
                print(method, "read")
            except client.CallFailed as e:
                print(method, hex(e.status))
    """, user="nobody")
    assert r.stdout.split() == ["dbg.recent", "0xc0000022", "dbg.subscribe", "0xc0000022"]
    from ringzero import client
    assert isinstance(client.connection().call("dbg.recent", count=1), list)     # root's


def _start_kernel_in(directory, tmp_path):
    import subprocess
    from conftest import SRC
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-m", "ringzero.kernel", "--socket", os.path.join(directory, "k.sock"),
                           "--state", str(tmp_path / "state"), "--quiet"], env=env, capture_output=True, text=True,
                          timeout=60)


def test_the_kernel_refuses_a_socket_directory_others_could_write_or_own(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    r = _start_kernel_in(str(open_dir), tmp_path)
    assert r.returncode == 1 and "writable by other users (mode 777)" in r.stderr
    assert not (open_dir / "k.sock").exists()
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        r = _start_kernel_in(str(theirs), tmp_path)
        assert r.returncode == 1 and "belongs to uid 65534" in r.stderr
