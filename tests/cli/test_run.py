"""`ringzero run`: a program written for Windows runs with its pywin32 imports unchanged."""

import os
import subprocess
import sys
import textwrap

from conftest import SRC

# as it would be written for Windows: pywin32's module names, nothing of ringzero's but the last check
WINDOWS_PROGRAM = textwrap.dedent(r"""
    import subprocess, sys
    import pywintypes, win32con, win32file, winerror, winioctlcon

    IOCTL_ECHO = winioctlcon.CTL_CODE(winioctlcon.FILE_DEVICE_UNKNOWN, 0x800, winioctlcon.METHOD_BUFFERED,
                                      winioctlcon.FILE_ANY_ACCESS)
    h = win32file.CreateFile(r"\\.\Echo", win32con.GENERIC_READ | win32con.GENERIC_WRITE, 0, None,
                             win32con.OPEN_EXISTING, 0, None)
    print("echo", bytes(win32file.DeviceIoControl(h, IOCTL_ECHO, b"hello", 16)))
    try:
        win32file.DeviceIoControl(h, 0x00229999, None, 0)
    except pywintypes.error as e:
        print("error", e.winerror == winerror.ERROR_INVALID_FUNCTION, e.funcname)
    h.Close()
    # a Python program it starts imports them too, and reaches the same kernel
    child = subprocess.run([sys.executable, "-c", "import win32file, win32con; "
                            "win32file.CreateFile(r'\\\\.\\Echo', win32con.GENERIC_READ, 0, None, "
                            "win32con.OPEN_EXISTING, 0, None).Close(); print('child ok')"],
                           capture_output=True, text=True)
    print(child.stdout.strip() or child.stderr)
    import ringzero.win32.win32file
    print("same module", win32file is ringzero.win32.win32file)
""")


def ringzero_run(tmp_path, *args, cwd=None):
    env = dict(os.environ, PYTHONPATH=SRC, RINGZERO_SOCKET=str(tmp_path / "no-kernel.sock"))
    env.pop("RINGZERO_STATE", None)
    return subprocess.run([sys.executable, "-m", "ringzero.cli.main", "run", *args], cwd=cwd or tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_windows_program_runs_unchanged_against_an_embedded_kernel(tmp_path):
    (tmp_path / "client.py").write_text(WINDOWS_PROGRAM)
    r = ringzero_run(tmp_path, "--load", "ringzero.drivers.echo", "client.py")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["echo b'hello'", "error True DeviceIoControl", "child ok", "same module True"]
    assert "no kernel was running; started one" in r.stderr
    assert "loaded ringzero.drivers.echo as echo" in r.stderr


def test_a_driver_file_and_a_module_with_its_arguments(tmp_path):
    (tmp_path / "drv").mkdir()
    (tmp_path / "drv" / "Echo2.py").write_text((open(os.path.join(SRC, "ringzero", "drivers", "echo.py")).read()
                                                .replace(r"\Device\Echo", r"\Device\Echo2")
                                                .replace(r"\??\Echo", r"\??\Echo2")))
    (tmp_path / "prog.py").write_text(textwrap.dedent(r"""
        import sys, win32con, win32file
        win32file.CreateFile(r"\\.\Echo2", win32con.GENERIC_READ, 0, None, win32con.OPEN_EXISTING, 0, None).Close()
        print(sys.argv[1:])
    """))
    r = ringzero_run(tmp_path, "--load", "drv/Echo2.py", "-m", "prog", "--flag", "x")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['--flag', 'x']"
    assert f"loaded {tmp_path / 'drv' / 'Echo2.py'} as Echo2" in r.stderr


def test_the_exit_status_is_the_programs(tmp_path):
    (tmp_path / "seven.py").write_text("import sys, win32file\nsys.exit(7)\n")
    assert ringzero_run(tmp_path, "seven.py").returncode == 7
    (tmp_path / "killed.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    r = ringzero_run(tmp_path, "killed.py")
    assert r.returncode == 128 + 9
    assert "killed by SIGKILL" in r.stderr


def test_clear_errors(tmp_path):
    r = ringzero_run(tmp_path)
    assert r.returncode == 2 and "name a SCRIPT to run" in r.stderr
    r = ringzero_run(tmp_path, "--load", "missing.py", "prog.py")
    assert r.returncode == 1 and "no driver file missing.py" in r.stderr
    r = ringzero_run(tmp_path, "--load", "ringzero.drivers.nosuchdriver", "prog.py")
    assert r.returncode == 1 and "loading ringzero.drivers.nosuchdriver failed" in r.stderr


def test_sigterm_reaches_the_program(tmp_path):
    (tmp_path / "waits.py").write_text(textwrap.dedent("""
        import signal, sys, time, win32file
        signal.signal(signal.SIGTERM, lambda *_: (print("program got SIGTERM", flush=True), sys.exit(5)))
        print("ready", flush=True)
        time.sleep(60)
    """))
    env = dict(os.environ, PYTHONPATH=SRC, RINGZERO_SOCKET=str(tmp_path / "no-kernel.sock"))
    p = subprocess.Popen([sys.executable, "-m", "ringzero.cli.main", "run", "waits.py"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.terminate()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert out.strip() == "program got SIGTERM", err
    assert p.returncode == 5, err


def test_verbose_prints_the_debug_log_of_the_kernel_started_for_it(tmp_path):
    (tmp_path / "hello.py").write_text(textwrap.dedent("""
        from ringzero.ddk import *

        def DriverEntry(DriverObject, RegistryPath):
            DbgPrint("hello driver: DriverEntry ran")
            return STATUS_SUCCESS
    """))
    (tmp_path / "nothing.py").write_text("import win32file\n")
    r = ringzero_run(tmp_path, "-v", "--load", "hello.py", "nothing.py")
    assert r.returncode == 0, r.stderr
    assert "hello driver: DriverEntry ran" in r.stderr
    r = ringzero_run(tmp_path, "--load", "hello.py", "nothing.py")
    assert r.returncode == 0, r.stderr
    assert "DriverEntry ran" not in r.stderr


def test_an_embedded_kernel_leaves_no_directory_behind(tmp_path):
    """Its socket and state live in a directory of its own, gone when it stops:
    after the program that started it exits, and after one killed with -9."""
    from conftest import wait_until
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    (tmp_path / "prog.py").write_text("import os, win32file\nprint(os.path.dirname(os.environ['RINGZERO_SOCKET']))\n")
    env = dict(os.environ, TMPDIR=str(scratch))
    r = subprocess.run([sys.executable, "-m", "ringzero.cli.main", "run", "prog.py"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env=dict(env, PYTHONPATH=SRC, RINGZERO_SOCKET=str(tmp_path / "none.sock")))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(scratch / "ringzero-embedded-"))
    assert list(scratch.iterdir()) == []
    killed = subprocess.run([sys.executable, "-c", "import os, signal\n"
                             "from ringzero import client\n"
                             "print(client.start_embedded_kernel(), flush=True)\n"
                             "os.kill(os.getpid(), signal.SIGKILL)\n"],
                            capture_output=True, text=True, timeout=60, env=dict(env, PYTHONPATH=SRC))
    assert killed.returncode == -9
    assert killed.stdout.strip().startswith(str(scratch / "ringzero-embedded-"))
    assert wait_until(lambda: list(scratch.iterdir()) == [], timeout=20), list(scratch.iterdir())
