"""VirToPhys: the seed's control program (001), step by step.

It registers and starts the VirtToPhys driver through the service control
manager (OpenSCManager, CreateService, StartService: DriverEntry runs), opens
\\\\.\\slVirtToPhys, sends the base addresses of its own executable and of the
three shared libraries most like kernel32/user32/comctl32 (libc, the dynamic
loader, libpython or libm) with DeviceIoControl(IOCTL_GET_PHYS_ADDRESS), prints
the seed's "Modules BASE Physical" table, then closes the device, stops the
driver (DriverUnload runs) and deletes the service.  Each failure gets the
seed's message.  Physical addresses need a kernel running as root; otherwise
the program says so and exits non-zero.
"""

from __future__ import annotations

import json
import os
import struct
import sys

import click

from ringzero import client
from ringzero.win32 import pywintypes, win32file, win32service
from ringzero.win32.win32con import (DELETE, GENERIC_READ, GENERIC_WRITE, OPEN_EXISTING, SC_MANAGER_ALL_ACCESS,
                                     SERVICE_CONTROL_STOP, SERVICE_DEMAND_START, SERVICE_ERROR_IGNORE,
                                     SERVICE_KERNEL_DRIVER, SERVICE_START, SERVICE_STOP)
from ringzero.win32.winerror import ERROR_PRIVILEGE_NOT_HELD

PROG = "virttophys"
SERVICE = "VirtToPhys"
DISPLAY_NAME = "Virtual To Physical Address Converter"
DEVICE = "\\\\.\\slVirtToPhys"
ENTRY = struct.Struct("<Q")
NOT_ROOT = ("The kernel cannot read physical frame numbers: Linux shows them only to root "
            "(CAP_SYS_ADMIN). Run the ringzero kernel as root (e.g. `sudo ringzero kernel`) "
            "to translate addresses; no physical address was made up.")


def _ioctl_code() -> int:
    from ringzero.drivers.virttophys import IOCTL_GET_PHYS_ADDRESS
    return IOCTL_GET_PHYS_ADDRESS


def driver_path() -> str:
    """GetFullPathName('VirtToPhys.sys'): the driver's file, absolute."""
    from ringzero.drivers import virttophys
    return os.path.abspath(virttophys.__file__)


def module_bases() -> list[tuple[str, int]]:
    """(name, base) of this program's executable, then libc, the dynamic loader
    and libpython (or libm): the GetModuleHandle calls of the seed."""
    bases: dict[str, int] = {}
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or int(fields[2], 16) != 0:
                continue
            path = fields[5].strip()
            start = int(fields[0].split("-")[0], 16)
            if path.startswith("/") and (path not in bases or start < bases[path]):
                bases[path] = start
    exe = os.path.realpath("/proc/self/exe")
    out = [(os.path.basename(exe), bases.get(exe, 0))]
    for prefixes in (("libc.so", "libc-"), ("ld-linux", "ld-musl", "ld-"), ("libpython", "libm.so", "libm-")):
        for prefix in prefixes:
            found = next(((p, b) for p, b in sorted(bases.items()) if os.path.basename(p).startswith(prefix)), None)
            if found:
                out.append((os.path.basename(found[0]), found[1]))
                break
    return out


class Failure(Exception):
    """A step of the sequence failed: the seed's message, and the Win32 error."""

    def __init__(self, message: str, error: pywintypes.error | None = None):
        super().__init__(message)
        self.message = message
        self.error = error

    def explain(self) -> str:
        e = self.error
        if e is None:
            return self.message
        if e.winerror == ERROR_PRIVILEGE_NOT_HELD:
            return f"{self.message}\n{NOT_ROOT}"
        detail = getattr(e, "detail", "")
        return f"{self.message}\n{e.funcname} failed with Win32 error {e.winerror}: {e.strerror}" + (
            f"\n({detail})" if detail and detail != e.strerror else "")


def translate(rows: list[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """The seed's SCM sequence around one DeviceIoControl; (name, base, physical)
    for each row, or Failure with the seed's message for the step that failed."""
    try:
        hSCManager = win32service.OpenSCManager(None, None, SC_MANAGER_ALL_ACCESS)
    except pywintypes.error as e:
        raise Failure("Can't connect to Service Control Manager.", e) from None
    failure = None
    try:
        try:
            hService = win32service.CreateService(
                hSCManager, SERVICE, DISPLAY_NAME, SERVICE_START + SERVICE_STOP + DELETE, SERVICE_KERNEL_DRIVER,
                SERVICE_DEMAND_START, SERVICE_ERROR_IGNORE, driver_path(), None, 0, None, None, None)
        except pywintypes.error as e:
            raise Failure("Can't register driver.", e) from None
        try:
            try:
                win32service.StartService(hService, None)          # DriverEntry runs
            except pywintypes.error as e:
                raise Failure("Can't start driver.", e) from None
            try:
                result = _ask_driver(rows)
            except Failure as f:
                failure = f
            try:
                win32service.ControlService(hService, SERVICE_CONTROL_STOP)   # DriverUnload runs
            except pywintypes.error as e:
                failure = failure or Failure("Can't stop driver.", e)
            if failure is not None:
                raise failure
            return result
        finally:
            try:
                win32service.DeleteService(hService)
            except pywintypes.error as e:
                click.echo(f"{PROG}: DeleteService failed: {e.strerror}", err=True)
            win32service.CloseServiceHandle(hService)
    finally:
        win32service.CloseServiceHandle(hSCManager)


def _ask_driver(rows):
    try:
        hDevice = win32file.CreateFile(DEVICE, GENERIC_READ + GENERIC_WRITE, 0, None, OPEN_EXISTING, 0, None)
    except pywintypes.error as e:
        raise Failure("Device is not present.", e) from None
    try:
        data = b"".join(ENTRY.pack(base) for _, base in rows)
        try:
            out = win32file.DeviceIoControl(hDevice, _ioctl_code(), data, len(data))
        except pywintypes.error as e:
            raise Failure("Can't send control code to device.", e) from None
        if len(out) == 0:
            raise Failure("Can't send control code to device.")
        return [(name, base, ENTRY.unpack_from(out, i * ENTRY.size)[0]) for i, (name, base) in enumerate(rows)]
    finally:
        win32file.CloseHandle(hDevice)       # IRP_MJ_CLEANUP, IRP_MJ_CLOSE


def table(result) -> str:
    width = max([len("Modules")] + [len(name) for name, _, _ in result])
    lines = [f"{'Modules':<{width}}  {'BASE':<16}  Physical", "-" * (width + 36)]
    lines += [f"{name:<{width}}  {base:016X}  {phys:016X}" + ("  (no page there: MmGetPhysicalAddress gives 0)"
                                                              if not phys else "")
              for name, base, phys in result]
    return "\n".join(lines)


def _address(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a hexadecimal address") from None


@click.command()
@click.option("--address", "addresses", multiple=True, metavar="HEX",
              help="Also translate this address of the program (hexadecimal; repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of the table.")
def cli(addresses, as_json) -> None:
    """Load VirtToPhys through the service control manager, translate this
    program's module base addresses (and any --address) to physical
    addresses, print them, and unload it again."""
    rows = module_bases() + [(f"0x{a:X}", a) for a in (_address(t) for t in addresses)]
    path, started = client.ensure_kernel()
    if started and not as_json:
        click.echo(f"{PROG}: no kernel was running; started one for this program at {path}.", err=True)
    try:
        result = translate(rows)
    except Failure as f:
        if as_json:
            e = f.error
            click.echo(json.dumps({"error": f.message, "explanation": f.explain(),
                                   "winerror": e.winerror if e else None, "function": e.funcname if e else None}))
        else:
            click.echo(f.explain(), err=True)
        sys.exit(1)
    finally:
        client.disconnect()
    if as_json:
        click.echo(json.dumps({"modules": [{"module": n, "base": b, "physical": p} for n, b, p in result]}, indent=2))
    else:
        click.echo(table(result))


def demo(console) -> None:
    """`ringzero demo`'s scene: the seed's whole sequence, in this process."""
    rows = module_bases()
    console.print(f"OpenSCManager, CreateService({SERVICE}, SERVICE_KERNEL_DRIVER, SERVICE_DEMAND_START, "
                  f"SERVICE_ERROR_IGNORE, {driver_path()}), StartService")
    try:
        result = translate(rows)
    except Failure as f:
        if f.error is not None and f.error.winerror == ERROR_PRIVILEGE_NOT_HELD:
            console.print(f"[yellow]{f.explain()}[/yellow]")
            console.print("The driver was loaded, asked, stopped and deleted all the same.")
            return
        raise RuntimeError(f.explain()) from None
    console.print(f"DeviceIoControl({DEVICE}, IOCTL_GET_PHYS_ADDRESS) answered:", highlight=False)
    console.print(table(result), highlight=False)
    console.print("CloseHandle, ControlService(SERVICE_CONTROL_STOP), DeleteService: nothing left behind.")


if __name__ == "__main__":
    cli(prog_name=PROG)
