"""Virtual to physical translation through /proc/<pid>/pagemap."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from conftest import NOBODY, unprivileged_python
from ringzero.kernel.mm import pagemap
from ringzero.kernel.mm.pagemap import (
    pfns_visible,
    physical_address,
    physical_addresses,
)

PAGE = os.sysconf("SC_PAGE_SIZE")
SRC = Path(pagemap.__file__).resolve().parents[3]
HIDDEN = ("frame numbers are hidden: the kernel must run as root (CAP_SYS_ADMIN) "
          "to translate virtual to physical addresses")

needs_pfns = pytest.mark.skipif(
    not pfns_visible(),
    reason="page frame numbers are hidden from this process: it needs CAP_SYS_ADMIN "
           "in the initial user namespace (root outside a user-namespaced container)")


def raw_entry(vaddr: int) -> int:
    with open("/proc/self/pagemap", "rb") as file:
        file.seek((vaddr // PAGE) * 8)
        return int.from_bytes(file.read(8), sys.byteorder)


def address_of(region: mmap.mmap, offset: int = 0) -> int:
    anchor = ctypes.c_char.from_buffer(region)
    try:
        return ctypes.addressof(anchor) + offset
    finally:
        del anchor


def anonymous(pages: int) -> mmap.mmap:
    region = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        region.madvise(mmap.MADV_NOHUGEPAGE)
    return region


def test_pfns_visible_agrees_with_the_raw_page_map() -> None:
    region = anonymous(1)
    try:
        region[0] = 1
        entry = raw_entry(address_of(region))
        assert entry >> 63 == 1
        assert pfns_visible() == bool(entry & ((1 << 55) - 1))
    finally:
        region.close()


@needs_pfns
def test_touched_page_translates_with_its_offset() -> None:
    region = anonymous(1)
    try:
        region[123] = 0x5A
        vaddr = address_of(region, 123)
        physical = physical_address(os.getpid(), vaddr)
        entry = raw_entry(vaddr)
        assert physical != 0
        assert physical % PAGE == 123
        assert entry >> 63 == 1
        assert physical == (entry & ((1 << 55) - 1)) * PAGE + 123
    finally:
        region.close()


@needs_pfns
def test_untouched_page_reports_zero() -> None:
    region = anonymous(3)
    try:
        vaddrs = [address_of(region, i * PAGE) for i in range(3)]
        assert physical_addresses(os.getpid(), vaddrs) == [0, 0, 0]
        assert all(raw_entry(vaddr) >> 63 == 0 for vaddr in vaddrs)
    finally:
        region.close()


@needs_pfns
def test_batch_matches_single_lookups() -> None:
    region = anonymous(4)
    try:
        for page in (0, 2, 3):
            region[page * PAGE + page] = 1
        vaddrs = [address_of(region, page * PAGE + 7) for page in range(4)]
        batch = physical_addresses(os.getpid(), vaddrs)
        assert batch == [physical_address(os.getpid(), vaddr) for vaddr in vaddrs]
        assert batch[1] == 0
        assert all(batch[page] != 0 for page in (0, 2, 3))
        assert len({batch[page] // PAGE for page in (0, 2, 3)}) == 3
    finally:
        region.close()


@pytest.mark.parametrize("vaddr", [-1, -PAGE, 1 << 47, (1 << 47) + 5, 1 << 63, 0])
def test_addresses_outside_user_mappings_are_zero(vaddr: int) -> None:
    assert physical_address(os.getpid(), vaddr) == 0


def test_last_user_page_is_zero() -> None:
    assert physical_addresses(os.getpid(), [(1 << 47) - 1, (1 << 47) - PAGE]) == [0, 0]


def test_exited_process_is_not_found() -> None:
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    with pytest.raises(ProcessLookupError):
        physical_address(child.pid, 0x400000)


def test_zombie_has_no_address_space() -> None:
    child = subprocess.Popen(["/bin/true"])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(f"/proc/{child.pid}/stat", "rb") as file:
                if file.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    break
            time.sleep(0.01)
        with pytest.raises(ProcessLookupError):
            physical_address(child.pid, 0x400000)
    finally:
        child.wait()


CHILD = """
import ctypes, mmap, os, sys
from ringzero.kernel.mm.pagemap import physical_address
region = mmap.mmap(-1, {page}, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
region[77] = 0x5A
anchor = ctypes.c_char.from_buffer(region)
vaddr = ctypes.addressof(anchor) + 77
print(vaddr, physical_address(os.getpid(), vaddr), flush=True)
sys.stdin.read()
"""


@needs_pfns
def test_child_page_read_by_pid_matches_the_childs_own_answer() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(page=PAGE)], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line, "the child exited before reporting its page"
        vaddr, own_answer = map(int, line.split())
        assert own_answer != 0 and own_answer % PAGE == 77
        assert physical_address(child.pid, vaddr) == own_answer
        assert physical_addresses(child.pid, [vaddr, vaddr - 77]) == [own_answer, own_answer - 77]
    finally:
        child.stdin.close()
        child.wait(timeout=60)
        child.stdout.close()



def test_unprivileged_process_is_told_frame_numbers_are_hidden() -> None:
    """As nobody, a touched page of one's own raises; an untouched one is still 0."""
    python = unprivileged_python()
    code = textwrap.dedent("""
        import ctypes, json, mmap, os, sys
        import rz_pagemap as p
        page = os.sysconf("SC_PAGE_SIZE")
        region = mmap.mmap(-1, 2 * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        region[5] = 1
        anchor = ctypes.c_char.from_buffer(region)
        touched = ctypes.addressof(anchor) + 5
        untouched = touched - 5 + page
        with open("/proc/self/pagemap", "rb") as file:
            file.seek((touched // page) * 8)
            entry = int.from_bytes(file.read(8), sys.byteorder)
        result = {"uid": os.geteuid(), "present": entry >> 63, "pfn": entry & ((1 << 55) - 1),
                  "visible": p.pfns_visible(), "untouched": p.physical_address(os.getpid(), untouched)}
        try:
            result["touched"] = p.physical_address(os.getpid(), touched)
        except p.PhysicalAddressUnavailable as exc:
            result["touched_error"] = str(exc)
            result["is_permission_error"] = isinstance(exc, PermissionError)
        try:
            p.physical_address(int(sys.argv[1]), 0x400000)
        except p.PhysicalAddressUnavailable as exc:
            result["root_process_error"] = str(exc)
        print(json.dumps(result))
        """)
    workdir = tempfile.mkdtemp(prefix="ringzero-nobody-")
    try:
        os.chmod(workdir, 0o755)
        shutil.copyfile(pagemap.__file__, Path(workdir, "rz_pagemap.py"))
        os.chmod(Path(workdir, "rz_pagemap.py"), 0o644)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": workdir, "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python,
             "-c", code, str(os.getpid())],
            capture_output=True, text=True, env=env, cwd=workdir, timeout=60)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["uid"] == NOBODY
    assert (result["present"], result["pfn"]) == (1, 0)
    assert result["visible"] is False
    assert result["untouched"] == 0
    assert result.get("touched_error") == HIDDEN
    assert result["is_permission_error"] is True
    assert "root_process_error" in result
